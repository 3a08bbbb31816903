"""The traffic-prediction state machine: one per pipeline, fed the engine's counters every tick,
it forecasts the arrival rate and sets the warm-slot target so the pool grows *before* a spike
lands instead of after events start queueing.

Model, per tick of `dt` seconds:

- arrival rate ``r`` = new arrivals / dt (accepted and refused alike: refusals are demand too);
- Holt's linear smoothing gives a level ``L`` and a trend ``T`` (req/s per tick); the forecast
  looks ``horizon`` seconds ahead, the time a new slot needs to warm up:
  ``F = max(0, L + T * horizon / dt)``;
- the service time ``S`` (seconds a slot spends on one event) is an EWMA of run times;
- Little's law: slots needed = ``max(F, r) * S * headroom``. Backlog (events waiting while every
  warm slot is busy) with slots near full utilisation adds one slot per tick on top.

Phases: ``idle`` (no arrivals), ``steady``, ``rising`` (trend above 10 % of the level per second),
``spike`` (backlog: events wait for a slot), ``cooling`` (trend falling by more than 10 % of the
level per second).
The pool grows at once and shrinks slowly: only after the target has stayed below the warm
pool for ``SHRINK_AFTER`` seconds does a slot retire (it finishes what it holds, then stops),
because warming one again (``__init__``, ``setup=``) is the cost the pool exists to avoid.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from .slots import PipelineRuntime

log = logging.getLogger("warmslot")

TICK_SECONDS = 0.05
#: Seconds the target must stay below the pool before slots retire.
SHRINK_AFTER = 10.0


@dataclass
class Sample:
    """The engine's counters for one pipeline at time ``t`` (cumulative ones are totals)."""

    t: float
    ring_depth: int
    inflight: int
    warm: int
    busy: int
    arrivals: int
    ran: int
    run_us: int


class TrafficPredictor:
    IDLE, STEADY, RISING, SPIKE, COOLING = "idle", "steady", "rising", "spike", "cooling"

    def __init__(
        self,
        min_slots: int,
        max_slots: int,
        *,
        horizon: float = 0.5,
        alpha: float = 0.5,
        beta: float = 0.3,
        headroom: float = 1.25,
    ) -> None:
        self.min_slots = min_slots
        self.max_slots = max_slots
        self.horizon = horizon
        self.alpha = alpha
        self.beta = beta
        self.headroom = headroom
        self.phase = self.IDLE
        self.level = 0.0
        self.trend = 0.0
        self.rate = 0.0
        self.forecast = 0.0
        self.service: Optional[float] = None
        self.target = min_slots
        self._last: Optional[Sample] = None

    def observe(self, s: Sample) -> int:
        """Feeds one sample; returns the warm-slot target (min_slots..max_slots)."""
        last, self._last = self._last, s
        if last is None or s.t <= last.t:
            return self.target
        dt = s.t - last.t
        self.rate = max(0, s.arrivals - last.arrivals) / dt
        prev_level = self.level
        self.level = self.alpha * self.rate + (1 - self.alpha) * (self.level + self.trend)
        self.trend = self.beta * (self.level - prev_level) + (1 - self.beta) * self.trend
        self.forecast = max(0.0, self.level + self.trend * self.horizon / dt)

        ran = s.ran - last.ran
        if ran > 0:
            sample = (s.run_us - last.run_us) / ran / 1e6
            self.service = sample if self.service is None else 0.7 * self.service + 0.3 * sample

        need = self.min_slots
        if self.service is not None:
            # The epsilon keeps float noise in dt (200.0001 req/s) from adding a whole slot.
            need = math.ceil(max(self.forecast, self.rate) * self.service * self.headroom - 1e-6)
        backlog = s.warm > 0 and s.busy >= s.warm and (s.ring_depth > 0 or s.inflight > s.warm)
        # Growing helps only if the slots are the bottleneck (not the CPU or the GIL): they are
        # when the measured load (rate x service) nearly fills the warm slots.
        saturated = self.service is None or self.rate * self.service >= 0.8 * s.warm
        if backlog and saturated:
            need = max(need, s.warm + 1)

        rising = self.trend / dt > 0.1 * self.level + 1.0
        if backlog:
            self.phase = self.SPIKE
        elif self.rate == 0 and self.level < 0.5:
            self.phase = self.IDLE
        elif rising:
            self.phase = self.RISING
        elif -self.trend / dt > 0.1 * self.level + 1.0:
            self.phase = self.COOLING
        else:
            self.phase = self.STEADY
        self.target = max(self.min_slots, min(self.max_slots, need))
        return self.target

    def snapshot(self) -> Dict[str, Any]:
        return {
            "phase": self.phase,
            "rate_rps": round(self.rate, 3),
            "forecast_rps": round(self.forecast, 3),
            "service_s": self.service,
            "target_slots": self.target,
        }


class Autoscaler:
    """Ticks every pipeline's predictor and grows its pool to the target."""

    def __init__(self, core: Any, runtimes: List[PipelineRuntime], tick: float = TICK_SECONDS) -> None:
        self.core = core
        self.runtimes = runtimes
        self.tick = tick
        self.predictors = [TrafficPredictor(rt.spec.min_slots, rt.spec.max_slots) for rt in runtimes]
        self._low_since: List[Optional[float]] = [None] * len(runtimes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="warmslot-predictor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def step(self, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        for i, (rt, pred, counters) in enumerate(zip(self.runtimes, self.predictors, self.core.load())):
            target = pred.observe(Sample(now, *counters))
            self.core.set_prediction(i, target, pred.forecast)
            started = rt.started
            if target > started and rt.starting <= 0 and not rt.growth_paused():
                # One batch of new slots at a time: the next tick sees them warm (or failing).
                self._low_since[i] = None
                rt.scale_to(target)
            elif target < started and rt.starting <= 0:
                since = self._low_since[i]
                if since is None:
                    self._low_since[i] = now
                elif now - since >= SHRINK_AFTER:
                    self._low_since[i] = None
                    rt.scale_to(target)
            else:
                self._low_since[i] = None

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            try:
                self.step()
            except Exception:  # never let scaling take the server down
                log.exception("predictor step failed")
