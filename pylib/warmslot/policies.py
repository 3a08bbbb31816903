"""Scaling policies: given one pipeline's counters each tick, how many warm slots it should have.

The same policy objects run live (``predictor.Autoscaler`` feeds them ``core.load()``) and in
``warmslot simulate`` (``simulate.py`` feeds them its model of the pool), so a figure from the
simulator is a figure about the code that serves traffic.

- ``static``: ``min_slots``, never more.
- ``reactive``: the Knative Pod Autoscaler (KPA), with Knative's documented defaults.
- ``predictive`` (the default): sizes from measured concurrency and service time, looks one
  warm-up ahead, learns recurring bursts and idle gaps, and releases slots after quiet.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, List, Mapping, Optional, Tuple

try:
    from typing import Protocol
except ImportError:  # pragma: no cover - Python 3.7
    Protocol = object  # type: ignore[assignment,misc]

SCALINGS = ("predictive", "reactive", "static")


@dataclass(frozen=True)
class Observation:
    """One pipeline's counters at one tick (cumulative ones are totals since the start)."""

    t: float  # monotonic seconds
    arrivals: int  # cumulative events arrived (accepted + refused)
    waiting: int  # admitted, not yet running
    busy: int  # slots running an event now (for async: events running)
    warm: int  # warm slots
    starting: int  # slots warming up
    ran: int  # cumulative events finished
    run_us: int  # cumulative wall µs of runs
    cpu_us: int  # cumulative CPU µs of runs (== run_us if unknown)
    warmup_s: float  # measured warm-up time of this pipeline's slots (EWMA; 0 if unknown)
    cold_starts: int  # cumulative
    concurrency: int = 1  # events one slot runs at once


class Policy(Protocol):
    name: str

    def decide(self, obs: Observation) -> int:
        """Returns the target number of warm slots, clamped to [min_slots, max_slots]."""
        ...

    def snapshot(self) -> dict:
        """``{"policy", "phase", "forecast_rps", "target_slots", ...}`` for predictions()/metrics."""
        ...


def _clamp(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, n))


class StaticPolicy:
    """``min_slots`` warm slots, never more (a fixed pool)."""

    name = "static"
    PHASES = ("static",)

    def __init__(self, min_slots: int, max_slots: int) -> None:
        self.min_slots = min_slots
        self.max_slots = max_slots
        self.rate = 0.0
        self._last: Optional[Observation] = None

    def decide(self, obs: Observation) -> int:
        last, self._last = self._last, obs
        if last is not None and obs.t > last.t:
            self.rate = max(0, obs.arrivals - last.arrivals) / (obs.t - last.t)
        return self.min_slots

    def snapshot(self) -> dict:
        return {
            "policy": self.name,
            "phase": "static",
            "forecast_rps": round(self.rate, 3),
            "target_slots": self.min_slots,
        }


class _Buckets:
    """Per-second averages of a sampled value, averaged over a trailing window.

    Knative's ``TimedFloat64Buckets`` (pkg/autoscaler/aggregation/bucketing.go): one bucket per
    second, ``WindowAverage`` = total of the buckets in the window / number of buckets since the
    first write (at most the window's length).
    """

    def __init__(self, granularity: float = 1.0) -> None:
        self.granularity = granularity
        self.buckets: Deque[Tuple[int, float, int]] = deque()  # (bucket index, sum, samples)
        self.first: Optional[int] = None

    def record(self, t: float, value: float) -> None:
        b = int(math.floor(t / self.granularity))
        if self.first is None:
            self.first = b
        if self.buckets and self.buckets[-1][0] == b:
            _, s, n = self.buckets[-1]
            self.buckets[-1] = (b, s + value, n + 1)
        else:
            self.buckets.append((b, value, 1))
        while len(self.buckets) > 4096:
            self.buckets.popleft()

    def window_average(self, t: float, window: float) -> Optional[float]:
        if self.first is None:
            return None
        now = int(math.floor(t / self.granularity))
        span = max(1, int(round(window / self.granularity)))
        lo = now - span + 1
        total = sum(s / n for b, s, n in self.buckets if b >= lo)
        count = min(span, now - self.first + 1)
        return total / max(1, count)


class KpaPolicy:
    """The Knative Pod Autoscaler, as knative/serving ``pkg/autoscaler/scaling/autoscaler.go``
    (``autoscaler.Scale``) computes it, with the defaults of ``config-autoscaler``:

    - observed concurrency (events running + waiting, what the queue-proxy reports) is kept in
      one-second buckets; the *stable* value is its average over ``stable_window`` (60 s), the
      *panic* value over ``panic_window_pct`` of it (10 %: 6 s);
    - ``TargetValue`` = per-slot target concurrency × ``target_utilization`` (70 %); the
      per-slot target is 1 for a sync slot (``containerConcurrency: 1``) and ``concurrency``
      for an event-loop slot;
    - ``dspc = ceil(stable / TargetValue)``, ``dppc = ceil(panic / TargetValue)``, each kept in
      ``[floor(ready / max_scale_down_rate), ceil(max_scale_up_rate × ready)]`` (rates 2 and
      1000), ``ready = max(1, warm slots)``;
    - panic starts when ``dppc / ready >= panic_threshold_pct / 100`` (200 %), is extended while
      that holds, and ends once it has not held for a whole stable window; while panicking the
      target is ``max(dspc, dppc)`` and never goes down (``maxPanicPods``);
    - an autoscaler created while more than one pod is ready starts in panic mode;
    - the decider runs every ``tick_interval`` (2 s, ``tick-interval``) and holds its answer
      in between; with no metric yet the answer is invalid and the pool is left as it is.

    Scale-to-zero, the activator and ``scale-down-delay`` (0 by default) are not modelled:
    warmslot keeps ``min_slots`` >= 1 warm, and the result is clamped to
    ``[min_slots, max_slots]`` as Knative's min-scale/max-scale annotations clamp it.
    """

    name = "reactive"
    PHASES = ("stable", "panic")

    def __init__(
        self,
        min_slots: int,
        max_slots: int,
        *,
        concurrency: int = 1,
        stable_window: float = 60.0,
        panic_window_pct: float = 10.0,
        panic_threshold_pct: float = 200.0,
        target_utilization: float = 0.7,
        max_scale_up_rate: float = 1000.0,
        max_scale_down_rate: float = 2.0,
        tick_interval: float = 2.0,
    ) -> None:
        self.min_slots = min_slots
        self.max_slots = max_slots
        self.concurrency = concurrency
        self.stable_window = stable_window
        self.panic_window = stable_window * panic_window_pct / 100.0
        self.panic_threshold = panic_threshold_pct / 100.0
        self.target_utilization = target_utilization
        self.max_scale_up_rate = max_scale_up_rate
        self.max_scale_down_rate = max_scale_down_rate
        self.tick_interval = tick_interval
        self._conc = _Buckets()
        self._arrivals = _Buckets()
        self._last: Optional[Observation] = None
        self._next_decision: Optional[float] = None
        self.panic_time: Optional[float] = None
        self.max_panic_pods = 0
        self.stable = 0.0
        self.panic = 0.0
        self.rate = 0.0
        self.target = min_slots

    @property
    def panicking(self) -> bool:
        return self.panic_time is not None

    def decide(self, obs: Observation) -> int:
        last, self._last = self._last, obs
        per_slot = max(1, obs.concurrency if self.concurrency == 1 else self.concurrency)
        if last is None:
            # autoscaler.go newAutoscaler: start in panic mode when more than one pod is ready,
            # so a restart does not scale down before the windows have data.
            if obs.warm > 1:
                self.panic_time = obs.t
                self.max_panic_pods = obs.warm
            self._next_decision = obs.t
        else:
            dt = obs.t - last.t
            if dt > 0:
                self._arrivals.record(obs.t, max(0, obs.arrivals - last.arrivals) / dt)
        self._conc.record(obs.t, obs.busy + obs.waiting)
        if self._next_decision is not None and obs.t + 1e-9 < self._next_decision:
            return self.target
        self._next_decision = obs.t + self.tick_interval
        stable = self._conc.window_average(obs.t, self.stable_window)
        panic = self._conc.window_average(obs.t, self.panic_window)
        if stable is None or panic is None:
            return self.target  # no data: invalid scale result, keep the pool as it is
        self.stable, self.panic = stable, panic
        self.rate = self._arrivals.window_average(obs.t, self.panic_window) or 0.0

        target_value = per_slot * self.target_utilization
        ready = max(1.0, float(obs.warm))
        max_up = math.ceil(self.max_scale_up_rate * ready)
        max_down = math.floor(ready / self.max_scale_down_rate)
        # The epsilon keeps float noise (0.7 * 3 / 0.7 = 3.0000000004) from adding a slot.
        dspc = math.ceil(stable / target_value - 1e-9)
        dppc = math.ceil(panic / target_value - 1e-9)
        desired_stable = int(min(max(dspc, max_down), max_up))
        desired_panic = int(min(max(dppc, max_down), max_up))
        over = dppc / ready >= self.panic_threshold
        if over:
            self.panic_time = obs.t  # begin panicking, or extend the panic
        elif self.panic_time is not None and self.panic_time + self.stable_window < obs.t:
            self.panic_time = None  # the surge has made its way into the stable metric
            self.max_panic_pods = 0
        desired = desired_stable
        if self.panic_time is not None:
            desired = max(desired, desired_panic)
            # No scaling down while panicking: only increases are applied.
            self.max_panic_pods = max(self.max_panic_pods, desired)
            desired = self.max_panic_pods
        self.target = _clamp(desired, self.min_slots, self.max_slots)
        return self.target

    def snapshot(self) -> dict:
        return {
            "policy": self.name,
            "phase": "panic" if self.panicking else "stable",
            "forecast_rps": round(self.rate, 3),
            "target_slots": self.target,
            "stable_concurrency": round(self.stable, 3),
            "panic_concurrency": round(self.panic, 3),
        }


def _ewma(prev: float, sample: float, dt: float, tau: float) -> float:
    a = 1.0 - math.exp(-dt / tau) if tau > 0 else 1.0
    return prev + a * (sample - prev)


def _percentile(values: List[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return 0.0
    k = (len(s) - 1) * q
    lo = int(math.floor(k))
    hi = min(len(s) - 1, lo + 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


@dataclass(frozen=True)
class _Tick:
    """What ``PredictivePolicy.decide`` observed in one tick, handed from each step to the next."""

    obs: Observation
    last: Observation  # the previous tick's observation
    dt: float  # seconds since it
    per_slot: int  # events one slot is sized for at once
    conc: int  # events running + waiting
    t0: float  # when the last half second's window starts (its oldest entry)
    a0: int  # cumulative arrivals at t0
    bg0: float  # the background rate at t0: as it stood before the last half second
    rate_short: float  # arrivals per second over the last half second
    rate_second: float  # arrivals per second over the last second
    service: float  # S, the wall time of a run (0 until measured)
    warmup: float  # a slot's warm-up time, at least one tick
    short_need: int  # slots the last half second's arrivals need
    onset: float  # short_need from which the last half second is a burst
    surprising: bool  # the last half second's arrivals are beyond Poisson noise (6 sigma)


class PredictivePolicy:
    """Keeps just enough slots warm, warmed one warm-up ahead of the traffic.

    Each tick, ``decide`` runs these steps (each method says why it does what it does):

    1. ``_observe``: the arrival rates (fast, slow, background outside bursts) and their trend,
       the running and waiting events, the service time ``S`` and its CPU share ``phi``, and the
       arrivals of the last half second and of the last second;
    2. ``_follow_bursts``: a burst starts, ends (its size and the idle gap before it are learned)
       or turns out to be a lasting shift of the load;
    3. ``_demand_slots``: the forecast one warm-up ahead, the demand (the slow one unless a rise
       or a clear fall) and the slots for it by square-root staffing;
    4. ``_is_young`` and ``_backlog_slots``: a young burst is served by the slots there are and
       those learned from earlier bursts; a queue adds slots only if it would outlast warm-ups;
    5. ``_follow_pattern``: the phase; a trusted pattern of bursts and gaps prewarms before the
       next burst and releases in a gap; a burst without one keeps its slots for a keep-alive;
    6. ``_cap_for_cpu``: a CPU-bound pipeline gets no more slots than can overlap;
    7. ``_hold_for_scale_down``: the target is the largest sizing of a trailing window, so the
       pool shrinks only after quiet.

    Phases: ``idle``, ``steady``, ``rising``, ``burst`` and ``cooling`` (reactive), ``prewarm``
    and ``gap`` (a trusted pattern), ``hold`` (a burst's keep-alive).
    """

    name = "predictive"
    PHASES = ("idle", "steady", "rising", "burst", "cooling", "prewarm", "gap", "hold")

    def __init__(
        self,
        min_slots: int,
        max_slots: int,
        *,
        concurrency: int = 1,
        beta: float = 1.0,
        tau_fast: float = 1.0,
        tau_slow: float = 20.0,
        tau_trend: float = 2.0,
        noise_band: float = 1.5,
        scale_down_after: float = 10.0,
        burst_slots: float = 1.0,
        burst_end_s: float = 1.0,
        min_history: int = 4,
        keep_alive: float = 60.0,
        max_burst_s: float = 30.0,
        backlog_factor: float = 1.5,
        rise_s: float = 0.5,
        min_gap_ratio: float = 0.5,
        prewarm_margin: float = 0.5,
        cpu_saturation: float = 0.9,
        burst_patience: float = 1.5,
        young_warmups: float = 1.0,
    ) -> None:
        self.min_slots = min_slots
        self.max_slots = max_slots
        self.concurrency = concurrency
        self.beta = beta
        self.tau_fast = tau_fast
        self.tau_slow = tau_slow
        self.tau_trend = tau_trend
        self.noise_band = noise_band
        self.scale_down_after = scale_down_after
        self.burst_slots = burst_slots
        self.burst_end_s = burst_end_s
        self.min_history = min_history
        self.keep_alive = keep_alive
        self.max_burst_s = max_burst_s
        self.backlog_factor = backlog_factor
        self.rise_s = rise_s
        self._rise_since: Optional[float] = None
        self.min_gap_ratio = min_gap_ratio
        self.prewarm_margin = prewarm_margin
        self.cpu_saturation = cpu_saturation
        self.burst_patience = burst_patience
        self.young_warmups = young_warmups

        self.phase = "idle"
        self.rate_fast = 0.0
        self.rate_slow = 0.0
        self.rate_bg = 0.0  # the background: the slow rate outside bursts
        self.trend = 0.0
        self.forecast = 0.0
        self.busy_fast = 0.0
        self.conc_slow = 0.0
        self.service: Optional[float] = None
        self.cpu_share: Optional[float] = None
        self.cpu_load = 0.0  # CPU seconds of runs per second
        self.horizon = 0.0
        self._elapsed = 0.0
        self._bg_elapsed = 0.0
        self.target = min_slots
        self._last: Optional[Observation] = None
        # (t, arrivals, background rate before t) over the last second
        self._recent: Deque[Tuple[float, int, float]] = deque()
        self._sizes: Deque[Tuple[float, int]] = deque()  # (t, slots) for the hysteresis window
        # Pattern learning.
        self._in_burst = False
        self._burst_start = 0.0
        self._burst_t0 = 0.0
        self._burst_first = 0.0  # when its first and last events arrived (about)
        self._burst_last = 0.0
        self._burst_rate = 0.0
        self._burst_base = 0.0
        self._burst_a0 = 0
        self._below_arrivals = 0
        self._below_since: Optional[float] = None
        self._last_burst_end: Optional[float] = None
        self.gaps: Deque[float] = deque(maxlen=32)
        self.peaks: Deque[int] = deque(maxlen=3)

    # -- helpers ---------------------------------------------------------------------------------
    def _slots_for(self, demand: float) -> int:
        if demand <= 1e-9:
            return 0
        return math.ceil(demand + self.beta * math.sqrt(demand) - 1e-9)

    def _burst_size(self, service: float, per_slot: int, warmup: float) -> int:
        """Slots for the burst that just ended: its events' work spread over the time its
        events arrived in plus ``backlog_factor`` warm-ups (a shorter wait is not worth a slot:
        see the backlog rule), and at least its peak one-second rate x S; a burst that arrives over more than
        ``4 x warm-up`` is sized as steady load."""
        assert self._below_since is not None, "called once a burst has ended"
        span = max(0.05, self._burst_last - self._burst_first)
        events = max(0.0, self._below_arrivals - self._burst_a0 - self._burst_base * span)
        if span > 4 * warmup:
            return max(1, self._slots_for(events * service / span / per_slot))
        spread = max(events * service / (span + self.backlog_factor * warmup), self._burst_rate * service)
        return max(1, math.ceil(spread / per_slot - 1e-9))

    def young_s(self, warmup: float) -> float:
        return max(self.young_warmups * warmup, 1.0)

    def pattern(self) -> Optional[Tuple[float, float]]:
        """(p5, p99) of the learned idle gaps, or None while the pattern is unclear."""
        if len(self.gaps) < self.min_history or not self.peaks:
            return None
        gaps = list(self.gaps)
        # A missed burst doubles a gap now and then: the spread is judged against the median.
        p5, p50, p99 = _percentile(gaps, 0.05), _percentile(gaps, 0.5), _percentile(gaps, 0.99)
        if p50 <= 0 or p5 < self.min_gap_ratio * p50:
            return None
        # Shahrad et al. widen the window by a 10 % margin on both ends.
        return 0.9 * p5, 1.1 * p99

    # -- the tick --------------------------------------------------------------------------------
    def decide(self, obs: Observation) -> int:
        last, self._last = self._last, obs
        if last is None or obs.t <= last.t:
            return self.target
        tick = self._observe(obs, last)
        self._follow_bursts(tick)
        need, rising = self._demand_slots(tick)
        young = self._is_young(tick)
        if young:
            need = min(need, max([self.target] + list(self.peaks)))
        need = self._backlog_slots(tick, need, young)
        need, phase, hold = self._follow_pattern(tick, need, rising)
        need = self._cap_for_cpu(tick, need)
        return self._hold_for_scale_down(tick, need, phase, hold)

    # -- step 1: observe -------------------------------------------------------------------------
    def _observe(self, obs: Observation, last: Observation) -> _Tick:
        """The tick's measurements. The forecast looks ahead over the horizon ``h`` = the
        measured warm-up time of this pipeline's slots + one tick. The last half second's
        arrivals are the burst detector's short view: a burst when they need ``burst_slots``
        more slots than (and twice) the baseline and are beyond what Poisson noise around the
        background gives (6 sigma)."""
        dt = obs.t - last.t
        per_slot = max(1, obs.concurrency if self.concurrency == 1 else self.concurrency)
        self.horizon = max(0.0, obs.warmup_s) + dt
        rate = max(0, obs.arrivals - last.arrivals) / dt
        bg_before = self._average_rates(obs, rate, dt)
        self._measure_runs(obs, last, dt)
        t0, a0, bg0, rate_short, rate_second = self._recent_rates(obs, rate, bg_before)
        service = self.service if self.service is not None else 0.0
        baseline = self._slots_for(min(self.rate_slow, bg0) * service / per_slot)
        expected = bg0 * (obs.t - t0)
        return _Tick(
            obs=obs,
            last=last,
            dt=dt,
            per_slot=per_slot,
            conc=obs.busy + obs.waiting,
            t0=t0,
            a0=a0,
            bg0=bg0,
            rate_short=rate_short,
            rate_second=rate_second,
            service=service,
            warmup=max(obs.warmup_s, dt),
            short_need=self._slots_for(rate_short * service / per_slot),
            onset=max(baseline + self.burst_slots, 2 * baseline),
            surprising=obs.arrivals - a0 >= expected + 6 * math.sqrt(expected) + 2,
        )

    def _average_rates(self, obs: Observation, rate: float, dt: float) -> float:
        """Arrivals per second smoothed over ``tau_fast`` (1 s) and ``tau_slow`` (20 s), and their
        trend; running events over ``tau_fast``, running + waiting ones over ``tau_slow``. The
        *background* (after Shahrad et al., "Serverless in the Wild", ATC '20) is the slow
        arrival rate outside bursts: not updated while a burst lasts. Returns the background as
        it was before this tick."""
        prev_fast = self.rate_fast
        self.rate_fast = _ewma(self.rate_fast, rate, dt, self.tau_fast)
        # The slow average starts from the first tick's data, not from zero: until tau_slow has
        # passed it is the plain mean so far (the EWMA's start-up bias removed).
        self._elapsed += dt
        self.rate_slow = _ewma(self.rate_slow, rate, dt, min(self.tau_slow, self._elapsed))
        bg_before = self.rate_bg
        if not self._in_burst:
            self._bg_elapsed += dt
            self.rate_bg = _ewma(self.rate_bg, rate, dt, min(self.tau_slow, self._bg_elapsed))
        self.trend = _ewma(self.trend, (self.rate_fast - prev_fast) / dt, dt, self.tau_trend)
        conc = obs.busy + obs.waiting
        self.busy_fast = _ewma(self.busy_fast, obs.busy, dt, self.tau_fast)
        self.conc_slow = _ewma(self.conc_slow, conc, dt, min(self.tau_slow, self._elapsed))
        return bg_before

    def _measure_runs(self, obs: Observation, last: Observation, dt: float) -> None:
        """``S``: the wall time of a run (EWMA of run_us / ran); ``phi``: its CPU share (cpu_us /
        run_us, when measured: ``cpu_us == run_us`` is read as "not measured"); and the CPU
        seconds of runs per second."""
        ran = obs.ran - last.ran
        run_us = obs.run_us - last.run_us
        if ran > 0 and run_us > 0:
            s = run_us / ran / 1e6
            self.service = s if self.service is None else 0.8 * self.service + 0.2 * s
            cpu_us = obs.cpu_us - last.cpu_us
            if obs.cpu_us != obs.run_us:  # equal means the runtime does not measure CPU time
                share = min(1.0, max(0.0, cpu_us / run_us))
                self.cpu_share = share if self.cpu_share is None else 0.8 * self.cpu_share + 0.2 * share
        if obs.cpu_us != obs.run_us:
            self.cpu_load = _ewma(self.cpu_load, max(0, obs.cpu_us - last.cpu_us) / 1e6 / dt, dt, self.tau_fast)

    def _recent_rates(self, obs: Observation, rate: float, bg_before: float) -> Tuple[float, int, float, float, float]:
        """Arrivals of the last half second (the burst detector's short view) and of the last
        second (a burst's size): ``(t0, a0, bg0, rate_short, rate_second)``."""
        self._recent.append((obs.t, obs.arrivals, bg_before))
        while len(self._recent) > 2 and self._recent[1][0] <= obs.t - 1.0:
            self._recent.popleft()
        t1, a1, _ = self._recent[0]
        # The background is judged as it was before the last half second: a burst must not
        # raise the level it is measured against (at start-up the background is a plain mean).
        t0, a0, bg0 = next((r for r in self._recent if r[0] >= obs.t - 0.5 - 1e-9), self._recent[0])
        rate_short = (obs.arrivals - a0) / (obs.t - t0) if obs.t > t0 else rate
        rate_second = (obs.arrivals - a1) / (obs.t - t1) if obs.t > t1 else rate
        return t0, a0, bg0, rate_short, rate_second

    # -- step 2: bursts and the gaps between them ------------------------------------------------
    def _follow_bursts(self, tick: _Tick) -> None:
        """A burst starts when the last half second needs ``burst_slots`` more slots than (and
        twice) the baseline and is surprising (see ``_observe``); it ends when arrivals have been
        back at the background it stood on, and its queue served, for ``burst_end_s`` (1 s). One
        lasting over ``max_burst_s`` (30 s) is a shift of the load, not a burst, and becomes the
        background."""
        if not self._in_burst and tick.service > 0 and tick.short_need >= tick.onset and tick.surprising:
            self._start_burst(tick)
        if not self._in_burst:
            return
        obs = tick.obs
        self._burst_rate = max(self._burst_rate, tick.rate_second)
        if obs.arrivals > tick.last.arrivals and tick.short_need >= tick.onset:
            self._burst_last = obs.t
        # It ends when arrivals fall back to the background it stood on (not to a slow
        # average that a long burst has pulled up).
        if tick.short_need < self._burst_base_need(tick) + 1 and tick.conc <= obs.warm * tick.per_slot * 0.5:
            if self._below_since is None:
                self._below_since, self._below_arrivals = obs.t, obs.arrivals
            elif obs.t - self._below_since >= self.burst_end_s:
                self._end_burst(tick, self._below_since)
        else:
            self._below_since = None
            if obs.t - self._burst_start > self.max_burst_s:
                # A shift of the load that lasted, not a burst: it is the background now.
                self._in_burst = False
                self._last_burst_end = None
                self.rate_bg = self.rate_fast
                self._recent = deque((t, a, self.rate_bg) for t, a, _ in self._recent)

    def _start_burst(self, tick: _Tick) -> None:
        """Records a burst's start, and the idle gap since the last one ended for the pattern."""
        obs = tick.obs
        self._in_burst = True
        self._burst_start = obs.t
        self._burst_t0, self._burst_a0 = tick.t0, tick.a0
        # Arrivals happened within the tick before the first entry that counts more.
        self._burst_first = next((r[0] - tick.dt for r in self._recent if r[1] > tick.a0), obs.t)
        self._burst_last = obs.t
        self._burst_rate = tick.rate_second
        self._burst_base = tick.bg0  # the background the burst stands on
        self.rate_bg = tick.bg0  # the half second before it was detected was the burst
        self._below_since = None
        if self._last_burst_end is not None:
            self.gaps.append(max(0.0, obs.t - 0.5 - self._last_burst_end))

    def _end_burst(self, tick: _Tick, below_since: float) -> None:
        """A burst is over: its size is learned (``_burst_size``), unless it lasted too long."""
        self._in_burst = False
        if below_since - self._burst_start <= self.max_burst_s:
            self._last_burst_end = below_since
            self.peaks.append(self._burst_size(tick.service, tick.per_slot, tick.warmup))
        else:  # a shift of the load that lasted, not a burst: nothing to learn
            self._last_burst_end = None

    def _burst_base_need(self, tick: _Tick) -> int:
        """Slots the background under the current burst needs."""
        return self._slots_for(self._burst_base * tick.service / tick.per_slot)

    # -- step 3: demand --------------------------------------------------------------------------
    def _demand_slots(self, tick: _Tick) -> Tuple[int, bool]:
        """Slots for the demand (events in service at once, per slot's target concurrency), and
        whether the load is rising. The forecast extrapolates the fast rate's trend over the
        horizon ``h``. The demand is the slow one, ``max(rate_slow x S, busy + waiting averaged
        over tau_slow)``, unless the fast one (``max(forecast x S, busy averaged over
        tau_fast)``) has been above ``noise_band`` (1.5) times it for ``rise_s`` (0.5 s): a rise;
        or below 1/``noise_band`` of it: a clear fall. So Poisson noise does not move the pool,
        and a jump shorter than ``rise_s`` is a burst. Slots = ``ceil(d + beta x sqrt(d))`` for
        demand ``d``: square-root staffing keeps the chance of waiting low without a fixed
        margin at every size."""
        obs = tick.obs
        # A young burst is served by the slots warmed for it (and the backlog rule), not by
        # extrapolating its first half second: a short burst is over before slots started for
        # it are warm, and they would only turn waits into cold starts. It stops being young
        # after young_warmups warm-ups (at least 1 s: the 0.5 s window has then emptied of an
        # ended burst's arrivals) while its arrivals go on.
        short_burst = self._in_burst and (
            obs.t - self._burst_start < self.young_s(tick.warmup) or tick.short_need < tick.onset
        )

        self.forecast = max(0.0, self.rate_fast + max(0.0, self.trend) * self.horizon)
        slow_demand = max(self.rate_slow * tick.service, self.conc_slow)
        # The fast view counts running events, not waiting ones: a queue is the backlog rule's
        # (its events are served by slots within a warm-up, not by slots sized to keep it).
        fast_demand = max(self.forecast * tick.service, self.busy_fast)
        # A rise counts once it has lasted a warm-up (at least rise_s): a jump that ends sooner
        # is a burst, for the burst logic and the backlog rule, not a trend to extrapolate.
        if fast_demand > self.noise_band * slow_demand + 0.5:
            if self._rise_since is None:
                self._rise_since = obs.t
        else:
            self._rise_since = None
        rising = not short_burst and self._rise_since is not None and obs.t - self._rise_since >= self.rise_s
        if rising:
            demand = fast_demand
        elif fast_demand * self.noise_band < slow_demand:
            demand = fast_demand  # the load has clearly fallen: the hold window is the hysteresis
        else:
            demand = slow_demand
        return self._slots_for(demand / tick.per_slot), rising

    # -- step 4: young bursts and queues ---------------------------------------------------------
    def _is_young(self, tick: _Tick) -> bool:
        """Whether the target must not be raised from averages a burst's queue inflates.

        A burst is young while its arrivals have gone on for less than ``young_warmups`` (1)
        warm-ups (at least 1 s), or once they are back at the background and what is left is
        its queue; a surprising half second not yet known as a burst (the service time may not
        be measured yet) counts too. It is served by the slots there are, those learned from
        earlier bursts, and the backlog rule: slots started for a short burst are warm when
        most of it has arrived, and the events they take are cold starts."""
        if self._in_burst:
            back = tick.short_need < self._burst_base_need(tick) + 1
            return back or tick.obs.t - self._burst_start < self.young_s(tick.warmup)
        return tick.surprising

    def _backlog_slots(self, tick: _Tick, need: int, young: bool) -> int:
        """The backlog rule: a queue adds slots only if it would outlast ``backlog_factor`` (1.5)
        warm-ups on the warm slots (a shorter one is served sooner by a busy slot than by a slot
        still warming, and would only turn waits into cold starts); then enough to clear it
        within a warm-up and keep up with the last half second's arrivals. In a young burst the
        queue may last up to ``burst_patience`` seconds (1.5; or ``backlog_factor`` warm-ups if
        longer) before slots are added: slots started now would be warm when most of it has
        arrived, and the events they take would be cold starts."""
        obs = tick.obs
        if obs.waiting > 0 and tick.service > 0:
            drain = obs.waiting * tick.service / max(1, obs.warm * tick.per_slot)
            if young:
                bound = max(self.burst_patience, self.backlog_factor * tick.warmup)
            else:
                bound = self.backlog_factor * tick.warmup
            if drain > bound:
                # Enough slots to clear the queue within a warm-up and keep up with arrivals.
                backlog = obs.waiting * tick.service / max(tick.warmup, tick.service) + tick.rate_short * tick.service
                need = max(need, math.ceil(backlog / tick.per_slot - 1e-9))
        return need

    # -- step 5: the learned pattern -------------------------------------------------------------
    def _follow_pattern(self, tick: _Tick, need: int, rising: bool) -> Tuple[int, str, float]:
        """``(need, phase, hold window)`` given the bursts learned so far (after Shahrad et al.).

        In a burst, at least the largest of the last three bursts. The idle gaps between bursts
        go into a histogram; once ``min_history`` (4) are known and their 5th percentile is at
        least ``min_gap_ratio`` (0.5) of their median, the pattern is trusted (``pattern()``):
        the pool is released after a burst to what the background needs (phase ``gap``, with a
        hold of ``burst_end_s`` only), and warmed to the largest of the last three bursts ``h +
        prewarm_margin`` seconds before 90 % of the 5th-percentile gap has passed (phase
        ``prewarm``), until the burst comes or 110 % of the 99th-percentile gap has passed (the
        paper's 10 % margins). With bursts seen but no trusted pattern, a
        burst's slots are kept for ``keep_alive`` (60 s) after it (phase ``hold``, the paper's
        fixed keep-alive fallback); otherwise the policy is reactive."""
        obs = tick.obs
        pattern = self.pattern()
        hold = self.scale_down_after
        phase = "rising" if rising else ("idle" if self.rate_slow < 0.05 and tick.conc == 0 else "steady")
        if self._in_burst:
            phase = "burst"
            if self.peaks:
                need = max(need, max(self.peaks))
        elif pattern is not None and self._last_burst_end is not None:
            p5, p99 = pattern
            since = obs.t - self._last_burst_end
            lead = self.horizon + self.prewarm_margin
            if p5 - lead <= since <= p99 + lead:  # p5 and p99 carry a 10 % margin
                need = max(need, max(self.peaks))
                phase = "prewarm"
            elif since < p5 - lead:
                # An expected idle gap: release down to what the background needs, now.
                need = min(need, max(tick.conc, self._slots_for(self.rate_bg * tick.service / tick.per_slot)))
                hold = min(hold, self.burst_end_s)
                phase = "gap"
        elif self.peaks and self._last_burst_end is not None and obs.t - self._last_burst_end < self.keep_alive:
            # A burst was seen but its recurrence is not known yet: keep its slots for a
            # keep-alive (Shahrad et al.'s fallback to a fixed keep-alive window).
            need = max(need, max(self.peaks))
            phase = "hold"
        return need, phase, hold

    # -- step 6: CPU-bound pipelines -------------------------------------------------------------
    def _cap_for_cpu(self, tick: _Tick, need: int) -> int:
        """The GIL runs one thread's Python at a time, so about ``1 / phi`` slots can overlap
        usefully (``phi`` from the CPU time the slot loop measures: the slot thread's CPU clock
        around each batch, or the worker process's user + system time); and when the runs
        already use ``cpu_saturation`` (90 %) of a core, the target is not raised above the warm
        slots."""
        if self.cpu_share is not None and self.cpu_share > 0:
            need = min(need, max(1, round(1.0 / self.cpu_share)))
        if self.cpu_load >= self.cpu_saturation:
            need = min(need, max(tick.obs.warm, self.min_slots))
        return need

    # -- step 7: scale-down hysteresis -----------------------------------------------------------
    def _hold_for_scale_down(self, tick: _Tick, need: int, phase: str, hold: float) -> int:
        """The target is the largest sizing of the last ``hold`` seconds (``scale_down_after``,
        10 s; ``burst_end_s`` in an expected gap), so the pool shrinks only after quiet (phase
        ``cooling`` meanwhile)."""
        t = tick.obs.t
        need = _clamp(need, self.min_slots, self.max_slots)
        # Rolling maximum over the hold window: a deque of decreasing sizes.
        while self._sizes and self._sizes[-1][1] <= need:
            self._sizes.pop()
        self._sizes.append((t, need))
        while self._sizes[0][0] < t - hold:
            self._sizes.popleft()
        target = self._sizes[0][1]
        if phase in ("steady", "idle") and target > need:
            phase = "cooling"
        self.phase = phase
        self.target = _clamp(target, self.min_slots, self.max_slots)
        return self.target

    def snapshot(self) -> dict:
        pattern = self.pattern()
        return {
            "policy": self.name,
            "phase": self.phase,
            "forecast_rps": round(self.forecast, 3),
            "target_slots": self.target,
            "rate_rps": round(self.rate_fast, 3),
            "service_s": self.service,
            "cpu_share": self.cpu_share,
            "horizon_s": round(self.horizon, 3),
            "pattern": None
            if pattern is None
            else {"gap_p5_s": round(pattern[0], 3), "gap_p99_s": round(pattern[1], 3), "burst_slots": max(self.peaks)},
        }


_OPTIONS: Dict[str, Tuple[str, ...]] = {
    "static": (),
    "reactive": (
        "stable_window",
        "panic_window_pct",
        "panic_threshold_pct",
        "target_utilization",
        "max_scale_up_rate",
        "max_scale_down_rate",
        "tick_interval",
    ),
    "predictive": (
        "beta",
        "tau_fast",
        "tau_slow",
        "tau_trend",
        "noise_band",
        "scale_down_after",
        "burst_slots",
        "burst_end_s",
        "min_history",
        "keep_alive",
        "max_burst_s",
        "backlog_factor",
        "rise_s",
        "min_gap_ratio",
        "prewarm_margin",
        "cpu_saturation",
        "burst_patience",
        "young_warmups",
    ),
}


def check_options(scaling: str, options: Optional[Mapping[str, Any]], where: str = "") -> Dict[str, Any]:
    """Validates ``scaling`` and its options; raises ValueError naming the bad one."""
    prefix = f"{where}: " if where else ""
    if scaling not in SCALINGS:
        raise ValueError(f"{prefix}scaling must be one of {', '.join(SCALINGS)}; got {scaling!r}")
    opts = dict(options or {})
    allowed = _OPTIONS[scaling]
    for key, value in opts.items():
        if key not in allowed:
            known = ", ".join(allowed) if allowed else "none"
            raise ValueError(f"{prefix}unknown scaling option {key!r} for scaling={scaling!r} (known: {known})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{prefix}scaling option {key!r} must be a non-negative number, got {value!r}")
    if scaling == "reactive":
        for key in ("stable_window", "target_utilization", "max_scale_up_rate", "max_scale_down_rate"):
            if key in opts and opts[key] <= 0:
                raise ValueError(f"{prefix}scaling option {key!r} must be positive, got {opts[key]!r}")
        if opts.get("target_utilization", 0.7) > 1:
            raise ValueError(f"{prefix}scaling option 'target_utilization' must be at most 1")
    return opts


def make_policy(
    scaling: str,
    min_slots: int,
    max_slots: int,
    options: Optional[Mapping[str, Any]] = None,
) -> Policy:
    """The policy object for one pipeline. ``options`` may also carry ``concurrency`` (events
    one slot runs at once), which sets the per-slot target concurrency."""
    opts = dict(options or {})
    concurrency = int(opts.pop("concurrency", 1))
    opts = check_options(scaling, opts)
    if scaling == "static":
        return StaticPolicy(min_slots, max_slots)
    if scaling == "reactive":
        return KpaPolicy(min_slots, max_slots, concurrency=concurrency, **opts)
    if "min_history" in opts:
        opts["min_history"] = int(opts["min_history"])
    return PredictivePolicy(min_slots, max_slots, concurrency=concurrency, **opts)
