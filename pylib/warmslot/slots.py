"""The slots of one pipeline inside a running server.

- **Thread slots** (``isolation="thread"``): one Python thread per slot builds the pipeline
  instance (class ``__init__``, ``setup=``), then hands itself to the Rust slot loop
  (``Core.run_thread_slot``), which pulls batches from the pipeline's lanes with the GIL released,
  runs them, and commits. A sync pipeline's batch runs inside one interpreter attach, calling
  :class:`~warmslot.runner.EventRunner` once per event.
- **Async pipelines** in threads: the same slot loop, one thread per slot; the coroutines run on
  one event loop per pipeline (a thread of its own), where every instance is built too (an async
  ``setup`` is awaited there). A slot runs up to ``concurrency`` events at once, as tasks on that
  loop (:class:`AsyncSlot`), and takes more as they finish.
- **Process slots** (``isolation="process"``): one Python thread per slot blocks in
  ``Core.run_process_slot`` (GIL released), where Rust spawns and watches the slot's worker
  process (``warmslot.worker``), replacing it after a crash or a recycle.

The pool grows with :meth:`PipelineRuntime.grow` and shrinks with :meth:`PipelineRuntime.scale_to`:
a retiring slot finishes what it holds, then stops; lanes keep its keys' order.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from ._core import SlotReport, WarmupReason
from .runner import EventRunner, _guarded, _Raised, error_message
from .spec import PipelineSpec

log = logging.getLogger("warmslot")


class AsyncSlot:
    """The Python side of one async thread slot (``AsyncThreadBackend`` in
    ``rust/py/src/thread_slot.rs``): runs the events its slot loop hands over as tasks on the
    pipeline's event loop, and reports each result back as its task ends.

    ``submit`` and ``cancel`` are called from the slot's thread, the rest on the loop's thread."""

    __slots__ = ("loop", "run_async", "report", "tasks")

    def __init__(self, loop: asyncio.AbstractEventLoop, run_async: Callable[..., Any]) -> None:
        self.loop = loop
        self.run_async = run_async
        #: ``report(token, result)``; ``report(None, message)``: the loop stopped.
        self.report: Optional[Callable[[Optional[int], Any], None]] = None
        self.tasks: Dict[int, "asyncio.Task[Any]"] = {}

    def bind(self, report: Callable[[Optional[int], Any], None]) -> None:
        """Called once by the slot loop, before it hands over any event."""
        self.report = report

    def submit(self, events: List[Tuple[int, tuple]]) -> None:
        """Starts ``run_async(*args)`` for each ``(token, args)``. Raises RuntimeError when the
        event loop has closed."""
        self.loop.call_soon_threadsafe(self._start, events)

    def cancel(self, tokens: List[int]) -> None:
        """Cancels the tasks of `tokens` (their results are no longer awaited)."""
        try:
            self.loop.call_soon_threadsafe(self._cancel, tokens)
        except RuntimeError:
            pass  # the loop has closed: so have its tasks

    def loop_stopped(self, message: str) -> None:
        if self.report is not None:
            self.report(None, message)

    def _start(self, events: List[Tuple[int, tuple]]) -> None:
        create_task, run_async, tasks, finished = self.loop.create_task, self.run_async, self.tasks, self._finished
        for token, args in events:
            task = create_task(run_async(*args))
            tasks[token] = task
            task.add_done_callback(functools.partial(finished, token))

    def _cancel(self, tokens: List[int]) -> None:
        for token in tokens:
            task = self.tasks.pop(token, None)
            if task is not None:
                task.cancel()

    def _finished(self, token: int, task: "asyncio.Task[Any]") -> None:
        if self.tasks.pop(token, None) is None:
            return  # the slot cancelled it (`_cancel` took it off) and waits for nothing
        if task.cancelled():  # cancelled by the pipeline's own code: the slot still waits for it
            result = (False, "pipeline_error", "the pipeline's task was cancelled")
        elif task.exception() is not None:  # run_async answers every failure of the pipeline itself
            exc = task.exception()
            result = (False, "pipeline_error", f"internal error while running the pipeline: {type(exc).__name__}")
        else:
            result = task.result()
        assert self.report is not None
        try:
            self.report(token, result)
        except Exception:  # the slot is gone (shut down): nobody waits for the result
            log.debug("an async pipeline's result came after its slot stopped", exc_info=True)


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
        # async pipelines in threads: the event loop their slots share, and its thread
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_thread: Optional[threading.Thread] = None
        self._async_slots: Set[AsyncSlot] = set()

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
            self._loop = asyncio.new_event_loop()
            t = threading.Thread(target=self._loop_main, name=f"warmslot-{self.spec.name}-loop", daemon=True)
            self._loop_thread = t
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
        new = self._take_slots(target)
        for slot in new:
            if self.isolation == "process":
                body = self._process_slot
            else:
                body = self._async_slot if self.spec.is_async else self._sync_slot
            t = threading.Thread(target=body, args=(slot, why), name=f"warmslot-{self.spec.name}-{slot}", daemon=True)
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
        self.core.keep_at_most(self.index, keep)

    def join(self, deadline: float) -> None:
        """After the server stopped: waits for the slot threads, then stops the event loop."""
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        loop, thread = self._loop, self._loop_thread
        if loop is not None and thread is not None:
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:
                pass  # it has stopped already
            thread.join(max(0.0, deadline - time.monotonic()))

    def growth_paused(self) -> bool:
        """After failed warm-ups, wait 0.5 s, doubling per failure up to 30 s, before growing."""
        if not self._failures:
            return False
        backoff = min(30.0, 0.5 * 2 ** min(self._failures - 1, 6))
        return time.monotonic() - self._failed_at < backoff

    def _slot_failed(self, slot: int, exc: BaseException) -> None:
        """A warm-up raised: say so, back off, free the slot."""
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
    # NOTE: a slot thread handles what it means to handle (`Exception`) and lets the rest
    # (SystemExit, KeyboardInterrupt raised by a pipeline's `__init__` or `setup`, or by the slot's
    # own machinery) end the thread after its cleanup: the warm-up failure is recorded or the slot
    # freed first (`finally`), then the exception goes on to `threading.excepthook`. The pool
    # replaces the slot as it would a failed one. (An exception a pipeline raises while running an
    # event fails that event instead: see `warmslot.runner`.)
    def _warm_up(self, slot: int, make: Callable[[], tuple]) -> Optional[tuple]:
        """The instance and resources `make()` builds, or None when it raised an Exception
        (recorded: the slot is freed)."""
        try:
            return make()
        except Exception as exc:
            self._slot_failed(slot, exc)
            return None
        except BaseException as exc:  # recorded too, then on its way
            self._slot_failed(slot, exc)
            raise

    def _slot_stopped(self, slot: int, exc: BaseException) -> None:
        """A slot's loop raised (the binding refused, a bug; for an async slot, the event loop
        stopped under it): say so. The caller frees the slot."""
        how = "" if isinstance(exc, Exception) else f" by {type(exc).__name__}"
        log.error("slot %d of pipeline %r stopped%s", slot, self.spec.name, how, exc_info=exc, extra=self._about(slot))

    def _sync_slot(self, slot: int, reason: WarmupReason) -> None:
        began = time.monotonic()
        made = self._warm_up(slot, self._instantiate)
        if made is None:
            return
        target, resources = made
        runner = EventRunner(self.spec, target, resources, self.debug)
        self._warmed()
        try:
            self.core.run_thread_slot(self.index, slot, runner.run_sync, reason, time.monotonic() - began)
        except Exception as exc:
            self._slot_stopped(slot, exc)
        except BaseException as exc:
            self._slot_stopped(slot, exc)
            raise
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
        except Exception as exc:
            self._slot_stopped(slot, exc)
        except BaseException as exc:
            self._slot_stopped(slot, exc)
            raise
        finally:
            self._slot_gone(slot, warm=warmed)

    # -- async pipelines in threads: slot loops in Rust, coroutines on one event loop -------------
    def _loop_main(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            # Stopped by `join` once the slots have stopped; tasks still here were answered (the
            # drain is over): cancel them. (If the loop itself broke, the slots still running
            # fail what they hold and stop, and the exception goes on to `threading.excepthook`.)
            try:
                tasks = asyncio.all_tasks(loop)
                for task in tasks:
                    task.cancel()
                if tasks:
                    loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                with self._lock:
                    slots = list(self._async_slots)
                for s in slots:
                    s.loop_stopped(f"the event loop of pipeline {self.spec.name!r} stopped")

    async def _make_async(self) -> Any:
        """Builds an instance on the event loop (its ``__init__`` runs there, an async ``setup``
        is awaited there); a BaseException comes back as a value, not through the loop."""

        async def make() -> tuple:
            target, resources = self._instantiate()
            if asyncio.iscoroutine(resources):
                resources = await resources
            return target, resources

        return await _guarded(make())

    def _instantiate_on_loop(self) -> tuple:
        assert self._loop is not None
        made = asyncio.run_coroutine_threadsafe(self._make_async(), self._loop).result()
        if isinstance(made, _Raised):
            raise made.exc
        return made

    def _async_slot(self, slot: int, reason: WarmupReason) -> None:
        began = time.monotonic()
        made = self._warm_up(slot, self._instantiate_on_loop)
        if made is None:
            return
        assert self._loop is not None
        target, resources = made
        runner = EventRunner(self.spec, target, resources, self.debug)
        bridge = AsyncSlot(self._loop, runner.run_async)
        with self._lock:
            self._async_slots.add(bridge)
        self._warmed()
        try:
            self.core.run_thread_slot(self.index, slot, bridge, reason, time.monotonic() - began, True)
        except Exception as exc:
            self._slot_stopped(slot, exc)
        except BaseException as exc:
            self._slot_stopped(slot, exc)
            raise
        finally:
            with self._lock:
                self._async_slots.discard(bridge)
            self._slot_gone(slot, warm=True)
