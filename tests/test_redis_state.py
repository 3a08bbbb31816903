"""state="redis://...": cluster mode against a real redis-server started here."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import pytest
import warmslot
from conftest import Client, concurrently, free_port


@pytest.fixture
def redis_url():
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (apt-get install -y redis-server; .ci/run installs it)")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.time() + 10
    import socket

    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.02)
    yield url
    proc.terminate()
    proc.wait(10)


def redis_command(url: str, *args: str):
    """Sends one command over RESP to the test's redis-server and returns the raw reply."""
    import socket

    host, port = url[len("redis://") :].split("/")[0].split(":")
    payload = f"*{len(args)}\r\n".encode() + b"".join(f"${len(a)}\r\n{a}\r\n".encode() for a in args)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(payload)
        return sock.recv(65536)


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
            status, _, body = c.post("ledger", {"account": "dup", "amount": 10}, {
                "Idempotency-Key": "pay-1",
                "Prefer": "respond-async",
            })
            assert (status, body["execution_id"]) == (202, results[0][1]["x-warmslot-execution-id"])
            # The record of an execution run by the other server is readable here too.
            assert c.get(f"/executions/{body['execution_id']}")[2]["result"] == 10
    finally:
        for n in nodes:
            n.stop()
