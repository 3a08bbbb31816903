"""The per-event context a pipeline receives."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Union


class Context:
    """What a pipeline knows about the event it runs.

    - ``state``: the event key's state, a JSON-serialisable dict, committed when the pipeline
      returns (nothing is committed when it raises or times out). Unkeyed pipelines get a fresh
      dict that is not kept.
    - ``key``: the ordering key (``None`` for unkeyed pipelines).
    - ``execution_id``, ``received_at`` (Unix seconds), ``headers`` (lower-cased names),
      ``resources`` (what the pipeline's ``setup=`` returned), ``pipeline`` (its name).
    """

    __slots__ = ("state", "key", "execution_id", "received_at", "resources", "pipeline", "_headers")

    def __init__(
        self,
        execution_id: str,
        received_at: float,
        headers: Union[Dict[str, str], Callable[[], Dict[str, str]]],
        state: dict,
        key: Optional[str],
        resources: Any,
        pipeline: str,
    ) -> None:
        self._headers = headers
        self.state = state
        self.key = key
        self.execution_id = execution_id
        self.received_at = received_at
        self.resources = resources
        self.pipeline = pipeline

    @property
    def headers(self) -> Dict[str, str]:
        if callable(self._headers):
            self._headers = self._headers()
        return self._headers

    def __repr__(self) -> str:
        return f"Context(pipeline={self.pipeline!r}, key={self.key!r}, execution_id={self.execution_id!r})"
