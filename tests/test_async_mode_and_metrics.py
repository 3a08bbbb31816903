"""`Prefer: respond-async`, execution records and /metrics."""

from __future__ import annotations

import re
import time

import warmslot
from warmslot.policies import PredictivePolicy


def test_respond_async_202_then_poll(serve):
    app = warmslot.App()

    @app.pipeline("job", key="user")
    def job(event, ctx):
        time.sleep(0.1)
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        return {"done": event["x"], "n": ctx.state["n"]}

    server, c = serve(app)
    status, headers, body = c.post("job", {"user": "a", "x": 42}, {"Prefer": "respond-async"})
    assert status == 202
    eid = body["execution_id"]
    assert headers["location"] == f"/executions/{eid}"
    _, _, rec = c.get(headers["location"])
    assert rec["status"] in ("queued", "running")
    assert rec["id"] == eid and rec["pipeline"] == "job" and rec["key"] == "a"
    deadline = time.time() + 5
    while rec["status"] != "succeeded" and time.time() < deadline:
        time.sleep(0.02)
        _, _, rec = c.get(headers["location"])
    assert rec["status"] == "succeeded"
    assert rec["result"] == {"done": 42, "n": 1}
    t = rec["timings"]
    assert t["run_us"] >= 100_000 and t["total_us"] >= t["run_us"] + t["queue_us"] + t["commit_us"] - 50


def test_async_failures_and_timeouts_are_recorded(serve):
    app = warmslot.App()

    @app.pipeline("bad")
    def bad(event, ctx):
        raise KeyError("x")

    @app.pipeline("late", timeout=0.1)
    def late(event, ctx):
        time.sleep(0.3)
        return {}

    server, c = serve(app)
    ids = {}
    for name in ("bad", "late"):
        status, _, body = c.post(name, {}, {"Prefer": "respond-async"})
        assert status == 202
        ids[name] = body["execution_id"]
    time.sleep(0.5)
    _, _, rec = c.get("/executions/" + ids["bad"])
    assert (
        rec["status"] == "failed" and rec["error"]["code"] == "pipeline_error" and "KeyError" in rec["error"]["message"]
    )
    _, _, rec = c.get("/executions/" + ids["late"])
    assert rec["status"] == "timed_out" and rec["error"]["code"] == "pipeline_timeout"


def test_execution_records_are_bounded(serve):
    app = warmslot.App(max_records=5)

    @app.pipeline("e")
    def e(event, ctx):
        return event

    server, c = serve(app)
    ids = [c.post("e", {"i": i})[1]["x-warmslot-execution-id"] for i in range(8)]
    assert c.get("/executions/" + ids[0])[0] == 404
    assert c.get("/executions/" + ids[-1])[2]["result"] == {"i": 7}


def test_metrics_exposition(serve):
    app = warmslot.App()

    @app.pipeline("echo", key="user", slots=2)
    def echo(event, ctx):
        return {}

    @app.pipeline("boom")
    def boom(event, ctx):
        raise ValueError

    server, c = serve(app)
    for _ in range(5):
        c.post("echo", {"user": "a"})
    c.post("boom", {})
    c.post("echo", b"{", raw=True)
    status, headers, text = c.get("/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert 'warmslot_requests_total{pipeline="echo",status="succeeded"} 5' in text
    assert 'warmslot_requests_total{pipeline="boom",status="failed"} 1' in text
    assert 'warmslot_requests_total{pipeline="echo",status="invalid_json"} 1' in text
    for phase in ("queue", "run", "commit", "total"):
        m = re.search(
            rf'warmslot_latency_quantile_seconds{{pipeline="echo",phase="{phase}",quantile="0.99"}} ([0-9.]+)', text
        )
        assert m and float(m.group(1)) > 0
        assert f'warmslot_latency_seconds_count{{pipeline="echo",phase="{phase}"}} 5' in text
        assert f'warmslot_latency_seconds_bucket{{pipeline="echo",phase="{phase}",le="+Inf"}} 5' in text
    # The failure is latency too: it counts in the total phase, not in commit.
    assert 'warmslot_latency_seconds_count{pipeline="boom",phase="total"} 1' in text
    assert 'warmslot_latency_seconds_count{pipeline="boom",phase="commit"} 0' in text
    assert 'warmslot_slots{pipeline="echo",state="warm"} 2' in text
    assert 'warmslot_ring_depth{pipeline="echo"} 0' in text
    assert 'warmslot_arrivals_total{pipeline="echo"} 5' in text, "invalid JSON never reaches admission"
    assert re.search(r'warmslot_slots\{pipeline="echo",state="target"\} \d+', text)
    assert re.search(r'warmslot_forecast_rps\{pipeline="echo"\} [0-9.]+', text)
    pred = server.predictions()["echo"]
    assert pred["policy"] == "predictive" and pred["phase"] in PredictivePolicy.PHASES
    assert pred["target_slots"] >= 2
    # Every sample line parses as Prometheus text: name{labels} value
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[a-z_]+(\{[^}]*\})? -?[0-9.e+]+", line), line
    stats = {s["name"]: s for s in server.stats()}
    assert stats["echo"]["requests"]["succeeded"] == 5
    assert stats["echo"]["latency"]["total"]["count"] == 5


def test_pipeline_declared_async_replies_202_without_prefer(serve):
    app = warmslot.App()

    @app.pipeline("stripe", reply="async", key="customer")
    def stripe(event, ctx):
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        return {"n": ctx.state["n"]}

    server, c = serve(app)
    status, headers, body = c.post("stripe", {"customer": "cus_1"})
    assert status == 202 and headers["location"] == "/executions/" + body["execution_id"]
    deadline = time.time() + 5
    rec = {}
    while rec.get("status") != "succeeded" and time.time() < deadline:
        rec = c.get(headers["location"])[2]
    assert rec["result"] == {"n": 1}


def test_metrics_parse_with_the_prometheus_client(serve):
    from prometheus_client.parser import text_string_to_metric_families

    app = warmslot.App()

    @app.pipeline("echo", key="user")
    def echo(event, ctx):
        return {}

    server, c = serve(app)
    for _ in range(3):
        c.post("echo", {"user": "a"})
    families = {f.name: f for f in text_string_to_metric_families(c.get("/metrics")[2])}
    assert families["warmslot_requests"].type == "counter"
    assert families["warmslot_latency_seconds"].type == "histogram"
    assert families["warmslot_latency_quantile_seconds"].type == "gauge"
    assert families["warmslot_slots"].type == "gauge"
    assert families["warmslot_ring_depth"].type == "gauge"
    ok = [
        s
        for s in families["warmslot_requests"].samples
        if s.labels == {"pipeline": "echo", "status": "succeeded"} and s.name == "warmslot_requests_total"
    ]
    assert ok and ok[0].value == 3
    quantiles = {
        s.labels["quantile"]
        for s in families["warmslot_latency_quantile_seconds"].samples
        if s.labels.get("phase") == "total" and "quantile" in s.labels
    }
    assert quantiles == {"0.5", "0.95", "0.99"}
    total = {
        s.name: s
        for s in families["warmslot_latency_seconds"].samples
        if s.labels.get("phase") == "total" and s.labels.get("le") in (None, "+Inf")
    }
    assert total["warmslot_latency_seconds_count"].value == 3
    assert total["warmslot_latency_seconds_bucket"].value == 3
    assert total["warmslot_latency_seconds_sum"].value > 0
