"""Durable intake (issue 8): the journal before a 202 on SQLite, exactly-once state effect across
a SIGKILL, deduplication of repeated deliveries, retries and the failed list."""

from __future__ import annotations

import collections
import json
import signal
import sqlite3
import textwrap
import threading
import time

import pytest
import warmslot
from conftest import Client, concurrently, flaky_app, free_port, poll, send_counted, start_killbot, wait_all_succeeded

HEADERS = ["Idempotency-Key", "webhook-id", "X-GitHub-Delivery"]


def counter_app(state: str = "memory", app_options=None, **options) -> warmslot.App:
    app = warmslot.App(state=state, **(app_options or {}))

    @app.pipeline("count", key="user", slots=2, **options)
    def count(event, ctx):
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        return {"n": ctx.state["n"], "user": event["user"]}

    return app


def state_of(path, pipeline: str = "count") -> dict:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT key, state FROM warmslot_state WHERE pipeline = ?", (pipeline,)).fetchall()
    return {k: json.loads(v)["n"] for k, v in rows}


# --- deduplication ---------------------------------------------------------------------------


@pytest.mark.parametrize("header", HEADERS)
def test_a_repeated_delivery_gets_the_first_answer_and_runs_once(serve, header):
    _, c = serve(counter_app())
    first = c.post("count", {"user": "a"}, {header: "d-1"})
    again = c.post("count", {"user": "a"}, {header: "d-1"})
    assert first[0] == again[0] == 200
    assert first[2] == again[2] == {"n": 1, "user": "a"}
    assert first[1]["x-warmslot-execution-id"] == again[1]["x-warmslot-execution-id"]
    other = c.post("count", {"user": "a"}, {header: "d-2"})
    assert other[2]["n"] == 2, "another delivery id runs"
    plain = c.post("count", {"user": "a"})
    assert plain[2]["n"] == 3, "no delivery id: no deduplication"


def test_long_delivery_ids_are_kept_hashed(serve):
    _, c = serve(counter_app())
    long_a, long_b = "a" * 5000, "a" * 4999 + "b"
    first = c.post("count", {"user": "l"}, {"Idempotency-Key": long_a})
    assert c.post("count", {"user": "l"}, {"Idempotency-Key": long_a})[2] == first[2] == {"n": 1, "user": "l"}
    assert c.post("count", {"user": "l"}, {"Idempotency-Key": long_b})[2]["n"] == 2
    record = c.get(f"/executions/{first[1]['x-warmslot-execution-id']}")[2]
    assert record["delivery_id"].startswith("sha256:") and len(record["delivery_id"]) == 7 + 64


def test_concurrent_repeats_collapse_into_one_execution(serve):
    app = warmslot.App()

    @app.pipeline("slow", key="user", slots=4)
    def slow(event, ctx):
        time.sleep(0.2)  # the repeats arrive while the first still runs
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        return {"n": ctx.state["n"]}

    server, _ = serve(app)

    def send(i):
        with Client(server.host, server.port) as c:
            return c.post("slow", {"user": "u"}, {"webhook-id": "msg_1"})

    started = time.monotonic()
    results = concurrently(8, send)
    # Every waiter wakes when the first finishes, not at the 30 s deadline.
    assert time.monotonic() - started < 10
    assert {r[0] for r in results} == {200}
    assert {r[1]["x-warmslot-execution-id"] for r in results} != set() and len(
        {r[1]["x-warmslot-execution-id"] for r in results}
    ) == 1
    assert all(r[2] == {"n": 1} for r in results), results


def test_async_repeats_get_the_same_execution_id(serve):
    server, c = serve(counter_app())
    prefer = {"Prefer": "respond-async"}
    ids = set()
    for _ in range(3):
        status, hdrs, body = c.post("count", {"user": "z"}, {**prefer, "X-GitHub-Delivery": "gh-1"})
        assert status == 202
        ids.add(body["execution_id"])
        assert hdrs["x-warmslot-execution-id"] == body["execution_id"]
    assert len(ids) == 1
    (eid,) = ids
    poll(lambda: c.get(f"/executions/{eid}")[2]["status"] == "succeeded", what="the execution")
    # A sync repeat of the async delivery gets the first execution's result.
    status, hdrs, body = c.post("count", {"user": "z"}, {"X-GitHub-Delivery": "gh-1"})
    assert (status, body, hdrs["x-warmslot-execution-id"]) == (200, {"n": 1, "user": "z"}, eid)


def test_dedupe_by_body_field_callable_or_off(serve):
    app = warmslot.App()
    ran = collections.Counter()

    @app.pipeline("stripe", dedupe="id")
    def stripe(event, ctx):
        ran["stripe"] += 1
        return {"ok": event["id"]}

    @app.pipeline("custom", dedupe=lambda e: e["meta"]["delivery"])
    def custom(event, ctx):
        ran["custom"] += 1
        return {}

    @app.pipeline("off", dedupe=False)
    def off(event, ctx):
        ran["off"] += 1
        return {}

    _, c = serve(app)
    for _ in range(3):
        assert c.post("stripe", {"id": "evt_1"}, {"Idempotency-Key": f"ignored-{_}"})[0] == 200
        assert c.post("custom", {"meta": {"delivery": "x"}})[0] == 200
        assert c.post("off", {}, {"Idempotency-Key": "same"})[0] == 200
    assert ran == {"stripe": 1, "custom": 1, "off": 3}


def test_the_window_ends_deduplication(serve):
    _, c = serve(counter_app(dedupe_window=0.3))
    assert c.post("count", {"user": "w"}, {"Idempotency-Key": "k"})[2]["n"] == 1
    assert c.post("count", {"user": "w"}, {"Idempotency-Key": "k"})[2]["n"] == 1
    time.sleep(0.35)  # the window itself is what is tested: it must have passed
    assert c.post("count", {"user": "w"}, {"Idempotency-Key": "k"})[2]["n"] == 2


def test_bad_dedupe_options_are_refused_where_declared():
    app = warmslot.App()
    with pytest.raises(TypeError, match="dedupe"):
        app.pipeline("p", dedupe=3)
    with pytest.raises(ValueError, match="dedupe_window"):
        app.pipeline("p", dedupe_window=0)
    with pytest.raises(ValueError, match="retries"):
        app.pipeline("p", retries=-1)
    with pytest.raises(ValueError, match="sqlite_synchronous"):
        warmslot.App(sqlite_synchronous="sometimes")


def test_sqlite_dedupes_and_keeps_records_across_a_restart(tmp_path):
    path = tmp_path / "state.db"
    url = "sqlite:///" + str(path)
    server = counter_app(url).start("127.0.0.1", 0)
    with Client(server.host, server.port) as c:
        sync = c.post("count", {"user": "r"}, {"webhook-id": "w-1"})
        status, _, body = c.post("count", {"user": "r"}, {"webhook-id": "w-2", "Prefer": "respond-async"})
        assert status == 202
        async_id = body["execution_id"]
        poll(lambda: c.get(f"/executions/{async_id}")[2]["status"] == "succeeded", what="the async execution")
    server.stop()
    assert sync[0] == 200 and sync[2]["n"] == 1

    server = counter_app(url, {"sqlite_synchronous": "full"}).start("127.0.0.1", 0)
    try:
        with Client(server.host, server.port) as c:
            again = c.post("count", {"user": "r"}, {"webhook-id": "w-1"})
            assert again[0] == 200 and again[2] == sync[2]
            assert again[1]["x-warmslot-execution-id"] == sync[1]["x-warmslot-execution-id"]
            status, _, body = c.post("count", {"user": "r"}, {"webhook-id": "w-2", "Prefer": "respond-async"})
            assert (status, body["execution_id"]) == (202, async_id)
            record = c.get(f"/executions/{sync[1]['x-warmslot-execution-id']}")
            assert record[0] == 200 and record[2]["status"] == "succeeded" and record[2]["result"] == sync[2]
            assert c.get(f"/executions/{async_id}")[2]["result"] == {"n": 2, "user": "r"}
            assert c.post("count", {"user": "r"})[2]["n"] == 3, "each delivery applied once"
    finally:
        server.stop()


# --- retries and the failed list -------------------------------------------------------------


def test_retries_until_success_then_failed_list(tmp_path):
    app, calls = flaky_app("sqlite:///" + str(tmp_path / "r.db"), reply="async")
    server = app.start("127.0.0.1", 0)
    try:
        with Client(server.host, server.port) as c:
            ok = c.post("flaky", {"user": "u", "tag": "ok", "fail_times": 2})[2]["execution_id"]
            bad = c.post("flaky", {"user": "u", "tag": "bad", "fail_times": 9})[2]["execution_id"]

            def final(eid):
                rec = c.get(f"/executions/{eid}")[2]
                return rec if rec["status"] in ("succeeded", "failed") else None

            rec = poll(lambda: final(ok), what="the retried execution")
            assert rec["status"] == "succeeded" and rec["result"] == {"attempt": 3}
            assert rec["attempts"] == 3 and len(rec["retried_errors"]) == 2
            assert rec["retried_errors"][0]["code"] == "pipeline_error"
            rec = poll(lambda: final(bad), what="the failing execution")
            assert rec["status"] == "failed" and rec["attempts"] == 3 and calls["bad"] == 3
            assert rec["error"]["code"] == "pipeline_error"

            def listed():
                status, _, body = c.get("/executions?status=failed&pipeline=flaky")
                assert status == 200
                return [r["id"] for r in body["executions"]]

            poll(lambda: bad in listed(), what="the failed list")
            assert ok not in listed()
            assert c.get("/executions?status=failed&pipeline=nope")[0] == 404
            assert c.get("/executions?status=bogus")[0] == 400
    finally:
        server.stop()
    # The failed record is durable: listed after a restart too.
    server = app.start("127.0.0.1", 0)
    try:
        with Client(server.host, server.port) as c:
            body = c.get("/executions?status=failed&pipeline=flaky")[2]
            assert [r["id"] for r in body["executions"]] == [bad]
            assert body["executions"][0]["attempts"] == 3
    finally:
        server.stop()


def test_the_failed_list_needs_the_admin_token(serve):
    app = warmslot.App(admin_token="t0ken")

    @app.pipeline("p")
    def p(event, ctx):
        return {}

    _, c = serve(app)
    assert c.get("/executions?status=failed")[0] == 401
    status, _, body = c.request("GET", "/executions?status=failed", headers={"Authorization": "Bearer t0ken"})
    assert status == 200 and body == {"executions": []}


# --- SIGKILL during async intake --------------------------------------------------------------

BOT = """
import os, time
import warmslot

app = warmslot.App(state="sqlite:///" + os.environ["DB"])

@app.pipeline("count", key="user", slots=2, reply="async")
def count(event, ctx):
    time.sleep(0.01)
    ctx.state["n"] = ctx.state.get("n", 0) + 1
    return {"n": ctx.state["n"]}
"""


def start_bot(tmp_path, port):
    return start_killbot(tmp_path, port, {"DB": str(tmp_path / "kill.db")})


def restart_and_check(tmp_path, port, accepted):
    proc = start_bot(tmp_path, port)
    try:
        wait_all_succeeded(port, accepted)
        return state_of(tmp_path / "kill.db")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_sigkill_with_hundreds_accepted_loses_nothing_and_applies_once(tmp_path):
    (tmp_path / "killbot.py").write_text(textwrap.dedent(BOT))
    port = free_port()
    proc = start_bot(tmp_path, port)
    accepted, lock, stop = collections.defaultdict(list), threading.Lock(), threading.Event()
    concurrently(8, lambda i: send_counted(port, accepted, lock, stop, i, 60))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    total = sum(map(len, accepted.values()))
    assert total == 480, "every event was accepted"
    assert sum(state_of(tmp_path / "kill.db").values()) < total, "the kill came with events still queued"
    assert restart_and_check(tmp_path, port, accepted) == {k: len(v) for k, v in accepted.items()}


def test_sigkill_during_intake_runs_every_accepted_event_once(tmp_path):
    # Killed while clients are still sending: every 202'd event applies exactly once; an event
    # journaled whose 202 the kill cut off (at most one per connection) also runs once.
    (tmp_path / "killbot.py").write_text(textwrap.dedent(BOT))
    port = free_port()
    proc = start_bot(tmp_path, port)
    accepted, lock, stop = collections.defaultdict(list), threading.Lock(), threading.Event()
    threads = [threading.Thread(target=send_counted, args=(port, accepted, lock, stop, i, 1000)) for i in range(8)]
    for t in threads:
        t.start()
    poll(lambda: sum(map(len, accepted.values())) >= 300, what="300 accepted events")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stop.set()
    for t in threads:
        t.join()
    counts = restart_and_check(tmp_path, port, accepted)
    for k, v in accepted.items():
        assert len(v) <= counts[k] <= len(v) + 8, (k, len(v), counts[k])
    assert sum(counts.values()) <= sum(map(len, accepted.values())) + 8


def test_a_slot_crash_is_retried(serve, tmp_path):
    import process_bots

    _, c = serve(process_bots.retry_app)
    status, _, body = c.post("once", {"user": "u", "marker": str(tmp_path / "crashed")})
    assert status == 202

    def final():
        rec = c.get(f"/executions/{body['execution_id']}")[2]
        return rec if rec["status"] in ("succeeded", "failed") else None

    rec = poll(final, what="the retried execution")
    assert rec["status"] == "succeeded" and rec["result"] == {"n": 1}, rec
    assert rec["attempts"] == 2 and [e["code"] for e in rec["retried_errors"]] == ["slot_crashed"]
