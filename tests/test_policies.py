"""Scaling policies, fed Observations directly or through the simulator (deterministic, no server)."""

from __future__ import annotations

import math
import random
from typing import List, Tuple

import pytest
import warmslot
from warmslot.policies import KpaPolicy, Observation, PredictivePolicy, StaticPolicy, make_policy
from warmslot.simulate import PoolModel, Trace, run

TICK = 0.05


class Counters:
    """Cumulative counters of one pipeline, advanced tick by tick."""

    def __init__(self) -> None:
        self.t = 0.0
        self.arrivals = 0
        self.ran = 0
        self.run_us = 0
        self.cpu_us = 0

    def tick(
        self,
        arrivals: int = 0,
        ran: int = 0,
        service: float = 0.1,
        cpu_share: float = 0.05,
        *,
        waiting: int = 0,
        busy: int = 0,
        warm: int = 1,
        warmup: float = 0.5,
    ) -> Observation:
        self.t += TICK
        self.arrivals += arrivals
        self.ran += ran
        self.run_us += int(ran * service * 1e6)
        self.cpu_us += int(ran * service * cpu_share * 1e6)
        return Observation(
            t=self.t,
            arrivals=self.arrivals,
            waiting=waiting,
            busy=busy,
            warm=warm,
            starting=0,
            ran=self.ran,
            run_us=self.run_us,
            cpu_us=self.cpu_us,
            warmup_s=warmup,
            cold_starts=0,
        )


class Recording:
    """A real policy, with every (observation, target) it saw kept for the test to read."""

    def __init__(self, policy) -> None:
        self.policy = policy
        self.name = policy.name
        self.log: List[Tuple[Observation, int]] = []

    def decide(self, obs: Observation) -> int:
        target = self.policy.decide(obs)
        self.log.append((obs, target))
        return target

    def snapshot(self) -> dict:
        return self.policy.snapshot()


def poisson(rate: float, duration: float, seed: int = 1) -> List[float]:
    rng = random.Random(seed)
    out, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            return out
        out.append(t)


# -- static ----------------------------------------------------------------------------------------
def test_static_keeps_min_slots_whatever_the_load():
    pol = StaticPolicy(2, 8)
    c = Counters()
    for _ in range(100):
        assert pol.decide(c.tick(arrivals=50, waiting=200, busy=2, warm=2)) == 2
    assert pol.snapshot()["policy"] == "static" and pol.snapshot()["target_slots"] == 2


# -- predictive ------------------------------------------------------------------------------------
def test_poisson_noise_does_not_run_the_pool_to_max_slots():
    # 10 req/s x 0.2 s = 2 events in service on average; noise must not buy 32 slots.
    rec = Recording(make_policy("predictive", 1, 32))
    res = run(Trace("noise", poisson(10.0, 240.0), 240.0), rec, PoolModel(max_slots=32), seed=3)
    targets = [t for o, t in rec.log if o.t > 20]
    assert max(targets) <= 8, max(targets)
    assert sum(targets) / len(targets) <= 5.5
    assert res.cold_starts / res.events < 0.01


def test_a_ramp_is_anticipated_the_target_rises_before_queueing_starts():
    # Evenly spaced arrivals ramping 1 -> 40 req/s over 40 s, fixed 0.2 s service: events queue
    # only once rate x service exceeds the slots there are.
    arrivals, t = [], 0.0
    while t < 60.0:
        rate = 1.0 + 39.0 * min(1.0, t / 40.0)
        t += 1.0 / rate
        arrivals.append(t)
    rec = Recording(make_policy("predictive", 1, 32))
    model = PoolModel(warmup_s=1.0, service_s=0.2, service_cv=0.0, max_slots=32)
    res = run(Trace("ramp", arrivals, 60.0), rec, model, seed=0)
    first_growth = next(o.t for o, target in rec.log if target > 1)
    first_queue = next((o.t for o, _ in rec.log if o.waiting > 0), math.inf)
    assert first_growth < first_queue, (first_growth, first_queue)
    # The pool keeps ahead all the way up: (almost) nobody waits for a warm-up.
    assert res.cold_starts <= 0.01 * res.events, res.cold_starts
    assert max(target for _, target in rec.log) >= 8  # 40 req/s x 0.2 s needs 8 busy slots


def test_the_target_shrinks_to_min_slots_after_quiet_with_hysteresis():
    arrivals = [i / 20.0 for i in range(20 * 60)]  # 20 req/s for 60 s, then nothing for 60 s
    rec = Recording(make_policy("predictive", 1, 32))
    run(Trace("then-quiet", arrivals, 120.0), rec, PoolModel(service_s=0.2), seed=0)
    assert min(t for o, t in rec.log if 30 < o.t < 60) >= 4  # 20 req/s x 0.2 s
    busy_target = [t for o, t in rec.log if o.t < 60.0][-1]
    after = [(o.t, t) for o, t in rec.log if o.t >= 60.0]
    # Hysteresis: not released the moment traffic stops...
    assert all(t >= busy_target - 1 for ts, t in after if ts < 62.0)
    # ...but back to min_slots after a quiet period, and it stays there.
    back = next(ts for ts, t in after if t == 1)
    assert back < 60.0 + 20.0, back
    assert all(t == 1 for ts, t in after if ts >= back)


def test_cpu_bound_pipelines_do_not_grow_io_bound_ones_do():
    def drive(cpu_share: float) -> int:
        pol = PredictivePolicy(1, 16)
        c = Counters()
        target = 1
        for _ in range(200):  # 10 s: 40 req/s arriving, 20/s served by the one slot, a queue
            target = pol.decide(
                c.tick(arrivals=2, ran=1, service=0.05, cpu_share=cpu_share, waiting=30, busy=1, warm=1, warmup=0.2)
            )
        return target

    assert drive(0.97) == 1, "the runs use the CPU: a second thread only waits for the GIL"
    assert drive(0.05) >= 3, "an I/O-bound pipeline with a queue grows"


def test_a_saturated_interpreter_holds_the_pool():
    # CPU-bound runs on 4 threads contend for the GIL: 10 ms of CPU take 40 ms of wall time
    # (CPU share 25 %) and the runs use a whole core. A queue builds; more slots cannot help.
    pol = PredictivePolicy(1, 16)
    c = Counters()
    for _ in range(200):
        target = pol.decide(
            c.tick(arrivals=6, ran=5, service=0.04, cpu_share=0.25, waiting=30, busy=4, warm=4, warmup=0.2)
        )
    assert pol.cpu_load > 0.9
    assert target == 4
    # The same queue with the core mostly idle (I/O waits): the pool grows.
    io = PredictivePolicy(1, 16)
    c = Counters()
    for _ in range(200):
        target = io.decide(
            c.tick(arrivals=6, ran=5, service=0.04, cpu_share=0.02, waiting=30, busy=4, warm=4, warmup=0.2)
        )
    assert target > 4


def test_recurring_bursts_are_learned_prewarmed_and_released_between():
    # Every 20 s, 40 events within 1 s; 1 s warm-up, 0.2 s service.
    rng = random.Random(4)
    arrivals = sorted(s + rng.random() for s in range(10, 400, 20) for _ in range(40))
    rec = Recording(make_policy("predictive", 1, 32))
    res = run(Trace("cron", arrivals, 400.0), rec, PoolModel(warmup_s=1.0, service_s=0.2), seed=0)
    pol = rec.policy
    assert pol.pattern() is not None, list(pol.gaps)
    late_cold = 0
    last_cold = 0
    for o, _ in rec.log:
        if o.t > 200 and o.cold_starts > last_cold:
            late_cold += o.cold_starts - last_cold
        last_cold = o.cold_starts
    assert late_cold == 0, "once the pattern is learned, bursts land on warm slots"
    # Released between bursts: in the middle of a gap the pool is back near its minimum.
    mid_gap = [t for o, t in rec.log if o.t > 200 and 8.0 < (o.t - 10) % 20 < 12.0]
    assert max(mid_gap) <= 2, max(mid_gap)
    # Warmed before the burst: just before each burst, the pool is at the burst's size (its 8
    # slot-seconds of work spread over the second it arrives in plus a 1 s warm-up: 4 or more).
    before = [o.warm for o, _ in rec.log if o.t > 200 and 19.8 < (o.t - 10) % 20 < 19.95]
    assert min(before) >= min(pol.peaks) >= 4, (before, list(pol.peaks))
    assert res.cold_starts > 0  # the first bursts, before the pattern was known, were cold


def test_unclear_patterns_fall_back_to_reactive():
    pol = PredictivePolicy(1, 32)
    for gap in (5.0, 40.0, 12.0, 90.0, 3.0):
        pol.gaps.append(gap)
    pol.peaks.append(6)
    assert pol.pattern() is None
    pol.gaps.clear()
    for gap in (20.0, 21.0, 19.5, 20.5):
        pol.gaps.append(gap)
    p5, p99 = pol.pattern()
    assert 0.9 * 19.5 - 0.01 <= p5 <= 0.9 * 20.0 and 1.1 * 20.5 <= p99 <= 1.1 * 21.0 + 0.01


def test_async_slots_size_by_their_concurrency():
    one = PredictivePolicy(1, 64)
    many = PredictivePolicy(1, 64, concurrency=8)
    c1, c8 = Counters(), Counters()
    for _ in range(400):  # 100 req/s x 0.2 s: 20 events in service
        a = one.decide(c1.tick(arrivals=5, ran=5, service=0.2, busy=20, warm=20))
        b = many.decide(c8.tick(arrivals=5, ran=5, service=0.2, busy=20, warm=3))
    assert 20 <= a <= 30
    assert 3 <= b <= 5


# -- Knative KPA -----------------------------------------------------------------------------------
class Kpa:
    """Drives a KpaPolicy with a given concurrency, the pool following the target at once."""

    def __init__(self, **kw) -> None:
        self.pol = KpaPolicy(1, 100, **kw)
        self.c = Counters()
        self.warm = 1
        self.log: List[Tuple[float, int, str]] = []

    def run(self, seconds: float, concurrency: int) -> None:
        for _ in range(int(round(seconds / TICK))):
            busy = min(concurrency, self.warm)
            obs = self.c.tick(busy=busy, waiting=concurrency - busy, warm=self.warm)
            target = self.pol.decide(obs)
            self.warm = target
            self.log.append((obs.t, target, self.pol.snapshot()["phase"]))


def test_kpa_stable_mode_targets_70_percent_utilisation():
    k = Kpa()
    k.run(120.0, 7)  # 7 events in flight, target 0.7 per slot -> 10 slots
    assert k.log[-1][1] == 10
    assert k.log[-1][2] == "stable"


def test_kpa_decides_every_2_seconds_and_holds_in_between():
    k = Kpa()
    k.run(10.0, 0)
    k.run(10.0, 7)
    changes = [t for (t, a, _), (_, b, _) in zip(k.log, k.log[1:]) if a != b]
    assert changes
    decisions = sorted({round(t % 2.0, 2) for t in changes})
    assert len(decisions) == 1, changes


def test_kpa_panics_on_a_surge_and_never_scales_down_while_panicking():
    k = Kpa()
    k.run(70.0, 1)  # stable at ceil(1 / 0.7) = 2 slots
    assert k.log[-1][1:] == (2, "stable")
    start = k.c.t
    k.run(4.0, 20)  # 20 in flight: the 6 s panic average soon needs >= 2 x the ready slots
    panic_at = next(t for t, _, phase in k.log if t > start and phase == "panic")
    assert panic_at - start <= 2.0 + 1e-6
    # Max scale-up rate 1000x: straight to what the panic value needs, ceil(panic / 0.7).
    assert k.log[-1][1] == math.ceil(k.pol.panic / 0.7 - 1e-9) >= 15
    peak = k.log[-1][1]
    surge_end = k.c.t
    k.run(80.0, 0)
    panic = [(t, target) for t, target, phase in k.log if t > surge_end and phase == "panic"]
    # No scale-down while panicking, and panic lasts a stable window (60 s) past the last time
    # the panic threshold was crossed (at most one decision before the surge ended).
    targets = [peak] + [target for _, target in panic]
    assert all(b >= a for a, b in zip(targets, targets[1:])), targets
    peak = targets[-1]
    assert 58.0 <= panic[-1][0] - surge_end <= 62.0 + 1e-6, panic[-1][0] - surge_end
    # Un-panicked: scale down, at most halving per decision (max scale-down rate 2).
    after = [target for t, target, phase in k.log if phase == "stable" and t > panic[-1][0]]
    assert after[-1] < peak
    steps = [b for a, b in zip([peak] + after, after) if b != a]
    prev = peak
    for s in steps:
        assert s >= math.floor(prev / 2), (prev, s)
        prev = s


def test_kpa_starts_in_panic_when_more_than_one_slot_is_ready():
    pol = KpaPolicy(1, 10)
    c = Counters()
    # No load, but a restarted autoscaler must not scale 4 ready slots down before it has data.
    assert pol.decide(c.tick(warm=4)) == 4
    assert pol.snapshot()["phase"] == "panic"
    fresh = KpaPolicy(1, 10)
    fresh.decide(Counters().tick(warm=1))
    assert fresh.snapshot()["phase"] == "stable"


def test_kpa_uses_the_slots_concurrency_as_its_per_slot_target():
    k = Kpa(concurrency=10)
    k.run(120.0, 35)  # 35 / (10 x 0.7) = 5
    assert k.log[-1][1] == 5


# -- declaration -----------------------------------------------------------------------------------
def test_scaling_is_validated_at_declaration():
    app = warmslot.App()
    with pytest.raises(ValueError, match=r"pipeline 'a': scaling must be one of predictive, reactive, static"):
        app.pipeline("a", scaling="magic")(lambda e: e)
    with pytest.raises(ValueError, match=r"pipeline 'b': unknown scaling option 'window'.*stable_window"):
        app.pipeline("b", scaling="reactive", scaling_options={"window": 30})(lambda e: e)
    with pytest.raises(ValueError, match=r"'beta' must be a non-negative number"):
        app.pipeline("c", scaling_options={"beta": "x"})(lambda e: e)
    with pytest.raises(TypeError, match="scaling_options must be a dict"):
        app.pipeline("d", scaling_options=[("beta", 1)])(lambda e: e)
    app.pipeline("ok", scaling="reactive", scaling_options={"stable_window": 30})(lambda e: e)
    assert app.pipelines["ok"].scaling == "reactive"
    pol = make_policy("reactive", 1, 4, {"stable_window": 30})
    assert isinstance(pol, KpaPolicy) and pol.panic_window == pytest.approx(3.0)
