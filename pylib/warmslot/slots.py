"""The slots of one pipeline inside a running server.

- **Thread slots** (sync pipelines, ``isolation="thread"``): one Python thread per slot builds the
  pipeline instance (class ``__init__``, ``setup=``), then hands itself to the Rust slot loop
  (``Core.run_thread_slot``), which pulls batches from the pipeline's lanes with the GIL released
  and calls back into :class:`~warmslot.runner.EventRunner` once per event.
- **Process slots** (``isolation="process"``): one Python thread per slot blocks in
  ``Core.run_process_slot`` (GIL released), where Rust spawns and watches the slot's worker
  process (``warmslot.worker``), replacing it after a crash or a recycle.
- **Async pipelines** in threads: one event loop per pipeline; a feeder thread takes begun events
  from the lanes (``Core.take_batch``) while the loop has room (warm instances x ``concurrency``)
  and runs each as a task on the least busy instance.

The pool grows with :meth:`PipelineRuntime.grow` and shrinks with :meth:`PipelineRuntime.scale_to`:
a retiring slot finishes what it holds, then stops; lanes keep its keys' order.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Dict, List, Optional

from ._core import SlotReport, WarmupReason
from .runner import EventRunner, error_message
from .spec import PipelineSpec

log = logging.getLogger("warmslot")


class _Instance:
    """One warm instance of an async pipeline (a slot) and the tasks it runs now."""

    __slots__ = ("slot", "runner", "running", "retiring")

    def __init__(self, slot: int, runner: EventRunner) -> None:
        self.slot = slot
        self.runner = runner
        self.running = 0
        self.retiring = False


class PipelineRuntime:
    """The slots of one pipeline inside a running server."""

    def __init__(
        self,
        core: Any,
        index: int,
        spec: PipelineSpec,
        debug: bool,
        spin_us: int = 50,
        blocking_store: bool = False,
        isolation: str = "thread",
    ) -> None:
        self.core = core
        self.index = index
        self.spec = spec
        self.debug = debug
        self.spin_us = spin_us
        self.blocking_store = blocking_store
        self.isolation = isolation
        self._failed_at = 0.0  # monotonic time of the last failed warm-up
        self._failures = 0
        self.threads: List[threading.Thread] = []
        self.errors: List[str] = []
        self._lock = threading.Lock()
        self._next_slot = 0  # slot indexes handed out so far
        self._free: List[int] = []  # indexes of slots that stopped, for reuse
        self._starting = 0
        self._warm_once: Dict[int, bool] = {}
        # async pipelines
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._instances: Dict[int, _Instance] = {}
        self._room = threading.Condition()
        self._inflight = 0
        self._closed = False
        self._pending_async: List[Any] = []  # (slot, reason) asked for before the loop ran

    # -- pool size -------------------------------------------------------------------------------
    @property
    def started(self) -> int:
        """Slots warm or warming up."""
        with self._lock:
            return self._next_slot - len(self._free)

    @property
    def starting(self) -> int:
        return self._starting

    def start(self) -> None:
        if self.spec.is_async and self.isolation == "thread":
            t = threading.Thread(target=self._async_main, name=f"warmslot-{self.spec.name}-loop", daemon=True)
            self.threads.append(t)
            t.start()
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
        were started. Cancels pending retirements first."""
        self.core.keep_at_most(self.index, None)
        waiting = self.core.pool(self.index)["waiting"] if self._next_slot else 0
        why = WarmupReason.DEMAND if waiting > 0 else WarmupReason.AHEAD
        reason = why.value  # run_thread_slot and mark_warm (thread and async slots) take its name
        new = self._take_slots(target)
        for slot in new:
            if self.spec.is_async and self.isolation == "thread":
                with self._lock:
                    loop = self._loop
                    if loop is None:
                        self._pending_async.append((slot, reason))
                        continue
                try:
                    loop.call_soon_threadsafe(self._start_instance, slot, reason)
                except RuntimeError:  # the loop has closed (shutdown)
                    self._slot_gone(slot, warm=False)
                continue
            body = self._process_slot if self.isolation == "process" else self._sync_slot
            slot_reason = why if self.isolation == "process" else reason
            t = threading.Thread(
                target=body, args=(slot, slot_reason), name=f"warmslot-{self.spec.name}-{slot}", daemon=True
            )
            self.threads.append(t)
            t.start()
        return len(new)

    def scale_to(self, target: int) -> int:
        """Grows to `target` warm slots, or asks slots above it (never below min_slots) to retire:
        they finish what they hold, then stop. Returns how many slots were started."""
        target = max(self.spec.min_slots, min(self.spec.max_slots, target))
        started = self.started
        if target > started:
            return 0 if self.growth_paused() else self.grow(target)
        if target < started and self._starting == 0:
            self.retire_to(target)
        return 0

    def retire_to(self, keep: int) -> None:
        """Keeps at most `keep` slots (never fewer than min_slots): the others finish what they
        hold, then stop."""
        keep = max(keep, self.spec.min_slots)
        if self.spec.is_async and self.isolation == "thread":
            loop = self._loop
            if loop is not None:
                try:
                    loop.call_soon_threadsafe(self._retire_instances, keep)
                except RuntimeError:
                    pass
            return
        self.core.keep_at_most(self.index, keep)

    def join(self, deadline: float) -> None:
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def growth_paused(self) -> bool:
        """After failed warm-ups, wait 0.5 s, doubling per failure up to 30 s, before growing."""
        if not self._failures:
            return False
        backoff = min(30.0, 0.5 * 2 ** min(self._failures - 1, 6))
        return time.monotonic() - self._failed_at < backoff

    def _slot_failed(self, slot: int, exc: BaseException) -> None:
        msg = f"slot {slot} of pipeline {self.spec.name!r} failed to warm up: {error_message(exc, False)}"
        self._warmup_failed(msg, exc)
        self._slot_gone(slot, warm=False)

    def _warmup_failed(self, msg: str, exc: Optional[BaseException] = None) -> None:
        if len(self.errors) < 20:
            self.errors.append(msg)
        log.error(msg, exc_info=exc, extra={"pipeline": self.spec.name})
        with self._lock:
            self._failures += 1
            self._failed_at = time.monotonic()

    def _about(self, slot: int) -> dict:
        """`extra=` of a log call about one slot (fields of `warmslot.logs.JsonFormatter`)."""
        return {"pipeline": self.spec.name, "slot": slot}

    def _slot_gone(self, slot: int, warm: bool) -> None:
        if warm:
            self.core.mark_cold(self.index, slot)  # before the index can be reused
        with self._lock:
            if not warm:
                self._starting -= 1
            self._free.append(slot)

    def _warmed(self) -> None:
        with self._lock:
            self._starting -= 1
            self._failures = 0

    def _instantiate(self) -> tuple:
        target = self.spec.instantiate()
        resources = self.spec.setup() if self.spec.setup is not None else None
        return target, resources

    # -- thread slots ----------------------------------------------------------------------------
    def _sync_slot(self, slot: int, reason: str) -> None:
        began = time.monotonic()
        try:
            target, resources = self._instantiate()
        except BaseException as exc:
            self._slot_failed(slot, exc)
            return
        runner = EventRunner(self.spec, target, resources, self.debug)
        self._warmed()
        try:
            self.core.run_thread_slot(self.index, slot, runner.run_sync, reason, time.monotonic() - began)
        except BaseException as exc:  # the binding refused (a bug): say so, free the slot
            log.error("slot %d of pipeline %r stopped", slot, self.spec.name, exc_info=exc, extra=self._about(slot))
        finally:
            self._slot_gone(slot, warm=True)

    # -- process slots ---------------------------------------------------------------------------
    def _process_slot(self, slot: int, reason: WarmupReason) -> None:
        warmed = False

        def report(kind: SlotReport, message: str) -> None:
            nonlocal warmed
            name = self.spec.name
            if kind == SlotReport.WARM:
                if not warmed:
                    warmed = True
                    self._warmed()
                log.debug("slot %d of pipeline %r is warm (%s)", slot, name, message, extra=self._about(slot))
            elif kind == SlotReport.WARMUP_FAILED:
                self._warmup_failed(message)
            elif kind == SlotReport.CRASHED:
                log.error(
                    "slot %d of pipeline %r crashed: %s; starting a fresh worker",
                    slot,
                    name,
                    message,
                    extra=self._about(slot),
                )
            elif kind == SlotReport.RECYCLED:
                log.info(
                    "slot %d of pipeline %r recycled its worker (%s)", slot, name, message, extra=self._about(slot)
                )

        try:
            self.core.run_process_slot(self.index, slot, reason, report)
        except BaseException as exc:
            log.error("slot %d of pipeline %r stopped", slot, self.spec.name, exc_info=exc, extra=self._about(slot))
        finally:
            self._slot_gone(slot, warm=warmed)

    # -- async pipelines: tasks on one event loop ------------------------------------------------
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

    def _room_left(self) -> int:
        live = sum(1 for i in self._instances.values() if not i.retiring)
        return live * max(1, self.spec.concurrency) - self._inflight

    def _start_instance(self, slot: int, reason: str) -> None:
        assert self._loop is not None
        self._loop.create_task(self._warm_instance(slot, reason))

    async def _warm_instance(self, slot: int, reason: str) -> None:
        began = time.monotonic()
        try:
            target, resources = self._instantiate()
            if asyncio.iscoroutine(resources):
                resources = await resources
        except BaseException as exc:
            self._slot_failed(slot, exc)
            return
        with self._room:
            self._instances[slot] = _Instance(slot, EventRunner(self.spec, target, resources, self.debug))
            self._room.notify_all()
        self._warmed()
        self.core.mark_warm(self.index, slot, reason, time.monotonic() - began)

    def _retire_instances(self, keep: int) -> None:
        live = [i for i in self._instances.values() if not i.retiring]
        for inst in sorted(live, key=lambda i: i.running)[: max(0, len(live) - keep)]:
            inst.retiring = True
            if inst.running == 0:
                self._drop_instance(inst)

    def _drop_instance(self, inst: _Instance) -> None:
        with self._room:
            self._instances.pop(inst.slot, None)
        self._slot_gone(inst.slot, warm=True)

    async def _async_pool(self, loop: asyncio.AbstractEventLoop) -> None:
        closed = asyncio.Event()
        tasks: set = set()

        async def run(job: Any, inst: _Instance) -> None:
            try:
                try:
                    if self.blocking_store:
                        await loop.run_in_executor(None, job.begin)
                    else:
                        job.begin()
                except (TimeoutError, RuntimeError):
                    return  # already answered: timed out while queued, state store failure, shutting down
                try:
                    state = job.state()
                except ValueError as exc:
                    job.fail("state_error", f"cannot decode stored state: {exc}")
                    return
                result = await inst.runner.run_async(
                    job.execution_id, job.key, job.event, state, job.headers, job.received_at, job.remaining()
                )
                ok, a, b = result
                if ok:
                    if self.blocking_store:
                        await loop.run_in_executor(None, job.succeed, a, b)
                    else:
                        job.succeed(a, b)
                elif a == "pipeline_timeout":
                    job.time_out()
                else:
                    job.fail(a, b)
            except BaseException as exc:
                try:
                    if not job.done:
                        job.fail(
                            "pipeline_error", f"internal error while finishing the execution: {type(exc).__name__}"
                        )
                except BaseException:
                    pass
            finally:
                inst.running -= 1
                if inst.running == 0:
                    self.core.set_busy(self.index, inst.slot, False)
                    if inst.retiring:
                        self._drop_instance(inst)
                with self._room:
                    self._inflight -= 1
                    self._room.notify_all()

        def deliver(batch: list) -> None:
            for job in batch:
                live = [i for i in self._instances.values() if not i.retiring] or list(self._instances.values())
                inst = min(live, key=lambda i: i.running)
                if inst.running == 0:
                    self.core.set_busy(self.index, inst.slot, True)
                inst.running += 1
                task = loop.create_task(run(job, inst))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        def feed() -> None:
            spec = self.spec
            while True:
                with self._room:
                    while self._room_left() <= 0 and not self._closed:
                        self._room.wait(0.1)
                    room = self._room_left()
                    if self._closed:
                        return
                batch = self.core.take_batch(self.index, min(room, spec.max_batch), 0.1, self.spin_us)
                try:
                    if batch is None:
                        loop.call_soon_threadsafe(closed.set)
                        return
                    if batch:
                        with self._room:
                            self._inflight += len(batch)
                        loop.call_soon_threadsafe(deliver, batch)
                except RuntimeError:  # the loop is closed: dropping the jobs answers them (503)
                    return

        with self._lock:
            self._loop = loop
            pending, self._pending_async = list(self._pending_async), []
        for slot, reason in pending:
            self._start_instance(slot, reason)
        feeder = threading.Thread(target=feed, name=f"warmslot-{self.spec.name}-feeder", daemon=True)
        self.threads.append(feeder)
        feeder.start()
        try:
            await closed.wait()
            while tasks:
                await asyncio.gather(*list(tasks), return_exceptions=True)
        finally:
            with self._room:
                self._closed = True
                self._room.notify_all()
            for inst in list(self._instances.values()):
                self._drop_instance(inst)
