"""Grows each pipeline's warm pool, between its min_slots and max_slots, from load counters.

The policy is reactive: every tick, a pipeline whose warm slots are all busy while events wait
(in its ring, or in-flight beyond what the warm slots hold) gets one more slot, until max_slots.
Slots, once warm, stay warm: warming is the expensive part (``__init__``, ``setup=``), and an idle
slot costs a parked thread or an idle task.
"""

from __future__ import annotations

import threading
from typing import Any, List

from .slots import PipelineRuntime

TICK_SECONDS = 0.02


class Autoscaler:
    def __init__(self, core: Any, runtimes: List[PipelineRuntime], tick: float = TICK_SECONDS) -> None:
        self.core = core
        self.runtimes = runtimes
        self.tick = tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="warmslot-autoscaler", daemon=True)

    def start(self) -> None:
        if any(rt.spec.max_slots > rt.spec.min_slots for rt in self.runtimes):
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def step(self) -> None:
        for rt, (depth, inflight, warm, busy) in zip(self.runtimes, self.core.load()):
            starting = rt.started - warm
            if rt.started >= rt.spec.max_slots or starting > 0:
                continue  # at the ceiling, or a slot is still warming up
            if warm and busy >= warm and (depth > 0 or inflight > warm):
                rt.grow(rt.started + 1)

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            try:
                self.step()
            except Exception:  # never let scaling take the server down
                import logging

                logging.getLogger("warmslot").exception("autoscaler step failed")
