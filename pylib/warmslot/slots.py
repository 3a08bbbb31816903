"""Slot workers: threads (sync pipelines) or tasks on one event loop (async pipelines) that hold a
pre-warmed pipeline instance and run the events the Rust scheduler hands them, in batches."""

from __future__ import annotations

import asyncio
import logging
import threading
import traceback
from typing import Any, Callable, List, Optional

from . import _json
from .context import Context
from .spec import PipelineSpec

log = logging.getLogger("warmslot")


def _error_message(exc: BaseException, debug: bool) -> str:
    msg = f"{type(exc).__name__}: {exc}"
    if debug:
        msg += "\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return msg


class PipelineRuntime:
    """The slots of one pipeline inside a running server."""

    def __init__(self, core: Any, index: int, spec: PipelineSpec, debug: bool, spin_us: int = 50) -> None:
        self.core = core
        self.index = index
        self.spec = spec
        self.debug = debug
        self.spin_us = spin_us
        self.threads: List[threading.Thread] = []
        self.warm = 0
        self.started = 0
        self.errors: List[str] = []
        self._lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._async_grow: Optional[Callable[[int], None]] = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self.spec.is_async:
            t = threading.Thread(target=self._async_main, name=f"warmslot-{self.spec.name}-loop", daemon=True)
            self.threads.append(t)
            t.start()
        else:
            self.grow(self.spec.min_slots)

    def grow(self, target: int) -> int:
        """Starts slots until `target` exist (at most max_slots). Returns how many were started."""
        target = min(target, self.spec.max_slots)
        with self._lock:
            new = list(range(self.started, target))
            self.started = max(self.started, target)
        if self.spec.is_async:
            if new and self._loop is not None and self._async_grow is not None:
                for slot in new:
                    self._loop.call_soon_threadsafe(self._async_grow, slot)
            return len(new)
        for slot in new:
            t = threading.Thread(
                target=self._sync_slot, args=(slot,), name=f"warmslot-{self.spec.name}-{slot}", daemon=True
            )
            self.threads.append(t)
            t.start()
        return len(new)

    def join(self, timeout: float) -> None:
        for t in self.threads:
            t.join(timeout)

    def _warm_up(self, slot: int) -> Any:
        target = self.spec.instantiate()
        resources = self.spec.setup() if self.spec.setup is not None else None
        return target, resources

    def _slot_failed(self, slot: int, exc: BaseException) -> None:
        msg = f"slot {slot} of pipeline {self.spec.name!r} failed to warm up: {type(exc).__name__}: {exc}"
        self.errors.append(msg)
        log.error(msg, exc_info=exc)

    def _mark_warm(self, slot: int) -> None:
        with self._lock:
            self.warm += 1
        self.core.mark_warm(self.index, slot)

    def _mark_cold(self, slot: int) -> None:
        with self._lock:
            self.warm -= 1
        self.core.mark_cold(self.index, slot)

    # -- one event ------------------------------------------------------------------------------
    def _prepare(self, job: Any, resources: Any) -> Optional[tuple]:
        try:
            raw_state = job.begin()
        except (TimeoutError, RuntimeError):
            return None  # timed out while queued, or the state store failed: already answered
        try:
            event = _json.loads(job.body)
            state = _json.loads(raw_state) if raw_state is not None else {}
        except Exception as exc:  # corrupt stored state; the body was validated in Rust
            job.fail("state_error", f"cannot decode stored state: {exc}")
            return None
        key = job.key if self.spec.keyed else None
        return event, Context(job, state, key, resources, self.spec.name)

    def _finish(self, job: Any, result: Any, ctx: Context) -> None:
        try:
            reply = _json.dumps(result)
        except Exception as exc:
            job.fail("pipeline_error", f"the return value of pipeline {self.spec.name!r} is not JSON: {exc}")
            return
        new_state = None
        if self.spec.keyed:
            if not isinstance(ctx.state, dict):
                job.fail("pipeline_error", f"ctx.state must stay a dict, got {type(ctx.state).__name__}")
                return
            try:
                new_state = _json.dumps(ctx.state)
            except Exception as exc:
                job.fail("pipeline_error", f"ctx.state of pipeline {self.spec.name!r} is not JSON: {exc}")
                return
        job.succeed(reply, new_state)

    def _failed(self, job: Any, exc: BaseException) -> None:
        log.warning("pipeline %r raised on execution %s", self.spec.name, job.execution_id, exc_info=exc)
        job.fail("pipeline_error", _error_message(exc, self.debug))

    # -- sync slots: one thread each -------------------------------------------------------------
    def _sync_slot(self, slot: int) -> None:
        try:
            target, resources = self._warm_up(slot)
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
                    prepared = self._prepare(job, resources)
                    if prepared is None:
                        continue
                    event, ctx = prepared
                    try:
                        result = target(event, ctx)
                        if asyncio.iscoroutine(result):
                            result.close()
                            raise TypeError("pipeline returned a coroutine; declare it with `async def`")
                    except BaseException as exc:
                        self._failed(job, exc)
                        continue
                    self._finish(job, result, ctx)
        finally:
            self._mark_cold(slot)

    # -- async slots: tasks on one event loop ----------------------------------------------------
    def _async_main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._async_pool(loop))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
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
                    await self._run_async(job, target, resources)
            finally:
                self._mark_cold(slot)

        def start_worker(slot: int) -> None:
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
                if batch is None:
                    loop.call_soon_threadsafe(close)
                    return
                if batch:
                    loop.call_soon_threadsafe(deliver, batch)

        self._loop = loop
        self._async_grow = start_worker
        with self._lock:
            self.started = spec.min_slots
        for slot in range(spec.min_slots):
            start_worker(slot)
        feeder = threading.Thread(target=feed, name=f"warmslot-{spec.name}-feeder", daemon=True)
        self.threads.append(feeder)
        feeder.start()
        await closed.wait()
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)

    async def _run_async(self, job: Any, target: Any, resources: Any) -> None:
        prepared = self._prepare(job, resources)
        if prepared is None:
            return
        event, ctx = prepared
        remaining = job.remaining()
        try:
            if remaining is not None and remaining <= 0:
                job.time_out()
                return
            coro = target(event, ctx)
            if asyncio.iscoroutine(coro) or isinstance(coro, asyncio.Future):
                result = await (asyncio.wait_for(coro, remaining) if remaining is not None else coro)
            else:
                result = coro
        except asyncio.TimeoutError:
            job.time_out()
            return
        except asyncio.CancelledError:
            job.fail("shutting_down", "the execution was cancelled")
            raise
        except BaseException as exc:
            self._failed(job, exc)
            return
        self._finish(job, result, ctx)
