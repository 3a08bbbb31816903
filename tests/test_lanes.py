"""Per-key lanes, the admission bound and pool shrinking, end to end (issue 6)."""

from __future__ import annotations

import threading
import time

import warmslot
from conftest import Client, concurrently, wait_for


def test_a_blocked_key_does_not_hold_up_other_keys_and_its_backlog_runs_in_order(serve):
    app = warmslot.App()
    gate = threading.Event()
    applied = []

    @app.pipeline("p", slots=2, key="k", timeout=30)
    def p(event, ctx):
        if event["k"] == "slow":
            assert gate.wait(20), "the test never opened the gate"
            applied.append(event["seq"])
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        return {"n": ctx.state["n"]}

    server, c = serve(app)
    slow_results = []

    def slow_client():
        with Client(server.host, server.port) as cc:
            for seq in range(6):
                slow_results.append(
                    cc.request("POST", "/hooks/p", {"k": "slow", "seq": seq}, {"Prefer": "respond-async"})
                )

    slow_client()  # six queued events of one key; the first one blocks its slot
    wait_for(lambda: server._core.pool(0)["busy"] == 1, 5, "the slow key to occupy one slot")

    # Other keys keep flowing through the other slot while the slow key's backlog waits.
    def other(i: int):
        with Client(server.host, server.port) as cc:
            return [cc.post("p", {"k": f"o{i}"})[0] for _ in range(5)]

    assert all(s == 200 for r in concurrently(4, other) for s in r)
    assert applied == []
    gate.set()
    ids = [body["execution_id"] for status, _, body in slow_results]
    assert all(status == 202 for status, _, _ in slow_results)

    def all_done():
        return all(c.get(f"/executions/{i}")[2]["status"] == "succeeded" for i in ids)

    wait_for(all_done, 10, "the slow key's backlog")
    assert applied == list(range(6)), "every event of the slow key applied once, in arrival order"
    assert c.post("p", {"k": "slow", "seq": 6})[2]["n"] == 7


def test_queue_size_bounds_what_waits_and_refusals_are_fast(serve):
    app = warmslot.App()

    @app.pipeline("p", slots=1, queue_size=8, timeout=30)
    def p(event, ctx):
        time.sleep(0.02)
        return {"ok": True}

    server, c = serve(app)
    stop = time.monotonic() + 1.5

    def client(i: int):
        out = []
        with Client(server.host, server.port) as cc:
            while time.monotonic() < stop:
                t0 = time.monotonic()
                status, headers, body = cc.post("p", {"i": i})
                out.append((status, time.monotonic() - t0, headers.get("retry-after"), body))
        return out

    results = [r for rs in concurrently(16, client) for r in rs]
    refused = [r for r in results if r[0] == 429]
    ok = [r for r in results if r[0] == 200]
    assert {r[0] for r in results} <= {200, 429}
    assert len(refused) > len(ok), "16 clients against 1 slot and 8 places: most are refused at once"
    assert all(r[2] is not None and r[3]["error"]["code"] == "overloaded" for r in refused)
    refusal_times = sorted(r[1] for r in refused)
    assert refusal_times[len(refusal_times) // 2] < 0.02, "a refusal does not wait for the pipeline"
    stats = server.stats()[0]
    assert stats["requests"]["succeeded"] == len(ok)
    assert stats["requests"]["overloaded"] == len(refused)


def test_the_pool_shrinks_to_its_target_and_keeps_serving(serve):
    app = warmslot.App()

    @app.pipeline("p", min_slots=1, max_slots=4, key="k")
    def p(event, ctx):
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        return {"n": ctx.state["n"]}

    server, c = serve(app)
    rt = server.runtimes[0]
    rt.scale_to(4)
    wait_for(lambda: server._core.pool(0)["warm"] == 4, 10, "4 warm slots")
    assert server._core.pool(0)["warmups"]["ahead"] == 4
    rt.scale_to(1)
    wait_for(lambda: server._core.pool(0)["warm"] == 1, 10, "the pool to shrink to 1")
    wait_for(lambda: rt.started == 1, 5, "retired slots to free their indexes")
    for i in range(1, 11):
        assert c.post("p", {"k": "a"})[2]["n"] == i
    assert server._core.pool(0)["idle_slot_seconds"] > 0
    metrics = c.get("/metrics")[2]
    assert 'warmslot_idle_slot_seconds_total{pipeline="p"}' in metrics
    assert 'warmslot_slot_warmups_total{pipeline="p",reason="ahead"} 4' in metrics


def test_bodies_the_slot_could_not_decode_are_refused_at_the_ingress(serve):
    app = warmslot.App()

    @app.pipeline("p", key="user")
    def p(event, ctx):
        ctx.state["last"] = event
        return {"got": event}

    server, c = serve(app)
    hostile = [
        b"[" * 5000 + b"]" * 5000,
        b'{"a":' * 300 + b"1" + b"}" * 300,
        b'{"user":"x","t":"\xff\xfe"}',
        b'{"user":"x","n":' + b"9" * 100_000 + b"}",
        b'{"user":"x","n":1e999}',
        b'{"user":"x"',
        b"",
    ]
    for body in hostile:
        status, _, reply = c.post("p", body, raw=True)
        assert status == 400 and reply["error"]["code"] == "invalid_json", (body[:40], status, reply)
    # Field order, big-but-finite numbers and unicode arrive as sent.
    status, _, reply = c.post("p", b'{"user":"x","z":1,"a":[1.5,-2,18446744073709551615],"s":"\\u00e9"}', raw=True)
    assert status == 200
    assert list(reply["got"]) == ["user", "z", "a", "s"]
    assert reply["got"]["a"] == [1.5, -2, 18446744073709551615] and reply["got"]["s"] == "é"
    assert c.post("p", {"user": "x"})[0] == 200, "the state written above decodes"


def test_a_state_over_max_state_bytes_is_not_committed(serve):
    app = warmslot.App(max_state_bytes=200)

    @app.pipeline("p", key="k")
    def p(event, ctx):
        ctx.state["blob"] = "x" * event["size"]
        return {"ok": True}

    server, c = serve(app)
    assert c.post("p", {"k": "a", "size": 10})[0] == 200
    status, _, body = c.post("p", {"k": "a", "size": 1000})
    assert status == 500 and body["error"]["code"] == "state_too_large", body
    assert "200-byte limit" in body["error"]["message"]
