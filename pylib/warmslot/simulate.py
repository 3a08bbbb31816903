"""``warmslot simulate``: replays arrival traces against a model of one pipeline's pool and
scores the scaling policies on it, no server needed.

The model (``PoolModel``): slots take ``warmup_s`` (±10 %) to warm; a run takes a lognormal
service time (mean ``service_s``, coefficient of variation ``service_cv``); one slot runs
``concurrency`` events at once; the pool holds ``min_slots``..``max_slots`` slots and starts
with ``min_slots`` warm. Every ``tick`` seconds (50 ms, as live) the policy gets an
``Observation`` and returns a target; the pool starts slots up to it, and retires idle warm
slots (newest first) down to it (warming slots finish warming). Waiting events are FIFO and go
to the free warm slot that has been warm longest.

Scores, per trace and policy:

- ``cold_start_rate``: events that waited for a warm-up (the slot that ran them finished warming
  after they arrived) / events;
- ``idle_slot_seconds``: the time integral of warm slots running nothing;
- ``p50_wait_ms``, ``p99_wait_ms``: arrival to start of the run.
"""

from __future__ import annotations

import csv
import heapq
import math
import os
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .policies import Observation, Policy, make_policy

POLICIES = ("static", "reactive", "predictive")


@dataclass
class PoolModel:
    """One pipeline's pool, as the simulator models it."""

    warmup_s: float = 1.0
    service_s: float = 0.2
    service_cv: float = 0.5
    min_slots: int = 1
    max_slots: int = 32
    concurrency: int = 1
    cpu_share: float = 0.05  # CPU time / wall time of a run (I/O-bound bots wait on the network)
    tick: float = 0.05


@dataclass
class Trace:
    name: str
    arrivals: List[float]  # seconds, sorted
    duration: float


# -- built-in traces ------------------------------------------------------------------------------
def _poisson(rng: random.Random, rate: Callable[[float], float], peak: float, start: float, end: float) -> List[float]:
    """A non-homogeneous Poisson process by thinning (Lewis and Shedler)."""
    out: List[float] = []
    t = start
    if peak <= 0:
        return out
    while True:
        t += rng.expovariate(peak)
        if t >= end:
            return out
        if rng.random() * peak <= rate(t):
            out.append(t)


def trace_poisson(rng: random.Random) -> Trace:
    """Steady Poisson arrivals, 10 req/s for 300 s."""
    return Trace("poisson", _poisson(rng, lambda t: 10.0, 10.0, 0.0, 300.0), 300.0)


def trace_diurnal(rng: random.Random) -> Trace:
    """A day compressed into 300 s, twice: 2 req/s at night, 30 req/s at noon."""
    rate = lambda t: 2.0 + 14.0 * (1.0 - math.cos(2 * math.pi * t / 300.0))  # noqa: E731
    return Trace("diurnal", _poisson(rng, rate, 30.0, 0.0, 600.0), 600.0)


def trace_bursts(rng: random.Random) -> Trace:
    """Cron-driven: every 30 s, 60 events within 2 s, over a background of 0.5 req/s."""
    arrivals = _poisson(rng, lambda t: 0.5, 0.5, 0.0, 600.0)
    for start in range(20, 600, 30):
        arrivals += [start + 2.0 * rng.random() for _ in range(60)]
    return Trace("bursts", sorted(arrivals), 600.0)


def trace_flash(rng: random.Random) -> Trace:
    """A flash crowd: 3 req/s, then 40 req/s within 15 s, held a minute, gone within 30 s."""

    def rate(t: float) -> float:
        if t < 120:
            return 3.0
        if t < 135:
            return 3.0 + 37.0 * (t - 120) / 15.0
        if t < 195:
            return 40.0
        if t < 225:
            return 40.0 - 37.0 * (t - 195) / 30.0
        return 3.0

    return Trace("flash", _poisson(rng, rate, 40.0, 0.0, 360.0), 360.0)


def trace_onoff(rng: random.Random) -> Trace:
    """On/off: 15 s at 15 req/s, then silence for 40-50 s (random), repeated."""
    arrivals: List[float] = []
    t = 10.0
    while t < 600.0:
        end = min(600.0, t + 15.0)
        arrivals += _poisson(rng, lambda _t: 15.0, 15.0, t, end)
        t = end + rng.uniform(40.0, 50.0)
    return Trace("onoff", arrivals, 600.0)


BUILTIN: Dict[str, Callable[[random.Random], Trace]] = {
    "poisson": trace_poisson,
    "diurnal": trace_diurnal,
    "bursts": trace_bursts,
    "flash": trace_flash,
    "onoff": trace_onoff,
}


def load_csv(path: str, rng: random.Random) -> Trace:
    """A CSV of arrival timestamps (first column, seconds; a header row is skipped), or of
    per-minute counts in the Azure Functions 2019 trace's format (``HashOwner, HashApp,
    HashFunction, Trigger, 1, 2, ..., 1440``): the rows are summed and each minute's events
    spread uniformly at random over that minute."""
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path}: no rows")
    header = [c.strip() for c in rows[0]]
    name = os.path.splitext(os.path.basename(path))[0]
    if "1" in header and ("HashFunction" in header or "Trigger" in header or header[-1].isdigit()):
        first = header.index("1")
        counts = [0] * (len(header) - first)
        for r in rows[1:]:
            for i, c in enumerate(r[first : first + len(counts)]):
                try:
                    counts[i] += int(float(c))
                except ValueError:
                    raise ValueError(f"{path}: per-minute count {c!r} is not a number") from None
        arrivals = sorted(60.0 * m + 60.0 * rng.random() for m, n in enumerate(counts) for _ in range(n))
        return Trace(name, arrivals, 60.0 * len(counts))
    times: List[float] = []
    for i, r in enumerate(rows):
        try:
            times.append(float(r[0]))
        except ValueError:
            if i == 0:
                continue  # a header
            raise ValueError(f"{path}: line {i + 1}: {r[0]!r} is not a timestamp in seconds") from None
    if not times:
        raise ValueError(f"{path}: no timestamps")
    times.sort()
    t0 = times[0]
    arrivals = [t - t0 for t in times]
    return Trace(name, arrivals, arrivals[-1] + 1.0)


def get_trace(spec: str, seed: int) -> Trace:
    rng = random.Random(f"{seed}:{spec}")
    if spec in BUILTIN:
        return BUILTIN[spec](rng)
    if os.path.exists(spec):
        return load_csv(spec, rng)
    raise ValueError(f"unknown trace {spec!r}: name a built-in one ({', '.join(BUILTIN)}) or a CSV file")


# -- the pool -------------------------------------------------------------------------------------
class _Slot:
    __slots__ = ("warm_at", "running", "retired")

    def __init__(self, warm_at: float) -> None:
        self.warm_at = warm_at
        self.running = 0
        self.retired = False


@dataclass
class Result:
    events: int = 0
    cold_starts: int = 0
    idle_slot_seconds: float = 0.0
    waits: List[float] = field(default_factory=list)
    series: Dict[str, List[float]] = field(default_factory=dict)

    def scores(self) -> Dict[str, Any]:
        return {
            "events": self.events,
            "cold_starts": self.cold_starts,
            "cold_start_rate": round(self.cold_starts / self.events, 5) if self.events else 0.0,
            "idle_slot_seconds": round(self.idle_slot_seconds, 1),
            "p50_wait_ms": round(1000 * _quantile(self.waits, 0.50), 2),
            "p99_wait_ms": round(1000 * _quantile(self.waits, 0.99), 2),
        }


def _quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(math.ceil(q * len(s))) - 1 if q > 0 else 0)]


ARRIVE, DONE, WARM, TICK = 2, 0, 1, 3  # at equal times: finish runs, then warm slots, then arrivals


def run(trace: Trace, policy: Policy, model: PoolModel, seed: int = 0) -> Result:
    """Replays ``trace`` against the pool, asking ``policy`` for a target every tick."""
    rng = random.Random(f"{seed}:{trace.name}:service")
    sigma = math.sqrt(math.log(1 + model.service_cv**2))
    mu = math.log(model.service_s) - sigma**2 / 2
    res = Result(series={"t": [], "arrivals": [], "forecast": [], "target": [], "warm": []})

    slots: List[_Slot] = [_Slot(-model.warmup_s) for _ in range(model.min_slots)]
    warming = 0
    queue: List[float] = []  # arrival times, FIFO
    qhead = 0
    heap: List[Tuple[float, int, int, Any]] = []
    seq = 0
    for a in trace.arrivals:
        heap.append((a, ARRIVE, seq, None))
        seq += 1
    heapq.heapify(heap)
    heapq.heappush(heap, (0.0, TICK, seq, None))
    seq += 1
    arrivals = ran = run_us = cold = busy = 0
    warmup_ewma = model.warmup_s  # the initial slots warmed before t=0
    now = 0.0
    idle_warm = model.min_slots  # warm slots running nothing
    bucket_arrivals = 0
    next_sample = 1.0

    def dispatch(t: float) -> None:
        nonlocal qhead, busy, cold, idle_warm, seq
        while qhead < len(queue):
            best = None
            for s in slots:
                if not s.retired and s.warm_at <= t and s.running < model.concurrency:
                    if best is None or s.warm_at < best.warm_at:
                        best = s
            if best is None:
                return
            arrived = queue[qhead]
            qhead += 1
            if best.warm_at > arrived:
                cold += 1
            res.waits.append(t - arrived)
            if best.running == 0:
                idle_warm -= 1
            best.running += 1
            busy += 1
            service = rng.lognormvariate(mu, sigma)
            heapq.heappush(heap, (t + service, DONE, seq, (best, service)))
            seq += 1
        if qhead > 4096:
            del queue[:qhead]
            qhead = 0

    while heap:
        t, kind, _, data = heapq.heappop(heap)
        if t > trace.duration and kind == TICK:
            continue
        res.idle_slot_seconds += idle_warm * (t - now)
        now = t
        if kind == ARRIVE:
            arrivals += 1
            bucket_arrivals += 1
            queue.append(t)
            dispatch(t)
        elif kind == DONE:
            slot, service = data
            slot.running -= 1
            busy -= 1
            ran += 1
            run_us += int(service * 1e6)
            if slot.running == 0:
                idle_warm += 1
            dispatch(t)
        elif kind == WARM:
            slot, took = data
            warming -= 1
            warmup_ewma = 0.7 * warmup_ewma + 0.3 * took
            idle_warm += 1
            dispatch(t)
        else:
            live = [s for s in slots if not s.retired]
            warm = sum(1 for s in live if s.warm_at <= t)
            obs = Observation(
                t=t,
                arrivals=arrivals,
                waiting=len(queue) - qhead,
                busy=busy,
                warm=warm,
                starting=warming,
                ran=ran,
                run_us=run_us,
                cpu_us=int(run_us * model.cpu_share),
                warmup_s=warmup_ewma,
                cold_starts=cold,
                concurrency=model.concurrency,
            )
            target = max(model.min_slots, min(model.max_slots, policy.decide(obs)))
            started = warm + warming
            if target > started:
                for _ in range(target - started):
                    took = model.warmup_s * rng.uniform(0.9, 1.1)
                    s = _Slot(t + took)
                    slots.append(s)
                    warming += 1
                    heapq.heappush(heap, (t + took, WARM, seq, (s, took)))
                    seq += 1
            elif target < started:
                idle = sorted((s for s in live if s.warm_at <= t and s.running == 0), key=lambda s: -s.warm_at)
                for s in idle[: started - target]:
                    s.retired = True
                    idle_warm -= 1
                slots[:] = [s for s in slots if not s.retired]
            if t >= next_sample:
                snap = policy.snapshot()
                res.series["t"].append(t)
                res.series["arrivals"].append(bucket_arrivals / (t - next_sample + 1.0))
                res.series["forecast"].append(float(snap.get("forecast_rps") or 0.0))
                res.series["target"].append(target)
                res.series["warm"].append(warm)
                bucket_arrivals = 0
                next_sample = t + 1.0
            heapq.heappush(heap, (t + model.tick, TICK, seq, None))
            seq += 1
    res.events = len(res.waits)
    res.cold_starts = cold
    return res


# -- the command ----------------------------------------------------------------------------------
def simulate(
    traces: Sequence[str],
    policies: Sequence[str] = POLICIES,
    seed: int = 0,
    model: Optional[PoolModel] = None,
    options: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> Tuple[Dict[str, Any], Dict[str, Dict[str, Result]]]:
    """Runs every policy over every trace. Returns the report (``traces`` and ``overall``
    scores per policy, and the model) and the raw results for plotting."""
    model = model or PoolModel()
    report: Dict[str, Any] = {"model": asdict(model), "seed": seed, "traces": {}, "overall": {}}
    results: Dict[str, Dict[str, Result]] = {}
    totals = {p: Result() for p in policies}
    for spec in traces:
        trace = get_trace(spec, seed)
        results[trace.name] = {}
        report["traces"][trace.name] = {}
        for p in policies:
            opts = dict((options or {}).get(p, {}))
            opts["concurrency"] = model.concurrency
            policy = make_policy(p, model.min_slots, model.max_slots, opts)
            r = run(trace, policy, model, seed)
            results[trace.name][p] = r
            report["traces"][trace.name][p] = r.scores()
            tot = totals[p]
            tot.events += r.events
            tot.cold_starts += r.cold_starts
            tot.idle_slot_seconds += r.idle_slot_seconds
            tot.waits.extend(r.waits)
    report["overall"] = {p: totals[p].scores() for p in policies}
    return report, results


def plot(results: Dict[str, Dict[str, Result]], path: str) -> None:
    """Arrivals, forecast, target and warm slots over time: one row per trace, one column per
    policy. Needs matplotlib (``pip install 'warmslot[plot]'``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    policies = list(next(iter(results.values()))) if results else []
    fig, axes = plt.subplots(
        len(names), len(policies), figsize=(5 * len(policies), 2.6 * len(names)), squeeze=False, sharex="row"
    )
    for i, name in enumerate(names):
        for j, p in enumerate(policies):
            ax = axes[i][j]
            s = results[name][p].series
            ax.plot(s["t"], s["arrivals"], color="0.75", lw=0.8, label="arrivals/s")
            ax.plot(s["t"], s["forecast"], color="tab:orange", lw=0.8, label="forecast/s")
            ax.set_ylabel("req/s", fontsize=8)
            ax2 = ax.twinx()
            ax2.step(s["t"], s["target"], where="post", color="tab:blue", lw=0.9, label="target slots")
            ax2.step(s["t"], s["warm"], where="post", color="tab:green", lw=0.9, label="warm slots")
            ax2.set_ylabel("slots", fontsize=8)
            sc = results[name][p].scores()
            title = f"{name} / {p}: cold {100 * sc['cold_start_rate']:.1f}%, idle {sc['idle_slot_seconds']:.0f} slot-s"
            ax.set_title(title, fontsize=9)
            if i == 0 and j == 0:
                lines = ax.get_lines() + ax2.get_lines()
                ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def format_table(report: Dict[str, Any]) -> str:
    head = f"{'trace':<10} {'policy':<11} {'events':>7} {'cold %':>7} {'idle slot-s':>12} {'p50 ms':>8} {'p99 ms':>8}"
    lines = [head]
    rows = [(name, per) for name, per in report["traces"].items()] + [("overall", report["overall"])]
    for name, per in rows:
        for p, sc in per.items():
            lines.append(
                f"{name:<10} {p:<11} {sc['events']:>7} {100 * sc['cold_start_rate']:>7.2f} "
                f"{sc['idle_slot_seconds']:>12.1f} {sc['p50_wait_ms']:>8.1f} {sc['p99_wait_ms']:>8.1f}"
            )
    return "\n".join(lines)


def static_note(report: Dict[str, Any], results: Dict[str, Dict[str, Result]], model: PoolModel) -> Optional[str]:
    """A note for under the table when the static policy's waits are queueing rather than cold
    starts: its p99 wait on some trace is above 10 warm-ups (and 1 s). Static keeps
    ``min_slots`` warm and never grows, so traffic above what they run waits in the queue; the
    note says how many slots the busiest second of the traces would keep busy. None otherwise."""
    limit_ms = 1000.0 * max(1.0, 10 * model.warmup_s)
    traces = report["traces"].items()
    slow = [name for name, per in traces if "static" in per and per["static"]["p99_wait_ms"] > limit_ms]
    if not slow:
        return None
    peak = max(max(r["static"].series["arrivals"], default=0.0) for r in results.values() if "static" in r)
    per_slot = model.concurrency / model.service_s
    needed = max(model.min_slots + 1, math.ceil(peak / per_slot))
    n = model.min_slots
    pool = "1 slot warm and never grows; that slot runs" if n == 1 else f"{n} slots warm and never grows; they run"
    return (
        f"note: the static policy keeps --min-slots {pool} about {n * per_slot:g} events/s (--service "
        f"{model.service_s:g} s, --concurrency {model.concurrency}), and the busiest second of these traces brings "
        f"{peak:.0f}, so events queue: static's waits on {', '.join(slow)} are queueing, not cold starts. "
        f"Try --min-slots {needed}, about what that second keeps busy."
    )
