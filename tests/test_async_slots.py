"""Async pipelines on thread slots run through the Rust slot loop (`Core.run_thread_slot` with the
async backend), their coroutines on the pipeline's event loop: per-slot concurrency, top-ups while
a slow event runs, cancellation at the deadline, retirement, shutdown, and exceptions that are not
`Exception`s."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time

import pytest
import warmslot
from conftest import Client, concurrently, wait_for
from warmslot import slots


def metric(text: str, name: str, **labels: str) -> float:
    sel = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{name}{{{sel}}} (\S+)$", text, re.M)
    assert m is not None, f"{name}{{{sel}}} not in /metrics"
    return float(m.group(1))


def test_async_events_run_through_the_rust_slot_loop(serve):
    # The slot loop counts an event that waited for a slot's warm-up and then ran on that slot as a
    # cold start (`begin_all`); the former Python event loop never did. It also sets busy slots.
    app = warmslot.App()
    setups = []

    async def setup():
        setups.append(1)
        if len(setups) > 1:
            await asyncio.sleep(0.5)  # the second slot takes a while to warm
        return {"slot": len(setups)}

    @app.pipeline("a", min_slots=1, max_slots=2, key="k", timeout=10.0, setup=setup)
    async def a(event, ctx):
        await asyncio.sleep(event.get("sleep", 0))
        return {"slot": ctx.resources["slot"]}

    server, c = serve(app)
    server.autoscaler.stop()  # the test grows the pool itself
    out = {}

    def slow():
        with Client(server.host, server.port) as other:
            out["slow"] = other.post("a", {"k": "x", "sleep": 1.5})

    t = threading.Thread(target=slow)
    t.start()
    wait_for(lambda: server._core.pool(0)["busy"] == 1, 5, "the first slot to be busy")
    text = c.get("/metrics")[2]
    assert metric(text, "warmslot_slots", pipeline="a", state="busy") == 1
    assert server.grow("a", 2) == 1
    wait_for(lambda: len(setups) == 2, 5, "the second slot's warm-up to begin")
    t0 = time.monotonic()
    status, _, body = c.post("a", {"k": "y"})  # waits for the second slot's warm-up
    assert (status, body) == (200, {"slot": 2})
    assert time.monotonic() - t0 < 1.2, "it ran on the new slot, not after the slow event"
    t.join(10)
    assert out["slow"][0:3:2] == (200, {"slot": 1})
    assert server._core.pool(0)["cold_starts"] == 1
    assert metric(c.get("/metrics")[2], "warmslot_cold_starts_total", pipeline="a") == 1


def test_concurrency_runs_that_many_coroutines_at_once_on_one_slot(serve):
    app = warmslot.App()
    now = {"n": 0, "max": 0}
    loops = set()

    @app.pipeline("llm", slots=1, concurrency=4, timeout=10.0)
    async def llm(event, ctx):
        loops.add(id(asyncio.get_running_loop()))
        now["n"] += 1
        now["max"] = max(now["max"], now["n"])
        await asyncio.sleep(0.3)
        now["n"] -= 1
        return {"i": event["i"]}

    server, _ = serve(app)

    def client(i):
        with Client(server.host, server.port) as c:
            return c.post("llm", {"i": i})

    t0 = time.monotonic()
    results = concurrently(8, client)
    elapsed = time.monotonic() - t0
    assert [r[0:3:2] for r in results] == [(200, {"i": i}) for i in range(8)]
    assert now["max"] == 4, f"one slot with concurrency=4 ran {now['max']} at once"
    assert elapsed < 1.5, f"8 events of 0.3 s, 4 at a time, took {elapsed:.2f} s"
    assert len(loops) == 1


def test_keyed_events_on_a_concurrent_slot_keep_their_order_and_never_overlap(serve):
    app = warmslot.App()
    running = set()
    overlaps = []

    @app.pipeline("chat", slots=1, concurrency=8, key="user", timeout=10.0)
    async def chat(event, ctx):
        if ctx.key in running:
            overlaps.append(ctx.key)
        running.add(ctx.key)
        await asyncio.sleep(0.01)
        running.discard(ctx.key)
        ctx.state.setdefault("seen", []).append(event["n"])
        return {"seen": ctx.state["seen"]}

    server, _ = serve(app)

    def client(u):
        with Client(server.host, server.port) as c:
            return [c.post("chat", {"user": f"u{u}", "n": n})[2]["seen"] for n in range(10)]

    for seen in concurrently(6, client):
        assert seen[-1] == list(range(10))
    assert overlaps == []


def test_a_slow_event_does_not_keep_its_slot_from_taking_new_work(serve):
    # The backend tops itself up (`More`) as events finish: with one slot and concurrency=2, fast
    # events go through one after another while a slow one runs beside them.
    app = warmslot.App()

    @app.pipeline("p", slots=1, concurrency=2, timeout=10.0)
    async def p(event, ctx):
        await asyncio.sleep(event["sleep"])
        return {}

    server, c = serve(app)
    out = {}

    def slow():
        with Client(server.host, server.port) as other:
            out["slow"] = other.post("p", {"sleep": 2.0})[0]

    t = threading.Thread(target=slow)
    t.start()
    wait_for(lambda: server._core.pool(0)["busy"] == 1, 5, "the slow event to run")
    t0 = time.monotonic()
    for _ in range(5):
        assert c.post("p", {"sleep": 0.01})[0] == 200
    assert time.monotonic() - t0 < 1.0, "fast events waited for the slow one"
    assert "slow" not in out
    t.join(10)
    assert out["slow"] == 200


def test_the_deadline_cancels_the_coroutine_and_a_stubborn_one_is_abandoned(serve):
    app = warmslot.App()
    events = []

    @app.pipeline("t", slots=1, timeout=0.2)
    async def t(event, ctx):
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            events.append(("cancelled", event["kind"], time.monotonic()))
            if event["kind"] == "stubborn":
                await asyncio.sleep(4)  # ignores its cancellation for a while
            raise
        return {}

    server, c = serve(app)
    t0 = time.monotonic()
    status, _, body = c.post("t", {"kind": "polite"})
    assert status == 504 and body["error"]["code"] == "pipeline_timeout"
    wait_for(lambda: events, 2, "the coroutine to be cancelled")
    assert events[0][1] == "polite" and events[0][2] - t0 < 1.0
    # A coroutine that ignores its cancellation is left behind about a second after its
    # deadline: the slot goes on (with concurrency=1, it would otherwise wait 4 s for it).
    assert c.post("t", {"kind": "stubborn"})[0] == 504
    t1 = time.monotonic()
    status, _, body = c.post("t", {"kind": "polite"})
    assert status == 504
    assert time.monotonic() - t1 < 3.0, "the slot waited for a coroutine past its deadline"


def test_async_slots_retire_through_the_slot_loop(serve):
    app = warmslot.App()

    @app.pipeline("a", min_slots=1, max_slots=3, timeout=10.0)
    async def a(event, ctx):
        await asyncio.sleep(0.01)
        return {"ok": True}

    server, c = serve(app)
    server.autoscaler.stop()
    rt = server.runtimes[0]
    assert server.grow("a", 3) == 2
    wait_for(lambda: server._core.pool(0)["warm"] == 3, 10, "3 warm slots")
    rt.scale_to(1)
    wait_for(lambda: server._core.pool(0)["warm"] == 1, 10, "the pool to shrink to 1")
    assert rt.started == 1
    for _ in range(3):
        assert c.post("a", {})[0:3:2] == (200, {"ok": True})
    text = c.get("/metrics")[2]
    assert metric(text, "warmslot_slots", pipeline="a", state="warm") == 1


def test_shutdown_answers_and_cancels_a_coroutine_without_a_deadline():
    app = warmslot.App()
    cancelled = threading.Event()

    @app.pipeline("forever", slots=1, timeout=None)
    async def forever(event, ctx):
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {}

    server = app.start("127.0.0.1", 0)
    out = {}

    def client():
        with Client(server.host, server.port) as c:
            out["r"] = c.post("forever", {})

    t = threading.Thread(target=client)
    t.start()
    wait_for(lambda: server._core.pool(0)["busy"] == 1, 5, "the event to run")
    t0 = time.monotonic()
    server.stop(drain=0.1)
    assert time.monotonic() - t0 < 5.0
    t.join(5)
    assert out["r"][0] == 503 and out["r"][2]["error"]["code"] == "shutting_down"
    assert cancelled.wait(2), "the coroutine was never cancelled"
    left = [t.name for t in threading.enumerate() if t.name.startswith("warmslot-forever")]
    assert left == []


def test_async_setup_runs_on_the_loop_that_runs_the_pipeline(serve):
    app = warmslot.App()

    async def setup():
        await asyncio.sleep(0)
        return {"loop": id(asyncio.get_running_loop()), "lock": asyncio.Lock()}

    @app.pipeline("s", slots=2, setup=setup)
    async def s(event, ctx):
        async with ctx.resources["lock"]:  # a primitive made in setup works here
            await asyncio.sleep(0)
        return {"same_loop": ctx.resources["loop"] == id(asyncio.get_running_loop())}

    server, c = serve(app)
    for _ in range(4):
        assert c.post("s", {})[2] == {"same_loop": True}


def test_a_concurrent_async_slot_commits_each_keys_state_to_sqlite(tmp_path):
    # A store that does I/O: the slot thread commits each result as it comes back (no GIL); the
    # state survives a restart.
    url = f"sqlite:///{tmp_path / 'state.db'}"

    def make():
        app = warmslot.App(state=url)

        @app.pipeline("count", key="user", slots=1, concurrency=4, timeout=10.0)
        async def count(event, ctx):
            await asyncio.sleep(0.005)
            ctx.state["n"] = ctx.state.get("n", 0) + 1
            if event.get("fail"):
                raise RuntimeError("no commit")
            return ctx.state["n"]

        return app

    server = make().start("127.0.0.1", 0)
    try:

        def client(u):
            with Client(server.host, server.port) as c:
                out = [c.post("count", {"user": f"u{u}"})[2] for _ in range(5)]
                assert c.post("count", {"user": f"u{u}", "fail": True})[0] == 500
                return out

        assert concurrently(4, client) == [[1, 2, 3, 4, 5]] * 4
    finally:
        server.stop()
    server = make().start("127.0.0.1", 0)
    try:
        with Client(server.host, server.port) as c:
            assert c.post("count", {"user": "u0"})[0:3:2] == (200, 6)
    finally:
        server.stop()


# NOTE: the behaviour chosen for a BaseException that is not an Exception:
# - raised by the pipeline while it runs an event (SystemExit, KeyboardInterrupt, a CancelledError
#   of its own): that event fails `pipeline_error`, its message naming the exception, and the
#   runner logs it with its traceback (warning); the slot goes on (as sync and process slots do:
#   nothing one event does may end a slot that serves others).
# - raised by the slot's own machinery: it is not caught; the slot loop fails what the slot runs
#   (`slot_crashed`), the exception ends the slot thread (`threading.excepthook`) after the slot
#   is freed, and the pool warms a replacement.
@pytest.mark.parametrize("exc", [SystemExit, KeyboardInterrupt])
def test_a_base_exception_from_an_async_pipeline_fails_its_event_loudly(serve, caplog, exc):
    app = warmslot.App()

    @app.pipeline("a", slots=1, timeout=5.0)
    async def a(event, ctx):
        await asyncio.sleep(0)
        if event.get("raise"):
            raise exc("bye")
        return {"ok": True}

    server, c = serve(app)
    with caplog.at_level(logging.WARNING, logger="warmslot"):
        status, _, body = c.post("a", {"raise": True})
    assert status == 500 and body["error"]["code"] == "pipeline_error"
    assert exc.__name__ in body["error"]["message"]
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is exc]
    assert logged, "the exception was not logged"
    assert c.post("a", {})[0:3:2] == (200, {"ok": True})
    assert server._core.pool(0)["warm"] == 1


def test_a_base_exception_in_the_slot_machinery_ends_the_slot_thread_which_is_replaced(serve, monkeypatch):
    app = warmslot.App()

    @app.pipeline("a", slots=1, timeout=5.0, retries=0)
    async def a(event, ctx):
        return {"ok": True}

    server, c = serve(app)
    real_submit = slots.AsyncSlot.submit
    raised = []

    def submit(self, events):
        if not raised:
            raised.append(1)
            raise KeyboardInterrupt("from the slot machinery")
        return real_submit(self, events)

    hooked = []
    monkeypatch.setattr(slots.AsyncSlot, "submit", submit)
    monkeypatch.setattr(threading, "excepthook", lambda args: hooked.append(args))
    status, _, body = c.post("a", {})
    assert status == 500 and body["error"]["code"] == "slot_crashed", body
    assert "KeyboardInterrupt" in body["error"]["message"]
    wait_for(lambda: hooked, 5, "the slot thread to end with the exception")
    assert hooked[0].exc_type is KeyboardInterrupt and hooked[0].thread.name.startswith("warmslot-a-")
    # The pool warms a replacement (min_slots), which serves.
    wait_for(lambda: server._core.pool(0)["warm"] == 1 and c.post("a", {})[0] == 200, 10, "a replacement slot")


def test_a_pipeline_that_cancels_its_own_task_fails_its_event_instead_of_hanging(serve):
    # Nobody else cancelled the task, so the slot still waits for its result: it must get one.
    app = warmslot.App()

    @app.pipeline("selfcancel", key="k", timeout=None)
    async def selfcancel(event, ctx):
        if event.get("cancel"):
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            await asyncio.sleep(1)
        return {"ok": True}

    _, c = serve(app)
    status, _, body = c.post("selfcancel", {"k": "a", "cancel": True})
    assert status == 500 and body["error"]["code"] == "pipeline_error", body
    assert c.post("selfcancel", {"k": "a"})[2] == {"ok": True}, "the key's lane was released"
