"""Runs one event through a warm pipeline instance: the code shared by thread slots (called
from the Rust slot loop: a sync pipeline once per event inside one interpreter attach per batch,
an async one as a task per event on the pipeline's event loop) and worker processes
(``warmslot.worker``).

Each call returns ``(True, reply_json, state_json_or_None)`` or ``(False, error_code, message)``
and never raises: nothing a pipeline does (SystemExit, an exception whose ``str()`` fails, a
return value that is not JSON) may end the slot; the exception is that event's error, logged
with its traceback. (A ``run_async`` task that is itself cancelled ends cancelled.)
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from typing import Any, Callable, Dict, Optional, Tuple, Union

from . import _json
from .context import Context
from .spec import PipelineSpec

log = logging.getLogger("warmslot")

Result = Tuple[bool, Any, Any]

_loads = _json.loads
_dumps = _json.orjson.dumps
_default = _json._default
_OPTS = _json._OPTS
# What a sync pipeline usually returns: never a coroutine, no need to ask asyncio.
_PLAIN = frozenset({dict, list, str, int, float, bool, type(None)})


def safe_text(exc: BaseException) -> str:
    try:
        text = str(exc)
    except BaseException:
        text = "<unprintable exception>"
    # Lone surrogates (bytes decoded with surrogateescape) cannot cross into Rust strings.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_message(exc: BaseException, debug: bool) -> str:
    msg = f"{type(exc).__name__}: {safe_text(exc)}"
    if debug:
        try:
            msg += "\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        except BaseException:
            pass
    return msg.encode("utf-8", "backslashreplace").decode("utf-8")


class _Raised:
    """A BaseException caught inside an async pipeline, carried out of its task as a value."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


async def _guarded(coro: Any) -> Any:
    # Runs inside wait_for's task: a BaseException (SystemExit, KeyboardInterrupt) raised by the
    # pipeline would otherwise escape the task and stop the whole event loop.
    try:
        return await coro
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        return _Raised(exc)


def _cancelled_from_outside() -> bool:
    """True when the running task was asked to stop (its slot abandoned it, or the event loop is
    shutting down), as opposed to a pipeline that raised CancelledError itself (Python 3.11+:
    earlier versions cannot tell, and answer both as the pipeline's error)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False


class EventRunner:
    """A warm pipeline instance (``target``, ``resources``) and how to run one event on it."""

    def __init__(self, spec: PipelineSpec, target: Any, resources: Any, debug: bool) -> None:
        self.spec = spec
        self.target = target
        self.resources = resources
        self.debug = debug
        self._warned_unkeyed = False

    def _warn_unkeyed(self) -> None:
        """Says once that a keyed pipeline got an event without its key."""
        spec = self.spec
        self._warned_unkeyed = True
        log.warning(
            "pipeline %r is keyed by %r but received an event without it: such events run "
            "unordered and their ctx.state is not kept (ctx.key is None)",
            spec.name,
            spec.key if isinstance(spec.key, str) else "a callable",
            extra={"pipeline": spec.name},
        )

    def context(self, execution_id: str, key: Optional[str], state: Any, headers: Any, received_at: float) -> Context:
        spec = self.spec
        if key is None and spec.keyed and not self._warned_unkeyed:
            self._warn_unkeyed()
        state = state if isinstance(state, dict) else {}
        return Context(
            execution_id, received_at, headers, state, key if spec.keyed else None, self.resources, spec.name
        )

    def prepare(
        self, execution_id: str, key: Optional[str], state: Any, headers: Any, received_at: float
    ) -> "Context | Result":
        """The run's context, or the `state_error` result when the stored state cannot be decoded."""
        try:
            decoded = self.decode_state(state)
        except Exception as exc:
            return (False, "state_error", f"cannot decode stored state: {safe_text(exc)}")
        return self.context(execution_id, key, decoded, headers, received_at)

    @staticmethod
    def decode_state(state: Any) -> Any:
        """The key's committed state: JSON bytes as stored (decoded with orjson, which wrote them),
        an already decoded dict, or None for a key without state yet."""
        if state is None:
            return {}
        if isinstance(state, (bytes, bytearray, memoryview)):
            return _json.loads(state)
        return state

    def failed(self, execution_id: str, exc: BaseException, key: Optional[str] = None) -> Result:
        try:
            # The exception's type and message at any level; its traceback at debug (the CLI's
            # formatters show `exc_info` then).
            log.warning(
                "pipeline %r raised on execution %s: %s",
                self.spec.name,
                execution_id,
                error_message(exc, False),
                exc_info=exc,
                extra={"pipeline": self.spec.name, "execution_id": execution_id, "key": key},
            )
        except BaseException:
            pass
        return (False, "pipeline_error", error_message(exc, self.debug))

    def encode(self, result: Any, ctx: Context) -> Result:
        name = self.spec.name
        try:
            reply = _json.dumps(result)
        except Exception as exc:
            return (False, "pipeline_error", f"the return value of pipeline {name!r} is not JSON: {safe_text(exc)}")
        new_state = None
        if ctx.key is not None:
            if not isinstance(ctx.state, dict):
                return (False, "pipeline_error", f"ctx.state must stay a dict, got {type(ctx.state).__name__}")
            try:
                new_state = _json.dumps(ctx.state)
            except Exception as exc:
                return (False, "pipeline_error", f"ctx.state of pipeline {name!r} is not JSON: {safe_text(exc)}")
        return (True, reply, new_state)

    def run_sync(
        self,
        execution_id: str,
        key: Optional[str],
        event: Any,
        state: Any,
        headers: Union[Dict[str, str], Callable[[], Dict[str, str]]],
        received_at: float,
        remaining: Optional[float],
    ) -> Result:
        # NOTE: the per-event path of every sync pipeline, written flat: `prepare`, `context` and
        # `encode` inlined, orjson called directly, the coroutine check skipped for plain JSON
        # values (`asyncio.iscoroutine` does an ABC isinstance check). 1879 ns a call -> 1285 ns
        # for the support bot, whose own work (state decode, reply, two encodes) is ~800 ns
        # (timeit, 2026-12-02). Same results and errors as `run_async`'s helpers.
        try:
            spec = self.spec
            if state is None:
                decoded: Any = {}
            elif isinstance(state, (bytes, bytearray, memoryview)):
                try:
                    decoded = _loads(state)
                except Exception as exc:
                    return (False, "state_error", f"cannot decode stored state: {safe_text(exc)}")
            else:
                decoded = state
            keyed = spec.keyed
            if key is None and keyed and not self._warned_unkeyed:
                self._warn_unkeyed()
            ctx = Context(
                execution_id,
                received_at,
                headers,
                decoded if isinstance(decoded, dict) else {},
                key if keyed else None,
                self.resources,
                spec.name,
            )
            try:
                result = self.target(event, ctx)
                if type(result) not in _PLAIN and asyncio.iscoroutine(result):
                    result.close()
                    raise TypeError("pipeline returned a coroutine; declare it with `async def`")
            except BaseException as exc:
                return self.failed(execution_id, exc, ctx.key)
            try:
                reply = _dumps(result, _default, _OPTS)
            except Exception as exc:
                return (
                    False,
                    "pipeline_error",
                    f"the return value of pipeline {spec.name!r} is not JSON: {safe_text(exc)}",
                )
            if ctx.key is None:
                return (True, reply, None)
            new_state = ctx.state
            if not isinstance(new_state, dict):
                return (False, "pipeline_error", f"ctx.state must stay a dict, got {type(new_state).__name__}")
            try:
                return (True, reply, _dumps(new_state, _default, _OPTS))
            except Exception as exc:
                return (False, "pipeline_error", f"ctx.state of pipeline {spec.name!r} is not JSON: {safe_text(exc)}")
        except BaseException as exc:  # our own handling failed: still answer, never raise
            return (False, "pipeline_error", f"internal error while running the pipeline: {type(exc).__name__}")

    async def run_async(
        self,
        execution_id: str,
        key: Optional[str],
        event: Any,
        state: Any,
        headers: Any,
        received_at: float,
        remaining: Optional[float],
    ) -> Result:
        """Runs an async (or sync) pipeline on the running loop, cancelled at its deadline."""
        try:
            ctx = self.prepare(execution_id, key, state, headers, received_at)
            if isinstance(ctx, tuple):
                return ctx
            if remaining is not None and remaining <= 0:
                return (False, "pipeline_timeout", "the deadline passed before the run started")
            try:
                result = self.target(event, ctx)
                if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                    if remaining is None:
                        result = await _guarded(result)
                    else:
                        result = await asyncio.wait_for(_guarded(result), remaining)
            except asyncio.TimeoutError as exc:
                if remaining is not None:
                    return (False, "pipeline_timeout", f"pipeline {self.spec.name!r} did not finish in time")
                return self.failed(execution_id, exc, ctx.key)
            except asyncio.CancelledError as exc:
                if _cancelled_from_outside():
                    raise  # this task was cancelled: let it end cancelled
                return self.failed(execution_id, exc, ctx.key)
            except BaseException as exc:  # the pipeline's own (SystemExit too): this event's error
                return self.failed(execution_id, exc, ctx.key)
            if isinstance(result, _Raised):
                return self.failed(execution_id, result.exc, ctx.key)
            return self.encode(result, ctx)
        except asyncio.CancelledError:
            if _cancelled_from_outside():
                raise
            return (False, "pipeline_error", "internal error while running the pipeline: CancelledError")
        except BaseException as exc:
            return (False, "pipeline_error", f"internal error while running the pipeline: {type(exc).__name__}")
