"""Slot workers: threads (sync pipelines) or tasks on one event loop (async pipelines) that hold a
pre-warmed pipeline instance and run the events the Rust scheduler hands them, in batches.

A slot must outlive anything a pipeline does: every per-event path ends in exactly one of
``job.succeed`` / ``job.fail`` / ``job.time_out``, and nothing a pipeline raises (SystemExit,
CancelledError, an exception whose ``str()`` fails) may end the worker, because a dead slot
would strand the keys pinned to it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import traceback
from typing import Any, Callable, List, Optional

from . import _json
from .context import Context
from .spec import PipelineSpec

log = logging.getLogger("warmslot")


def _safe_text(exc: BaseException) -> str:
    try:
        text = str(exc)
    except BaseException:
        text = "<unprintable exception>"
    # Lone surrogates (bytes decoded with surrogateescape) cannot cross into Rust strings.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _error_message(exc: BaseException, debug: bool) -> str:
    msg = f"{type(exc).__name__}: {_safe_text(exc)}"
    if debug:
        try:
            msg += "\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        except BaseException:
            pass
    return msg.encode("utf-8", "backslashreplace").decode("utf-8")


_SKIP = object()


class _Raised:
    """A BaseException caught inside an async pipeline, carried out of its task as a value."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class PipelineRuntime:
    """The slots of one pipeline inside a running server."""

    def __init__(
        self, core: Any, index: int, spec: PipelineSpec, debug: bool, spin_us: int = 50, blocking_store: bool = False
    ) -> None:
        self.core = core
        self.index = index
        self.spec = spec
        self.debug = debug
        self.spin_us = spin_us
        # The state store does I/O (SQLite, Redis): event-loop slots run its calls in a thread.
        self.blocking_store = blocking_store
        self._failed_at = 0.0  # monotonic time of the last failed warm-up
        self._failures = 0
        self.threads: List[threading.Thread] = []
        self.errors: List[str] = []
        self._lock = threading.Lock()
        self._next_slot = 0  # slot indexes handed out so far
        self._free: List[int] = []  # indexes of slots that failed to warm up or exited, for reuse
        self._starting = 0
        self._warned_unkeyed = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._async_start: Optional[Callable[[int], None]] = None

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def started(self) -> int:
        """Slots warm or warming up."""
        with self._lock:
            return self._next_slot - len(self._free)

    @property
    def starting(self) -> int:
        return self._starting

    def start(self) -> None:
        if self.spec.is_async:
            t = threading.Thread(target=self._async_main, name=f"warmslot-{self.spec.name}-loop", daemon=True)
            self.threads.append(t)
            t.start()
        else:
            self.grow(self.spec.min_slots)

    def _take_slots(self, target: int) -> List[int]:
        target = min(target, self.spec.max_slots)
        new: List[int] = []
        with self._lock:
            while self._next_slot - len(self._free) < target:
                if self._free:
                    new.append(self._free.pop())
                elif self._next_slot < self.spec.max_slots:
                    new.append(self._next_slot)
                    self._next_slot += 1
                else:
                    break
            self._starting += len(new)
        return new

    def grow(self, target: int) -> int:
        """Starts slots until `target` are warm or warming (at most max_slots). Returns how many
        were started."""
        if self.spec.is_async and (self._loop is None or self._async_start is None):
            return 0  # the loop starts min_slots itself once it runs
        new = self._take_slots(target)
        for slot in new:
            if self.spec.is_async:
                assert self._loop is not None and self._async_start is not None
                try:
                    self._loop.call_soon_threadsafe(self._async_start, slot)
                except RuntimeError:  # the loop has closed (shutdown)
                    self._slot_gone(slot, warm=False)
            else:
                t = threading.Thread(
                    target=self._sync_slot, args=(slot,), name=f"warmslot-{self.spec.name}-{slot}", daemon=True
                )
                self.threads.append(t)
                t.start()
        return len(new)

    def scale_to(self, target: int) -> int:
        """Grows toward `target` warm-or-warming slots, as `grow` does; returns how many were
        started. Shrinking is not done here yet."""
        return self.grow(target) if target > self.started else 0

    def join(self, deadline: float) -> None:
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _slot_failed(self, slot: int, exc: BaseException) -> None:
        msg = f"slot {slot} of pipeline {self.spec.name!r} failed to warm up: {_error_message(exc, False)}"
        if len(self.errors) < 20:
            self.errors.append(msg)
        log.error(msg, exc_info=exc)
        with self._lock:
            self._failures += 1
            self._failed_at = time.monotonic()
        self._slot_gone(slot, warm=False)

    def growth_paused(self) -> bool:
        """After failed warm-ups, wait 0.5 s, doubling per failure up to 30 s, before growing."""
        if not self._failures:
            return False
        backoff = min(30.0, 0.5 * 2 ** min(self._failures - 1, 6))
        return time.monotonic() - self._failed_at < backoff

    def _slot_gone(self, slot: int, warm: bool) -> None:
        if warm:
            self.core.mark_cold(self.index, slot)  # before the index can be reused
        with self._lock:
            if not warm:
                self._starting -= 1
            self._free.append(slot)

    def _mark_warm(self, slot: int) -> None:
        with self._lock:
            self._starting -= 1
            self._failures = 0
        self.core.mark_warm(self.index, slot)

    # -- one event ------------------------------------------------------------------------------
    @staticmethod
    def _begin(job: Any) -> Any:
        """The key's committed state (bytes or None), or _SKIP when the job is already answered
        (timed out while queued, state store failure, shutting down)."""
        try:
            return job.begin()
        except (TimeoutError, RuntimeError):
            return _SKIP

    def _prepare(self, job: Any, resources: Any, raw_state: Any) -> Optional[tuple]:
        """(event, ctx) from what `_begin` returned, or None when there is nothing to run."""
        if raw_state is _SKIP:
            return None
        try:
            event = _json.loads(job.body)
            state = _json.loads(raw_state) if raw_state is not None else {}
        except Exception as exc:  # corrupt stored state; the body was validated in Rust
            job.fail("state_error", f"cannot decode stored state: {_safe_text(exc)}")
            return None
        key = job.key if self.spec.keyed else None
        if key is None and self.spec.keyed and not self._warned_unkeyed:
            self._warned_unkeyed = True
            log.warning(
                "pipeline %r is keyed by %r but received an event without it: such events run "
                "unordered and their ctx.state is not kept (ctx.key is None)",
                self.spec.name,
                self.spec.key if isinstance(self.spec.key, str) else "a callable",
            )
        return event, Context(job, state, key, resources, self.spec.name)

    def _encode(self, job: Any, result: Any, ctx: Context) -> Optional[tuple]:
        """(reply, new_state) as JSON bytes, or None after failing the job (not JSON)."""
        try:
            reply = _json.dumps(result)
        except Exception as exc:
            name = self.spec.name
            job.fail("pipeline_error", f"the return value of pipeline {name!r} is not JSON: {_safe_text(exc)}")
            return None
        new_state = None
        if ctx.key is not None:
            if not isinstance(ctx.state, dict):
                job.fail("pipeline_error", f"ctx.state must stay a dict, got {type(ctx.state).__name__}")
                return None
            try:
                new_state = _json.dumps(ctx.state)
            except Exception as exc:
                job.fail("pipeline_error", f"ctx.state of pipeline {self.spec.name!r} is not JSON: {_safe_text(exc)}")
                return None
        return reply, new_state

    def _failed(self, job: Any, exc: BaseException) -> None:
        try:
            log.warning("pipeline %r raised on execution %s", self.spec.name, job.execution_id, exc_info=exc)
        except BaseException:
            pass
        job.fail("pipeline_error", _error_message(exc, self.debug))

    def _last_resort(self, job: Any, exc: BaseException) -> None:
        """Our own handling failed: answer the job if it is still open, never raise."""
        try:
            log.error("warmslot could not finish execution of pipeline %r", self.spec.name, exc_info=exc)
            if not job.done:
                job.fail("pipeline_error", f"internal error while finishing the execution: {type(exc).__name__}")
        except BaseException:
            pass

    # -- sync slots: one thread each -------------------------------------------------------------
    def _run_sync(self, job: Any, target: Any, resources: Any) -> None:
        prepared = self._prepare(job, resources, self._begin(job))
        if prepared is None:
            return
        event, ctx = prepared
        try:
            result = target(event, ctx)
            if asyncio.iscoroutine(result):
                result.close()
                raise TypeError("pipeline returned a coroutine; declare it with `async def`")
        except BaseException as exc:
            self._failed(job, exc)
            return
        encoded = self._encode(job, result, ctx)
        if encoded is not None:
            job.succeed(*encoded)

    def _sync_slot(self, slot: int) -> None:
        try:
            target = self.spec.instantiate()
            resources = self.spec.setup() if self.spec.setup is not None else None
        except BaseException as exc:
            self._slot_failed(slot, exc)
            return
        mailbox = self.core.mailbox(self.index, slot)
        max_batch = self.spec.max_batch
        self._mark_warm(slot)
        try:
            while True:
                batch = mailbox.next_batch(max_batch, 0.1, self.spin_us)
                if batch is None:
                    return
                for job in batch:
                    try:
                        self._run_sync(job, target, resources)
                    except BaseException as exc:
                        self._last_resort(job, exc)
        finally:
            self._slot_gone(slot, warm=True)

    # -- async slots: tasks on one event loop ----------------------------------------------------
    def _async_main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._async_pool(loop))
        except BaseException as exc:  # the pool itself broke: say so, the slots are marked cold
            log.error("the event loop of pipeline %r stopped", self.spec.name, exc_info=exc)
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def _async_pool(self, loop: asyncio.AbstractEventLoop) -> None:
        spec = self.spec
        queues: List[asyncio.Queue] = [asyncio.Queue() for _ in range(spec.max_slots)]
        workers: List[asyncio.Task] = []
        closed = asyncio.Event()

        async def worker(slot: int) -> None:
            try:
                target = spec.instantiate()
                resources = spec.setup() if spec.setup is not None else None
                if asyncio.iscoroutine(resources):
                    resources = await resources
            except BaseException as exc:
                self._slot_failed(slot, exc)
                return
            self._mark_warm(slot)
            queue = queues[slot]
            try:
                while True:
                    job = await queue.get()
                    if job is None:
                        return
                    try:
                        await self._run_async(job, target, resources)
                    except BaseException as exc:
                        self._last_resort(job, exc)
            finally:
                self._slot_gone(slot, warm=True)

        def start_worker(slot: int) -> None:
            if closed.is_set():
                self._slot_gone(slot, warm=False)
                return
            workers.append(loop.create_task(worker(slot)))

        def deliver(batch: list) -> None:
            for job in batch:
                queues[job.slot].put_nowait(job)

        def close() -> None:
            for q in queues:
                q.put_nowait(None)
            closed.set()

        def feed() -> None:
            mailbox = self.core.mailbox(self.index, 0)
            while True:
                batch = mailbox.next_batch(spec.max_batch, 0.1, self.spin_us)
                try:
                    if batch is None:
                        loop.call_soon_threadsafe(close)
                        return
                    if batch:
                        loop.call_soon_threadsafe(deliver, batch)
                except RuntimeError:  # the loop is closed: dropping the jobs answers them (503)
                    return

        self._loop = loop
        self._async_start = start_worker
        for slot in self._take_slots(spec.min_slots):
            start_worker(slot)
        feeder = threading.Thread(target=feed, name=f"warmslot-{spec.name}-feeder", daemon=True)
        self.threads.append(feeder)
        feeder.start()
        await closed.wait()
        while workers:
            pending, workers[:] = list(workers), []
            await asyncio.gather(*pending, return_exceptions=True)

    @staticmethod
    async def _guarded(coro: Any) -> Any:
        # Runs inside wait_for's task: a BaseException (SystemExit, KeyboardInterrupt) raised by
        # the pipeline would otherwise escape the task and stop the whole event loop.
        try:
            return await coro
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            return _Raised(exc)

    async def _run_async(self, job: Any, target: Any, resources: Any) -> None:
        loop = asyncio.get_running_loop()
        if self.blocking_store:
            raw_state = await loop.run_in_executor(None, self._begin, job)
        else:
            raw_state = self._begin(job)
        prepared = self._prepare(job, resources, raw_state)
        if prepared is None:
            return
        event, ctx = prepared
        remaining = job.remaining()
        if remaining is not None and remaining <= 0:
            job.time_out()
            return
        try:
            result = target(event, ctx)
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                if remaining is None:
                    result = await self._guarded(result)
                else:
                    result = await asyncio.wait_for(self._guarded(result), remaining)
        except asyncio.TimeoutError as exc:
            # Our deadline, or a TimeoutError the pipeline raised itself (the same class on 3.11).
            left = job.remaining()
            if left is not None and left <= 0.001:
                job.time_out()
            else:
                self._failed(job, exc)
            return
        except asyncio.CancelledError as exc:
            # Nothing cancels the slot's worker, so this came from inside the pipeline.
            self._failed(job, exc)
            return
        except BaseException as exc:
            self._failed(job, exc)
            return
        if isinstance(result, _Raised):
            self._failed(job, result.exc)
            return
        encoded = self._encode(job, result, ctx)
        if encoded is None:
            return
        if self.blocking_store:
            await loop.run_in_executor(None, job.succeed, *encoded)
        else:
            job.succeed(*encoded)
