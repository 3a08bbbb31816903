"""The traffic-prediction state machine, fed synthetic counters (deterministic, no server)."""

from __future__ import annotations

import math

from warmslot.predictor import Sample, TrafficPredictor

TICK = 0.05


class Feed:
    """Turns an arrival-rate curve into the engine's cumulative counters."""

    def __init__(self, pred: TrafficPredictor, service: float) -> None:
        self.pred, self.service = pred, service
        self.t = 0.0
        self.arrivals = 0.0
        self.ran = 0
        self.run_us = 0

    def tick(self, rate: float, warm: int = 1, busy: int = 0, depth: int = 0, inflight: int = 0) -> int:
        self.t += TICK
        self.arrivals += rate * TICK
        done = int(rate * TICK)
        self.ran += done
        self.run_us += int(done * self.service * 1e6)
        return self.pred.observe(Sample(self.t, depth, inflight, warm, busy, int(self.arrivals), self.ran, self.run_us))


def test_steady_load_targets_littles_law_with_headroom():
    pred = TrafficPredictor(1, 32)
    feed = Feed(pred, service=0.02)
    for _ in range(60):
        target = feed.tick(200)
    assert pred.phase == "steady"
    assert abs(pred.rate - 200) < 25
    assert target == math.ceil(200 * 0.02 * 1.25)  # 4 events in service at once, plus 25 % headroom


def test_a_ramp_is_seen_rising_and_the_pool_leads_the_load():
    pred = TrafficPredictor(1, 64)
    feed = Feed(pred, service=0.02)
    for _ in range(20):
        feed.tick(50)
    phases = []
    lead = []
    for i in range(1, 41):  # 50 -> 850 req/s over 2 s
        rate = 50 + 20 * i
        target = feed.tick(rate)
        phases.append(pred.phase)
        lead.append((target, math.ceil(rate * 0.02)))
    assert phases.count("rising") > len(phases) / 2, phases
    # Once the trend is established, the target covers the load half a second (10 ticks) ahead.
    for i in range(10, 30):
        target = lead[i][0]
        needed_later = lead[i + 10][1]
        assert target >= needed_later, (i, lead[i], lead[i + 10])


def test_falling_load_cools_then_idles_and_the_target_follows():
    pred = TrafficPredictor(2, 32)
    feed = Feed(pred, service=0.05)
    for _ in range(40):
        feed.tick(400)
    high = pred.target
    seen = set()
    for i in range(30):
        feed.tick(max(0, 400 - 20 * i))
        seen.add(pred.phase)
    assert "cooling" in seen
    for _ in range(40):
        feed.tick(0)
    assert pred.phase == "idle"
    assert pred.target == 2 < high, "the target falls back to min_slots (the pool itself keeps its slots)"


def test_backlog_grows_only_when_slots_are_the_bottleneck():
    # I/O-bound: 4 warm slots all busy, events waiting, load fills the slots -> one more slot.
    io = TrafficPredictor(1, 16)
    feed = Feed(io, service=0.1)
    for _ in range(20):
        target = feed.tick(40, warm=4, busy=4, depth=10, inflight=14)
    assert io.phase == "spike"
    assert target >= 5
    # CPU-bound: events wait, but 4 slots are far from used by rate x service (the GIL is the
    # bottleneck, not the slot count): no growth beyond Little's law.
    cpu = TrafficPredictor(1, 16)
    feed = Feed(cpu, service=0.0001)
    for _ in range(20):
        target = feed.tick(8000, warm=4, busy=4, depth=50, inflight=54)
    assert cpu.phase == "spike"
    assert target == 1


def test_targets_stay_within_bounds():
    pred = TrafficPredictor(3, 5)
    feed = Feed(pred, service=1.0)
    assert all(3 <= feed.tick(1000) <= 5 for _ in range(20))
    assert pred.target == 5
