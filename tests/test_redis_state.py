"""state="redis://...": cluster mode against a real redis-server started here."""

from __future__ import annotations

import collections
import signal
import textwrap
import threading
import time

import pytest
import warmslot
from conftest import Client, concurrently, flaky_app, free_port, poll, send_counted, start_killbot, wait_all_succeeded


def redis_command(url: str, *args: str):
    """Sends one command over RESP to the test's redis-server and returns the raw reply."""
    import socket

    host, port = url[len("redis://") :].split("/")[0].split(":")
    payload = f"*{len(args)}\r\n".encode() + b"".join(f"${len(a)}\r\n{a}\r\n".encode() for a in args)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(payload)
        return sock.recv(65536)


def redis_value(url: str, *args: str):
    """One command's reply as a Python value: an int, bytes, or None (a nil bulk string)."""
    reply = redis_command(url, *args)
    if reply.startswith(b":"):
        return int(reply[1:].split(b"\r\n")[0])
    if reply.startswith(b"$-1"):
        return None
    if reply.startswith(b"$"):
        head, rest = reply.split(b"\r\n", 1)
        return rest[: int(head[1:])]
    raise AssertionError(f"unexpected reply {reply!r}")


def make_app(url: str) -> warmslot.App:
    app = warmslot.App(state=url)

    @app.pipeline("ledger", key="account", slots=4)
    def ledger(event, ctx):
        ctx.state["balance"] = ctx.state.get("balance", 0) + event["amount"]
        if event.get("fail"):
            raise RuntimeError("rejected")
        time.sleep(0.001)
        return ctx.state["balance"]

    return app


def test_two_servers_share_state_without_losing_updates(redis_url):
    # Two warmslot servers ("nodes") on one Redis; clients hit both for the same keys at once.
    nodes = [make_app(redis_url).start("127.0.0.1", 0) for _ in range(2)]
    try:
        errors = []

        def client(i):
            node = nodes[i % 2]
            with Client(node.host, node.port) as c:
                for n in range(25):
                    status, _, body = c.post("ledger", {"account": "acct-%d" % (n % 2), "amount": 1})
                    if status != 200:
                        errors.append((status, body))

        concurrently(8, client)
        assert errors == []
        c = Client(nodes[1].host, nodes[1].port)
        totals = [c.post("ledger", {"account": f"acct-{k}", "amount": 0})[2] for k in (0, 1)]
        assert totals == [8 * 13, 8 * 12], "every update from both nodes is in Redis exactly once"
        # A failing run commits nothing and frees the key for the next event.
        assert c.post("ledger", {"account": "acct-0", "amount": 5, "fail": True})[0] == 500
        assert c.post("ledger", {"account": "acct-0", "amount": 0})[2] == 8 * 13
        c.close()
    finally:
        for n in nodes:
            n.stop()


def test_state_survives_a_restart_of_the_server(redis_url):
    with make_app(redis_url).start("127.0.0.1", 0) as server:
        c = Client(server.host, server.port)
        assert c.post("ledger", {"account": "a", "amount": 3})[2] == 3
        c.close()
    with make_app(redis_url).start("127.0.0.1", 0) as server:
        c = Client(server.host, server.port)
        assert c.post("ledger", {"account": "a", "amount": 4})[2] == 7
        c.close()


def test_unreachable_redis_is_a_clear_error():
    with pytest.raises(OSError, match="cannot reach redis"):
        make_app(f"redis://127.0.0.1:{free_port()}/0").start("127.0.0.1", 0)


def test_dead_pooled_connections_are_replaced(redis_url):
    with make_app(redis_url).start("127.0.0.1", 0) as server, Client(server.host, server.port) as c:
        assert c.post("ledger", {"account": "k", "amount": 1})[2] == 1
        # Every warmslot connection to Redis dies (as after a Redis restart or an idle-client kill).
        assert redis_command(redis_url, "CLIENT", "KILL", "TYPE", "normal").startswith(b":")
        assert c.post("ledger", {"account": "k", "amount": 1})[0:3:2] == (200, 2)
        assert c.post("ledger", {"account": "k", "amount": 1})[0:3:2] == (200, 3)


def test_a_run_whose_deadline_passed_waiting_for_the_lease_does_not_run(redis_url):
    app = warmslot.App(state=redis_url)
    ran = []

    @app.pipeline("p", key="k", timeout=0.3)
    def p(event, ctx):
        ran.append(event["n"])
        ctx.state["n"] = event["n"]
        return ctx.state

    @app.pipeline("a", key="k", slots=4, timeout=5.0)
    async def a(event, ctx):
        return {"k": ctx.key}

    with app.start("127.0.0.1", 0) as server, Client(server.host, server.port) as c:
        # Another process holds key x for 1 s.
        redis_command(redis_url, "SET", "warmslot:p:lock:x", "other-node", "PX", "1000")
        status, _, body = c.post("p", {"k": "x", "n": 1})
        assert status == 504 and body["error"]["code"] == "pipeline_timeout"
        time.sleep(1.0)
        assert ran == [], "a pipeline whose client was already answered 504 must not run"
        assert c.post("p", {"k": "x", "n": 2})[0:3:2] == (200, {"n": 2})
        # On an async pipeline, a key locked elsewhere does not hold up the other keys.
        redis_command(redis_url, "SET", "warmslot:a:lock:busy", "other-node", "PX", "1500")
        results = {}

        def slow():
            with Client(server.host, server.port) as other:
                results["busy"] = other.post("a", {"k": "busy"})[0]

        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.1)
        t0 = time.monotonic()
        assert c.post("a", {"k": "free"})[0:3:2] == (200, {"k": "free"})
        assert time.monotonic() - t0 < 0.8, "the event loop must not wait for another key's lease"
        t.join(5)
        assert results["busy"] == 200


def test_repeated_deliveries_run_once_across_servers(redis_url):
    # The same delivery id sent to two servers sharing one Redis, 8 at once: one execution.
    nodes = [make_app(redis_url).start("127.0.0.1", 0) for _ in range(2)]
    try:

        def send(i):
            node = nodes[i % 2]
            with Client(node.host, node.port) as c:
                return c.post("ledger", {"account": "dup", "amount": 10}, {"Idempotency-Key": "pay-1"})

        results = concurrently(8, send)
        assert {r[0] for r in results} == {200}, results
        assert len({r[1]["x-warmslot-execution-id"] for r in results}) == 1
        assert {r[2] for r in results} == {10}
        with Client(nodes[1].host, nodes[1].port) as c:
            assert c.post("ledger", {"account": "dup", "amount": 0})[2] == 10, "applied once"
            # An async repeat on either server gets the same execution id.
            status, _, body = c.post(
                "ledger",
                {"account": "dup", "amount": 10},
                {
                    "Idempotency-Key": "pay-1",
                    "Prefer": "respond-async",
                },
            )
            assert (status, body["execution_id"]) == (202, results[0][1]["x-warmslot-execution-id"])
            # The record of an execution run by the other server is readable here too.
            assert c.get(f"/executions/{body['execution_id']}")[2]["result"] == 10
    finally:
        for n in nodes:
            n.stop()


# --- the journal: a 202 on Redis survives a SIGKILL ---------------------------------------------

ASYNC = {"Prefer": "respond-async"}

KILL_BOT = """
import os, time
import warmslot

app = warmslot.App(state=os.environ["REDIS_URL"])

@app.pipeline("count", key="user", slots=2)
def count(event, ctx):
    time.sleep(0.01)
    ctx.state["n"] = ctx.state.get("n", 0) + 1
    return {"n": ctx.state["n"]}
"""


def start_bot(tmp_path, redis_url, port):
    return start_killbot(tmp_path, port, {"REDIS_URL": redis_url})


def counters(redis_url, keys) -> dict:
    import json

    values = {k: redis_value(redis_url, "GET", f"warmslot:count:state:{k}") for k in keys}
    return {k: json.loads(v)["n"] if v else 0 for k, v in values.items()}


@pytest.mark.parametrize("while_sending", [False, True], ids=["after-intake", "during-intake"])
def test_sigkill_loses_no_accepted_event_and_applies_each_once(redis_url, tmp_path, while_sending):
    (tmp_path / "killbot.py").write_text(textwrap.dedent(KILL_BOT))
    port = free_port()
    proc = start_bot(tmp_path, redis_url, port)
    users = [f"k{i}" for i in range(6)]
    accepted, lock, stop = collections.defaultdict(list), threading.Lock(), threading.Event()

    def send(i, per_client):
        send_counted(port, accepted, lock, stop, i, per_client, ASYNC)

    if while_sending:
        threads = [threading.Thread(target=send, args=(i, 1000)) for i in range(8)]
        for t in threads:
            t.start()
        poll(lambda: sum(map(len, accepted.values())) >= 300, what="300 accepted events")
    else:
        concurrently(8, lambda i: send(i, 60))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stop.set()
    if while_sending:
        for t in threads:
            t.join()
    total = sum(map(len, accepted.values()))
    assert while_sending or total == 480, "every event was accepted"
    assert redis_value(redis_url, "HLEN", "warmslot:count:journal") > 0, "the kill came with events journaled"
    assert sum(counters(redis_url, users).values()) < total, "the kill came with events not yet run"

    proc = start_bot(tmp_path, redis_url, port)
    try:
        wait_all_succeeded(port, accepted)
        poll(lambda: redis_value(redis_url, "HLEN", "warmslot:count:journal") == 0, what="an empty journal")
        counts = counters(redis_url, users)
        if while_sending:
            # An event journaled whose 202 the kill cut off (at most one per connection) runs too.
            for k, v in accepted.items():
                assert len(v) <= counts[k] <= len(v) + 8, (k, len(v), counts[k])
            assert sum(counts.values()) <= total + 8
        else:
            assert counts == {k: len(v) for k, v in accepted.items()}, "each accepted event applied once"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_journaled_retries_dedupe_and_failures_on_redis(redis_url):
    app, calls = flaky_app(redis_url)
    with app.start("127.0.0.1", 0) as server, Client(server.host, server.port) as c:
        ok = c.post("flaky", {"user": "u", "tag": "ok", "fail_times": 2}, {**ASYNC, "webhook-id": "w-1"})
        bad = c.post("flaky", {"user": "u", "tag": "bad", "fail_times": 9}, ASYNC)
        assert ok[0] == bad[0] == 202
        again = c.post("flaky", {"user": "u", "tag": "ok", "fail_times": 2}, {**ASYNC, "webhook-id": "w-1"})
        assert again[2]["execution_id"] == ok[2]["execution_id"], "a repeat gets the journaled execution"

        def final(eid):
            rec = c.get(f"/executions/{eid}")[2]
            return rec if rec["status"] in ("succeeded", "failed") else None

        rec = poll(lambda: final(ok[2]["execution_id"]), what="the retried execution")
        assert (rec["status"], rec["attempts"], rec["result"]) == ("succeeded", 3, {"attempt": 3})
        rec = poll(lambda: final(bad[2]["execution_id"]), what="the failing execution")
        assert (rec["status"], rec["attempts"], calls["bad"]) == ("failed", 3, 3)
        # Both are done: the success with its commit, the failure with its record (a moment later).
        poll(lambda: redis_value(redis_url, "HLEN", "warmslot:flaky:journal") == 0, what="an empty journal")
        assert redis_value(redis_url, "HLEN", "warmslot:flaky:journal:owner") == 0
        assert c.post("flaky", {"user": "u", "tag": "x", "fail_times": 0})[2] == {"attempt": 1}
        assert b'"ok":2' in redis_value(redis_url, "GET", "warmslot:flaky:state:u"), "applied once per event"
        # The failed execution is listed on every process sharing the Redis, the succeeded one not.
        other = warmslot.App(state=redis_url)

        @other.pipeline("flaky", key="user")
        def flaky_elsewhere(event, ctx):
            return {}

        with other.start("127.0.0.1", 0) as server2, Client(server2.host, server2.port) as c2:
            status, _, body = c2.get("/executions?status=failed&pipeline=flaky")
            assert status == 200
            assert [r["id"] for r in body["executions"]] == [bad[2]["execution_id"]], body
            assert body["executions"][0]["attempts"] == 3
        # When Redis cannot take the journal entry, the event is refused, not answered 202.
        redis_command(redis_url, "SHUTDOWN", "NOSAVE")
        status, _, body = c.post("flaky", {"user": "u", "tag": "y", "fail_times": 0}, ASYNC)
        assert status == 500 and body["error"]["code"] == "state_error", (status, body)
        assert "could not be journaled" in body["error"]["message"]


def test_events_stopped_by_a_shutdown_run_after_the_restart(redis_url):
    def slow_app() -> warmslot.App:
        app = warmslot.App(state=redis_url)

        @app.pipeline("slow", key="user")
        def slow(event, ctx):
            time.sleep(0.05)
            ctx.state["n"] = ctx.state.get("n", 0) + 1
            return ctx.state["n"]

        return app

    server = slow_app().start("127.0.0.1", 0)
    with Client(server.host, server.port) as c:
        ids = [c.post("slow", {"user": "u"}, ASYNC)[2]["execution_id"] for _ in range(20)]
    server.stop(drain=0)
    assert redis_value(redis_url, "HLEN", "warmslot:slow:journal") > 0, "the shutdown stopped some"
    assert redis_command(redis_url, "KEYS", "warmslot:node:*") == b"*0\r\n", "the stopped process said goodbye"
    with slow_app().start("127.0.0.1", 0) as server, Client(server.host, server.port) as c:
        poll(
            lambda: all(c.get(f"/executions/{eid}")[2].get("status") == "succeeded" for eid in ids),
            what="every accepted execution to succeed",
        )
        assert c.post("slow", {"user": "u"})[2] == 21, "each ran once"
