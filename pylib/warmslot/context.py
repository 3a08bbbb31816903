"""The per-event context a pipeline receives."""

from __future__ import annotations

from typing import Any, Optional


class Context:
    """What a pipeline knows about the event it runs.

    - ``state``: the event key's state, a JSON-serialisable dict, committed when the pipeline
      returns (nothing is committed when it raises or times out). Unkeyed pipelines get a fresh
      dict that is not kept.
    - ``key``: the ordering key (``None`` for unkeyed pipelines).
    - ``execution_id``, ``received_at`` (Unix seconds), ``headers`` (lower-cased names),
      ``resources`` (what the pipeline's ``setup=`` returned), ``pipeline`` (its name).
    """

    __slots__ = ("state", "key", "execution_id", "received_at", "resources", "pipeline", "_job", "_headers")

    def __init__(
        self,
        job: Any,
        state: dict,
        key: Optional[str],
        resources: Any,
        pipeline: str,
    ) -> None:
        self._job = job
        self._headers: Optional[dict] = None
        self.state = state
        self.key = key
        self.execution_id: str = job.execution_id
        self.received_at: float = job.received_at
        self.resources = resources
        self.pipeline = pipeline

    @property
    def headers(self) -> dict:
        if self._headers is None:
            self._headers = self._job.headers()
        return self._headers

    def __repr__(self) -> str:
        return f"Context(pipeline={self.pipeline!r}, key={self.key!r}, execution_id={self.execution_id!r})"
