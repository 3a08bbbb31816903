"""state="redis://...": cluster mode against a real redis-server started here."""

from __future__ import annotations

import shutil
import subprocess
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
