"""Nothing a pipeline does ends a slot, and nothing accepted goes unanswered at shutdown."""

from __future__ import annotations

import asyncio
import threading
import time

import warmslot
from conftest import Client, concurrently


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("cannot print me")


def test_weird_exceptions_fail_the_request_but_not_the_slot(serve):
    app = warmslot.App()

    @app.pipeline("weird", slots=1, key="k")
    def weird(event, ctx):
        kind = event.get("kind")
        if kind == "surrogate":
            raise ValueError("bad: " + b"\xff".decode("utf-8", "surrogateescape"))
        if kind == "unprintable":
            raise Unprintable()
        if kind == "exit":
            raise SystemExit(3)
        return {"ok": True}

    server, c = serve(app)
    for kind in ("surrogate", "unprintable", "exit", "surrogate"):
        status, _, body = c.post("weird", {"k": "a", "kind": kind})
        assert status == 500 and body["error"]["code"] == "pipeline_error", (kind, body)
    status, _, body = c.post("weird", {"k": "a"})
    assert (status, body) == (200, {"ok": True}), "the slot must survive"
    assert server.stats()[0]["slots_warm"] == 1


def test_async_pipeline_exceptions_that_look_like_control_flow(serve):
    app = warmslot.App()

    @app.pipeline("a", slots=2, timeout=5.0)
    async def a(event, ctx):
        kind = event.get("kind")
        if kind == "timeout":
            raise TimeoutError("upstream API timed out")
        if kind == "cancelled":
            raise asyncio.CancelledError()
        if kind == "exit":
            raise SystemExit(1)
        if kind == "interrupt":
            raise KeyboardInterrupt()
        await asyncio.sleep(0)
        return {"ok": True}

    server, c = serve(app)
    for kind in ("timeout", "cancelled", "exit", "interrupt"):
        status, _, body = c.post("a", {"kind": kind})
        assert status == 500 and body["error"]["code"] == "pipeline_error", (kind, status, body)
    for _ in range(4):
        assert c.post("a", {})[0:3:2] == (200, {"ok": True})
    assert server.stats()[0]["slots_warm"] == 2, "no async slot may die"


def test_pool_still_grows_after_a_failed_warm_up(serve):
    app = warmslot.App()
    calls = []

    def setup():
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionError("transient: the model server was restarting")
        return None

    @app.pipeline("io", min_slots=1, max_slots=4, setup=setup, timeout=None)
    def io(event, ctx):
        time.sleep(0.05)
        return {}

    server, _ = serve(app)

    def client(i):
        with Client(server.host, server.port) as c:
            for _ in range(10):
                assert c.post("io", {})[0] == 200

    concurrently(8, client)
    assert server.stats()[0]["slots_warm"] == 4, "a failed slot's place is reused"
    assert len(calls) == 5


def test_stop_answers_every_accepted_request_within_the_drain(tmp_path):
    app = warmslot.App()
    ran = []

    @app.pipeline("slow", slots=1, timeout=None)
    def slow(event, ctx):
        time.sleep(0.3)
        ran.append(event["i"])
        return {"i": event["i"]}

    server = app.start("127.0.0.1", 0)
    results = {}

    def client(i):
        c = Client(server.host, server.port)
        try:
            results[i] = c.post("slow", {"i": i})[0]
        except Exception as exc:  # a connection closed without an answer
            results[i] = repr(exc)
        c.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    server.stop(drain=0.4)
    elapsed = time.monotonic() - t0
    for t in threads:
        t.join(10)
    assert sorted(results) == list(range(10))
    assert set(results.values()) <= {200, 503}, results
    assert sorted(i for i, s in results.items() if s == 200) == sorted(ran), "200 exactly for the runs that ran"
    assert 503 in results.values(), "queued work past the drain is refused with 503, not run silently"
    assert elapsed < 3.0, f"stop took {elapsed:.1f}s"


def test_prefer_header_is_parsed_case_insensitively(serve):
    app = warmslot.App()

    @app.pipeline("p")
    def p(event, ctx):
        return {}

    server, c = serve(app)
    assert c.post("p", {}, {"Prefer": "Respond-Async"})[0] == 202
    assert c.post("p", {}, {"Prefer": "wait=10, respond-async"})[0] == 202
    assert c.post("p", {}, {"Prefer": 'handling=lenient; foo="respond-async"'})[0] == 200


def test_a_run_still_going_at_shutdown_is_answered_503_and_commits_nothing():
    app = warmslot.App()
    done = threading.Event()

    @app.pipeline("long", key="k", timeout=None)
    def long(event, ctx):
        ctx.state["touched"] = True
        time.sleep(3.5)
        done.set()
        return {}

    server = app.start("127.0.0.1", 0)
    result = {}

    def client():
        with Client(server.host, server.port) as c:
            try:
                result["r"] = c.post("long", {"k": "a"})
            except Exception as exc:
                result["r"] = repr(exc)

    t = threading.Thread(target=client)
    t.start()
    time.sleep(0.2)
    server.stop(drain=0.2)
    t.join(10)
    status, _, body = result["r"]
    assert status == 503 and body["error"]["code"] == "shutting_down", result
    done.wait(5)
