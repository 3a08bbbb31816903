"""The autoscaler: every tick, one ``Observation`` per pipeline from the engine's counters, the
pipeline's scaling policy (``policies.py``: ``predictive``, ``reactive`` or ``static``) decides a
warm-slot target, and the pool is scaled to it.

The policy objects are the ones ``warmslot simulate`` scores, so the simulator's figures are
about this code.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Sequence

from .policies import Observation, Policy, make_policy
from .slots import PipelineRuntime

log = logging.getLogger("warmslot")

TICK_SECONDS = 0.05
#: Seconds the target must stay below the pool before slots retire.
SHRINK_AFTER = 10.0


class WarmupClock:
    """Measures how long this pipeline's slots take to warm up, from the outside: the time from
    asking for slots to the warm count rising (EWMA). Used until the slot pool reports its own
    measurement (``core.pool(i)["warmup_s"]``, 0 before the first slot warms)."""

    def __init__(self) -> None:
        self.asked: Deque[float] = deque()
        self.warm = 0
        self.seconds = 0.0

    def started(self, now: float, n: int) -> None:
        self.asked.extend([now] * n)

    def observe(self, now: float, warm: int) -> float:
        for _ in range(max(0, warm - self.warm)):
            if not self.asked:
                break
            took = now - self.asked.popleft()
            self.seconds = took if self.seconds == 0 else 0.7 * self.seconds + 0.3 * took
        self.warm = warm
        return self.seconds


def observation(
    now: float, counters: Sequence[int], starting: int, warmup_s: float, pool: Optional[Dict[str, Any]] = None
) -> Observation:
    """Maps one pipeline's ``core.load()`` tuple ``(waiting, inflight, warm, busy, arrivals, ran,
    run_us, cpu_us)`` and its ``core.pool()`` counters to an ``Observation``. ``waiting`` counts
    events admitted and not yet running (ring and lanes). The slot pool measures warm-up times,
    cold starts and the CPU time of runs (thread CPU time of a thread slot, the worker's user +
    system time of a process slot); ``warmup_s`` (measured from outside) is used until the first
    slot reports. Where CPU time is not measured (``cpu_us`` 0: async pipelines in this
    interpreter), ``cpu_us = run_us`` tells the policy so."""
    waiting, inflight, warm, busy, arrivals, ran, run_us = counters[:7]
    cpu_us = int(counters[7]) if len(counters) > 7 else 0
    pool = pool or {}
    measured = float(pool.get("warmup_s") or 0.0)
    return Observation(
        t=now,
        arrivals=int(arrivals),
        waiting=int(waiting),
        busy=int(busy),
        warm=int(warm),
        starting=max(0, int(starting)),
        ran=int(ran),
        run_us=int(run_us),
        cpu_us=cpu_us if cpu_us > 0 else int(run_us),
        warmup_s=measured if measured > 0 else warmup_s,
        cold_starts=int(pool.get("cold_starts", 0)),
    )


class Autoscaler:
    """Ticks every pipeline's policy and scales its pool to the target."""

    def __init__(self, core: Any, runtimes: List[PipelineRuntime], tick: float = TICK_SECONDS) -> None:
        self.core = core
        self.runtimes = runtimes
        self.tick = tick
        self.policies: List[Policy] = [
            make_policy(rt.spec.scaling, rt.spec.min_slots, rt.spec.max_slots, rt.spec.scaling_options)
            for rt in runtimes
        ]
        now = time.monotonic()
        self.clocks = [WarmupClock() for _ in runtimes]
        for clock, rt in zip(self.clocks, runtimes):
            clock.started(now, rt.spec.min_slots)  # the pools warm their minimum as they start
        for i, policy in enumerate(self.policies):
            phases = list(getattr(policy, "PHASES", ())) or [str(policy.snapshot().get("phase"))]
            core.set_predictor_phases(i, phases)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="warmslot-autoscaler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def step(self, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        for i, (rt, policy, clock, counters) in enumerate(
            zip(self.runtimes, self.policies, self.clocks, self.core.load())
        ):
            warmup = clock.observe(now, int(counters[2]))
            target = policy.decide(observation(now, counters, rt.starting, warmup, self.core.pool(i)))
            snap = policy.snapshot()
            forecast = float(snap.get("forecast_rps") or 0.0)
            self.core.set_prediction(i, target, forecast, str(snap.get("phase")))
            if not rt.growth_paused():
                clock.started(now, rt.scale_to(target))

    def snapshots(self) -> List[dict]:
        return [p.snapshot() for p in self.policies]

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            try:
                self.step()
            except Exception:  # never let scaling take the server down
                log.exception("autoscaler step failed")
