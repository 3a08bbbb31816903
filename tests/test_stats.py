"""`GET /stats`: per-second series of every pipeline; Prometheus latency histograms with exact sums."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import warmslot
from conftest import Client, concurrently

FIELDS = {
    "t",
    "arrivals",
    "completed",
    "refused",
    "errors",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "queue_p99_ms",
    "run_p99_ms",
    "commit_p99_ms",
    "queue",
    "warm",
    "busy",
    "target",
    "forecast",
    "cold_starts",
}


def wait_for_stats(c: Client, done, timeout: float = 15.0) -> dict:
    """Polls /stats until done(pipelines) holds (the ticker closes a second once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        status, headers, body = c.get("/stats")
        assert status == 200 and headers["content-type"] == "application/json"
        if done(body["pipelines"]) or time.monotonic() > deadline:
            return body["pipelines"]
        time.sleep(0.1)


def total(series: list, field: str) -> float:
    return sum(s[field] for s in series)


def test_stats_has_per_second_series_for_every_pipeline(serve):
    app = warmslot.App()

    @app.pipeline("echo", key="user", slots=2)
    def echo(event, ctx):
        return {"ok": True}

    @app.pipeline("flaky")
    def flaky(event, ctx):
        if event.get("boom"):
            raise RuntimeError("boom")
        time.sleep(0.002)
        return {}

    server, c = serve(app)
    for i in range(30):
        assert c.post("echo", {"user": str(i % 3)})[0] == 200
    for i in range(10):
        assert c.post("flaky", {"boom": i % 5 == 0})[0] == (500 if i % 5 == 0 else 200)
    assert c.post("flaky", b"{nope", raw=True)[0] == 400

    stats = wait_for_stats(
        c, lambda p: total(p["echo"]["series"], "completed") == 30 and total(p["flaky"]["series"], "errors") == 3
    )
    echo_s, flaky_s = stats["echo"]["series"], stats["flaky"]["series"]
    ts_echo = [s["t"] for s in echo_s]
    assert total(echo_s, "completed") == 30 and total(echo_s, "arrivals") == 30 and total(echo_s, "errors") == 0
    # Two executions failed, one webhook never reached admission (bad JSON): all three are errors.
    assert (total(flaky_s, "completed"), total(flaky_s, "errors"), total(flaky_s, "arrivals")) == (8, 3, 10)
    for series in (echo_s, flaky_s):
        assert all(set(s) == FIELDS for s in series)
        ts = [s["t"] for s in series]
        assert ts == list(range(ts[0], ts[0] + len(ts))), "one sample per second, none missing"
        assert abs(ts[-1] - time.time()) < 5
        busy = [s for s in series if s["completed"]]
        assert busy and all(0 < s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"] for s in busy)
        assert all(s["run_p99_ms"] > 0 for s in busy)
        assert all(s["p99_ms"] == 0 for s in series if not s["completed"] and not s["errors"])
    assert echo_s[-1]["warm"] == 2 and flaky_s[-1]["warm"] >= 1
    assert all(s["target"] >= 1 for s in echo_s[-1:])

    # ?since= returns only later seconds, for incremental polling.
    last = echo_s[-1]["t"]
    _, _, later = c.get(f"/stats?since={last}")
    assert all(s["t"] > last for p in later["pipelines"].values() for s in p["series"])
    _, _, mid = c.get(f"/stats?since={echo_s[0]['t']}")
    mid_ts = [s["t"] for s in mid["pipelines"]["echo"]["series"]]
    assert mid_ts[: len(echo_s) - 1] == ts_echo[1:]


def test_stats_rejects_a_bad_since_and_other_methods(serve):
    app = warmslot.App()

    @app.pipeline("e")
    def e(event, ctx):
        return event

    server, c = serve(app)
    status, _, body = c.get("/stats?since=yesterday")
    assert status == 400 and body["error"]["code"] == "bad_request" and "yesterday" in body["error"]["message"]
    status, headers, body = c.request("POST", "/stats", {})
    assert status == 405 and headers["allow"] == "GET" and body["error"]["code"] == "method_not_allowed"
    status, headers, page = c.get("/dashboard")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "/stats?since=" in page and "<script src" not in page and "https://" not in page


def test_refusals_are_counted_per_second(serve):
    app = warmslot.App()
    release = threading.Event()

    @app.pipeline("busy", slots=1, queue_size=1, max_batch=1)
    def busy(event, ctx):
        release.wait(10)
        return {}

    server, c = serve(app)
    statuses: list = []

    def post(i: int) -> None:
        with Client(server.host, server.port) as own:
            statuses.append(own.post("busy", {"i": i})[0])

    def release_when_refused() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and 429 not in statuses:
            time.sleep(0.01)
        release.set()

    releaser = threading.Thread(target=release_when_refused)
    releaser.start()
    concurrently(8, post)
    releaser.join()
    refused = statuses.count(429)
    assert refused >= 1 and statuses.count(200) + refused == 8, statuses
    series = wait_for_stats(c, lambda p: total(p["busy"]["series"], "refused") == refused)["busy"]["series"]
    assert total(series, "refused") == refused
    assert total(series, "arrivals") == 8, "a refused webhook reached admission"
    assert total(series, "errors") == 0, "a 429 is a refusal, not an error"


def test_latency_histograms_have_exact_sums_and_count_timeouts(serve):
    app = warmslot.App()

    @app.pipeline("slow", slots=4, timeout=0.05)
    def slow(event, ctx):
        time.sleep(event["s"])
        return {}

    server, c = serve(app)
    ids = []
    for s in (0.001, 0.2, 0.001, 0.2, 0.001):
        status, headers, _ = c.post("slow", {"s": s})
        assert status == (504 if s > 0.05 else 200)
        ids.append(headers["x-warmslot-execution-id"])
    records = [c.get("/executions/" + i)[2] for i in ids]
    assert [r["status"] for r in records] == ["succeeded", "timed_out", "succeeded", "timed_out", "succeeded"]
    text = c.get("/metrics")[2]

    def value(series: str) -> str:
        m = re.search(re.escape(series) + r" ([0-9.e+]+)\n", text)
        assert m, series
        return m.group(1)

    total_us = sum(r["timings"]["total_us"] for r in records)
    assert value('warmslot_latency_seconds_sum{pipeline="slow",phase="total"}') == f"{total_us / 1e6:.6f}"
    assert value('warmslot_latency_seconds_count{pipeline="slow",phase="total"}') == "5"
    assert value('warmslot_latency_seconds_count{pipeline="slow",phase="commit"}') == "3"
    assert value('warmslot_latency_seconds_bucket{pipeline="slow",phase="total",le="0.025"}') == "3"
    assert value('warmslot_latency_seconds_bucket{pipeline="slow",phase="total",le="+Inf"}') == "5"
    bucket = r'warmslot_latency_seconds_bucket\{pipeline="slow",phase="total",le="[^"]+"\} (\d+)'
    buckets = [int(v) for v in re.findall(bucket, text)]
    assert len(buckets) == 19
    assert buckets == sorted(buckets), "buckets are cumulative"


def test_the_grafana_dashboard_queries_only_metrics_the_server_exposes(serve):
    app = warmslot.App()

    @app.pipeline("e")
    def e(event, ctx):
        return event

    server, c = serve(app)
    c.post("e", {})
    exposed = {line.split("{")[0].split(" ")[0] for line in c.get("/metrics")[2].splitlines() if line[:1] != "#"}
    dashboard = json.loads((Path(__file__).parent.parent / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    used = {name for expr in exprs for name in re.findall(r"warmslot_[a-z_]+", expr)}
    assert "warmslot_latency_seconds_bucket" in used
    assert used <= exposed, used - exposed
