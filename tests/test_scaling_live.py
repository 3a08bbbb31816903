"""The scaling policies live, against a real server: recurring bursts on slots that take 300 ms to
warm (predictive vs Knative KPA), and a CPU-bound pipeline that must not grow past what one
interpreter can run."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from typing import Dict, List, Tuple

import pytest
import warmslot
from conftest import Client, concurrently

WARMUP_S = 0.3
SERVICE_S = 0.1
BURST_EVENTS = 12
BURST_SPREAD_S = 0.5
BURST_EVERY_S = 4.0
BURSTS = 10
SLOW_S = 1.0


def _app() -> warmslot.App:
    app = warmslot.App()

    def bot(scaling: str):
        class Bot:
            def __init__(self) -> None:
                time.sleep(WARMUP_S)  # a model loading: every slot pays it before taking traffic

            def __call__(self, event: dict, ctx: warmslot.Context) -> dict:
                time.sleep(SERVICE_S)  # waits on an API: I/O, the interpreter is free meanwhile
                return {"n": event["n"]}

        Bot.__name__ = scaling
        return Bot

    for scaling in ("predictive", "reactive"):
        app.pipeline(scaling, scaling=scaling, min_slots=1, max_slots=8, timeout=30.0)(bot(scaling))
    return app


def _post(port: int, pipeline: str, n: int, out: List[Tuple[int, float]], lock: threading.Lock) -> None:
    began = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", f"/hooks/{pipeline}", json.dumps({"n": n}), {"content-type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        status = resp.status
    except OSError:
        status = 0
    finally:
        conn.close()
    with lock:
        out.append((status, time.monotonic() - began))


def _drive(port: int) -> Dict[str, List[Tuple[int, float]]]:
    """Every BURST_EVERY_S seconds, BURST_EVENTS events within BURST_SPREAD_S to each pipeline
    (the same instants for both). Returns (status, latency) per request, per pipeline."""
    results: Dict[str, List[Tuple[int, float]]] = {"predictive": [], "reactive": []}
    lock = threading.Lock()
    threads: List[threading.Thread] = []
    start = time.monotonic() + 0.2
    schedule = sorted(
        (start + b * BURST_EVERY_S + i * BURST_SPREAD_S / BURST_EVENTS, b * BURST_EVENTS + i)
        for b in range(BURSTS)
        for i in range(BURST_EVENTS)
    )
    for at, n in schedule:
        # Load generation runs on the clock, as cron-driven webhooks do: sleep until the next send.
        delay = at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        for name in results:
            t = threading.Thread(target=_post, args=(port, name, n, results[name], lock), daemon=True)
            t.start()
            threads.append(t)
    for t in threads:
        t.join(60)
    return results


def _pool(server: warmslot.Server, i: int) -> Tuple[int, float]:
    p = server._core.pool(i)
    return p["cold_starts"], p["idle_slot_seconds"]


@pytest.mark.timeout(120)
def test_predictive_beats_knative_kpa_on_recurring_bursts_live(serve):
    server, client = serve(_app())
    before = [_pool(server, i) for i in range(2)]
    results = _drive(server.port)
    after = [_pool(server, i) for i in range(2)]
    (pred_cold, pred_idle), (kpa_cold, kpa_idle) = [(a[0] - b[0], a[1] - b[1]) for a, b in zip(after, before)]
    slow = {name: sum(1 for _, lat in r if lat > SLOW_S) for name, r in results.items()}
    errors = {name: [s for s, _ in r if s != 200] for name, r in results.items()}
    figures = (
        f"predictive: {pred_cold} cold starts, {pred_idle:.1f} idle slot-s, {slow['predictive']} slow; "
        f"reactive (KPA): {kpa_cold} cold starts, {kpa_idle:.1f} idle slot-s, {slow['reactive']} slow; "
        f"predictions: {server.predictions()}"
    )
    print(figures)
    assert all(len(r) == BURSTS * BURST_EVENTS for r in results.values())
    assert errors == {"predictive": [], "reactive": []}, figures
    assert pred_cold <= kpa_cold and pred_idle <= kpa_idle, figures
    assert pred_cold < kpa_cold or pred_idle < kpa_idle, figures
    assert slow["predictive"] <= slow["reactive"], figures

    # The policy learned the bursts, and /metrics shows what it decided.
    preds = server.predictions()
    assert preds["predictive"]["pattern"] is not None or preds["predictive"]["phase"] == "hold", preds
    status, _, text = client.request("GET", "/metrics")
    assert status == 200
    for name in ("predictive", "reactive"):
        target = re.search(rf'^warmslot_predictor_target_slots{{pipeline="{name}"}} (\d+)$', text, re.M)
        assert target is not None and int(target.group(1)) >= 1
        states = re.findall(rf'^warmslot_predictor_state{{pipeline="{name}",state="(\w+)"}} ([01])$', text, re.M)
        assert sum(int(v) for _, v in states) == 1, states
    kpa = re.findall(r'^warmslot_predictor_state{pipeline="reactive",state="(\w+)"} [01]$', text, re.M)
    kpa_states = set(kpa)
    assert kpa_states == {"stable", "panic"}


def _spin(seconds: float) -> int:
    end = time.thread_time() + seconds
    n = 0
    while time.thread_time() < end:
        n += 1
    return n


# Worker processes import this module to find the app, so it lives at module level.
process_app = warmslot.App()


@process_app.pipeline("crunch", slots=1, isolation="process", timeout=None)
def crunch_in_a_worker(event):
    return {"n": _spin(0.03)}


@pytest.mark.timeout(90)
def test_a_cpu_bound_thread_pipeline_does_not_grow_to_max_slots(serve):
    app = warmslot.App()

    @app.pipeline("crunch", min_slots=1, max_slots=8, timeout=None)
    def crunch(event):
        return {"n": _spin(0.02)}  # 20 ms of CPU: the GIL lets one slot at a time run it

    @app.pipeline("wait", min_slots=1, max_slots=8, timeout=None)
    def wait(event):
        time.sleep(0.02)  # 20 ms of I/O: slots overlap
        return {}

    server, _ = serve(app)
    peak = {"crunch": 0, "wait": 0}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for rt in server.runtimes:
                peak[rt.spec.name] = max(peak[rt.spec.name], rt.started)
            stop.wait(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    deadline = time.monotonic() + 8.0

    def client(i: int) -> None:
        with Client(server.host, server.port) as c:
            while time.monotonic() < deadline:
                assert c.post("crunch" if i % 2 else "wait", {})[0] == 200

    try:
        concurrently(16, client)  # 8 clients each: a queue on both
    finally:
        stop.set()
        watcher.join(5)
    preds = server.predictions()
    print(f"peak slots {peak}; cpu_share crunch {preds['crunch']['cpu_share']}, wait {preds['wait']['cpu_share']}")
    crunch_pool = server._core.pool(0)
    load = server._core.load()[0]
    # CPU time is measured in the slot loop: close to the wall time of a CPU-bound run.
    assert crunch_pool["cpu_us"] > 0 and load[7] == crunch_pool["cpu_us"]
    assert preds["crunch"]["cpu_share"] is not None and preds["crunch"]["cpu_share"] > 0.3, preds["crunch"]
    assert preds["wait"]["cpu_share"] is not None and preds["wait"]["cpu_share"] < 0.3, preds["wait"]
    assert peak["crunch"] <= 3, (peak, preds)
    assert peak["wait"] > peak["crunch"], (peak, preds)
    text = server.metrics()
    assert re.search(r'^warmslot_slot_cpu_seconds_total\{pipeline="crunch"\} [0-9.]+$', text, re.M)


@pytest.mark.timeout(90)
def test_process_slots_report_their_workers_cpu_time(serve):
    server, client = serve(process_app)
    for _ in range(20):
        assert client.post("crunch", {})[0] == 200
    pool = server._core.pool(0)
    (_, _, _, _, _, ran, run_us, cpu_us) = server._core.load()[0]
    # 20 runs of 30 ms of CPU each, read from /proc/<pid>/stat in 10 ms clock ticks.
    assert ran == 20 and cpu_us == pool["cpu_us"]
    assert 0.4e6 <= cpu_us <= run_us + 0.1e6, (cpu_us, run_us)
    assert server.predictions()["crunch"]["cpu_share"] > 0.5
