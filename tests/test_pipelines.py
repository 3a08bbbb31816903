"""End to end against a real server on loopback: replies, state, ordering, pipeline kinds."""

from __future__ import annotations

import asyncio
import threading
import time

import warmslot
from conftest import Client, concurrently


def test_echo_reply_state_and_execution_id(serve):
    app = warmslot.App()

    @app.pipeline("echo", slots=4, key="user")
    def echo(event, ctx):
        ctx.state["count"] = ctx.state.get("count", 0) + 1
        return {"reply": "echo: " + event["text"], "count": ctx.state["count"], "key": ctx.key}

    server, c = serve(app)
    for n in range(1, 4):
        status, headers, body = c.post("echo", {"user": "ann", "text": "hi"})
        assert status == 200
        assert body == {"reply": "echo: hi", "count": n, "key": "ann"}
        assert len(headers["x-warmslot-execution-id"]) == 32
        assert headers["content-type"] == "application/json"
    status, _, body = c.post("echo", {"user": "bob", "text": "yo"})
    assert body["count"] == 1, "state is per key"
    status, _, record = c.get("/executions/" + headers["x-warmslot-execution-id"])
    assert status == 200
    assert record["status"] == "succeeded" and record["pipeline"] == "echo" and record["key"] == "ann"
    assert record["result"] == {"reply": "echo: hi", "count": 3, "key": "ann"}
    assert set(record["timings"]) == {"queue_us", "run_us", "commit_us", "total_us"}
    assert record["timings"]["total_us"] >= record["timings"]["run_us"]


def test_context_carries_ids_headers_and_receipt_time(serve):
    app = warmslot.App()
    seen = {}

    @app.pipeline("ctx", key="k")
    def ctx_bot(event, ctx):
        seen.update(id=ctx.execution_id, key=ctx.key, at=ctx.received_at, ua=ctx.headers.get("x-custom"))
        return None

    server, c = serve(app)
    before = time.time()
    status, headers, body = c.post("ctx", {"k": 7}, {"X-Custom": "yes"})
    assert status == 200 and body is None
    assert seen["id"] == headers["x-warmslot-execution-id"]
    assert seen["key"] == "7", "numeric keys become their JSON text"
    assert seen["ua"] == "yes"
    assert before - 1 <= seen["at"] <= time.time()


def test_per_key_order_and_no_lost_updates_under_8_concurrent_clients(serve):
    app = warmslot.App()
    lock = threading.Lock()
    active = set()
    overlaps = []
    max_parallel = [0]

    @app.pipeline("ledger", slots=4, key="account")
    def ledger(event, ctx):
        key = ctx.key
        with lock:
            if key in active:
                overlaps.append(key)
            active.add(key)
            max_parallel[0] = max(max_parallel[0], len(active))
        time.sleep(0.0005)  # release the GIL so other slots run meanwhile
        ctx.state["balance"] = ctx.state.get("balance", 0) + event["amount"]
        ctx.state.setdefault("log", []).append([event["client"], event["seq"]])
        with lock:
            active.discard(key)
        return {"balance": ctx.state["balance"]}

    server, _ = serve(app)
    accounts = ["a", "b", "c"]
    per_client = 40
    errors = []

    def client(i: int) -> None:
        with Client(server.host, server.port) as c:
            for seq in range(per_client):
                status, _, body = c.post("ledger", {"account": accounts[seq % 3], "amount": 1, "client": i, "seq": seq})
                if status != 200:
                    errors.append((status, body))

    concurrently(8, client)
    assert errors == []
    assert overlaps == [], f"same key ran concurrently: {overlaps[:5]}"
    assert max_parallel[0] >= 2, "different keys should run in parallel on different slots"
    c = Client(server.host, server.port)
    total = 0
    for acc in accounts:
        _, _, body = c.post("ledger", {"account": acc, "amount": 0, "client": -1, "seq": -1})
        total += body["balance"]
    assert total == 8 * per_client, "an update was lost or duplicated"
    c.close()


def test_per_key_arrival_order_from_one_client_is_kept(serve):
    app = warmslot.App()

    @app.pipeline("seq", slots=4, key="k")
    def seq(event, ctx):
        ctx.state.setdefault("seen", []).append(event["n"])
        return ctx.state["seen"]

    server, c = serve(app)
    # Fire async requests back to back so many wait in the ring at once, then read the final state.
    for n in range(200):
        status, _, _ = c.post("seq", {"k": "x" if n % 2 else "y", "n": n}, {"Prefer": "respond-async"})
        assert status == 202
    deadline = time.time() + 10
    while time.time() < deadline:
        _, _, body = c.post("seq", {"k": "x", "n": -1})
        if len(body) >= 101:
            break
    assert body[:100] == list(range(1, 200, 2))


def test_class_pipeline_is_prewarmed_once_per_slot(serve):
    app = warmslot.App()
    inits = []

    @app.pipeline("support", min_slots=3, max_slots=6)
    class Support:
        def __init__(self):
            inits.append(threading.current_thread().name)
            self.greeting = "hi"

        def __call__(self, event, ctx):
            return {"reply": self.greeting, "instance": id(self)}

    server, c = serve(app)
    assert len(inits) == 3, "each warm slot builds its instance before traffic"
    status, _, body = c.get("/healthz")
    assert status == 200 and body["pipelines"]["support"]["warm_slots"] == 3
    for _ in range(20):
        status, _, body = c.post("support", {})
        assert status == 200 and body["reply"] == "hi"
    assert len(inits) == 3, "no instance is built per request"
    assert server.grow("support", 5) == 2
    deadline = time.time() + 5
    while len(inits) < 5 and time.time() < deadline:
        time.sleep(0.01)
    assert len(inits) == 5


def test_setup_resources_are_made_per_slot(serve):
    app = warmslot.App()
    made = []

    def setup():
        made.append(1)
        return {"client": object()}

    @app.pipeline("fn", slots=2, setup=setup)
    def fn(event, ctx):
        return {"has_client": "client" in ctx.resources}

    server, c = serve(app)
    assert len(made) == 2
    assert c.post("fn", {})[2] == {"has_client": True}


def test_async_pipeline_runs_concurrently_on_one_loop(serve):
    app = warmslot.App()
    loops = set()
    state = {"now": 0, "max": 0}

    @app.pipeline("llm", slots=8)
    async def llm(event, ctx):
        loops.add(id(asyncio.get_running_loop()))
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        await asyncio.sleep(0.2)
        state["now"] -= 1
        return {"answer": event["q"] * 2}

    server, _ = serve(app)

    def client(i):
        with Client(server.host, server.port) as c:
            return c.post("llm", {"q": i})

    results = concurrently(8, client)
    assert sorted(r[2]["answer"] for r in results) == [i * 2 for i in range(8)]
    assert all(r[0] == 200 for r in results)
    assert state["max"] >= 4, "async slots should overlap their awaits"
    assert len(loops) == 1, "one event loop serves the pool, not asyncio.run per call"


def test_async_class_pipeline_with_state(serve):
    app = warmslot.App()

    @app.pipeline("chat", key="user", slots=4)
    class Chat:
        def __init__(self):
            self.prefix = ">"

        async def __call__(self, event, ctx):
            await asyncio.sleep(0)
            ctx.state["n"] = ctx.state.get("n", 0) + 1
            return {"text": self.prefix + event["text"], "n": ctx.state["n"]}

    server, c = serve(app)
    assert c.post("chat", {"user": "u", "text": "a"})[2] == {"text": ">a", "n": 1}
    assert c.post("chat", {"user": "u", "text": "b"})[2] == {"text": ">b", "n": 2}


def test_callable_key(serve):
    app = warmslot.App()

    @app.pipeline("gh", key=lambda e: e["repo"]["full_name"])
    def gh(event, ctx):
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        return {"key": ctx.key, "n": ctx.state["n"]}

    server, c = serve(app)
    assert c.post("gh", {"repo": {"full_name": "a/b"}})[2] == {"key": "a/b", "n": 1}
    assert c.post("gh", {"repo": {"full_name": "a/b"}})[2] == {"key": "a/b", "n": 2}
    status, _, body = c.post("gh", {"repo": {}})
    assert status == 400 and body["error"]["code"] == "bad_request" and "full_name" in body["error"]["message"]


def test_unkeyed_pipeline_state_is_not_kept(serve):
    app = warmslot.App()

    @app.pipeline("free")
    def free(event, ctx):
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        return {"n": ctx.state["n"], "key": ctx.key}

    server, c = serve(app)
    assert c.post("free", {})[2] == {"n": 1, "key": None}
    assert c.post("free", {})[2] == {"n": 1, "key": None}


def test_events_may_be_any_json_value(serve):
    app = warmslot.App()

    @app.pipeline("any", key="user")
    def anything(event, ctx):
        return {"type": type(event).__name__, "key": ctx.key}

    server, c = serve(app)
    assert c.post("any", [1, 2])[2] == {"type": "list", "key": None}
    assert c.post("any", "text")[2] == {"type": "str", "key": None}
    assert c.post("any", {"user": None})[2] == {"type": "dict", "key": None}


def test_pool_grows_to_max_slots_under_load(serve):
    app = warmslot.App()
    inits = []

    @app.pipeline("io", min_slots=1, max_slots=4, timeout=None)
    class IO:
        def __init__(self):
            inits.append(1)

        def __call__(self, event, ctx):
            time.sleep(0.05)  # an I/O-bound bot: more slots mean more throughput
            return {}

    server, _ = serve(app)
    assert len(inits) == 1

    def client(i):
        with Client(server.host, server.port) as c:
            for _ in range(10):
                assert c.post("io", {})[0] == 200

    concurrently(6, client)
    assert len(inits) == 4, "the pool should grow to max_slots while every slot is busy and events wait"
    c = Client(server.host, server.port)
    _, _, health = c.get("/healthz")
    c.close()
    assert health["pipelines"]["io"]["warm_slots"] == 4


def test_pipelines_may_take_only_the_event(serve):
    app = warmslot.App()

    @app.pipeline("plain")
    def plain(event):
        return {"got": event["x"]}

    @app.pipeline("aplain")
    async def aplain(event):
        return {"got": event["x"]}

    @app.pipeline("cplain")
    class CPlain:
        def __call__(self, event):
            return {"got": event["x"]}

    server, c = serve(app)
    for name in ("plain", "aplain", "cplain"):
        assert c.post(name, {"x": 1})[2] == {"got": 1}


def test_serve_in_a_thread_stops_with_app_stop():
    app = warmslot.App()

    @app.pipeline("e")
    def e(event, ctx):
        return event

    t = threading.Thread(target=app.serve, kwargs={"port": 0})
    t.start()
    deadline = time.time() + 10
    while (app.server is None or not app.server.is_ready()) and time.time() < deadline:
        time.sleep(0.01)
    c = Client(app.server.host, app.server.port)
    assert c.post("e", {"a": 1})[2] == {"a": 1}
    c.close()
    app.stop()
    t.join(10)
    assert not t.is_alive()
    assert app.server is None


def test_multi_thread_io_runtime(serve):
    app = warmslot.App(io_threads=2, spin_us=0)

    @app.pipeline("echo", key="user", slots=2)
    def echo(event, ctx):
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        return ctx.state["n"]

    server, _ = serve(app)

    def client(i):
        with Client(server.host, server.port) as c:
            return [c.post("echo", {"user": f"u{i}"})[2] for _ in range(20)]

    assert concurrently(4, client) == [list(range(1, 21))] * 4
