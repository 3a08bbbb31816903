"""Apps with process-isolated pipelines for tests/test_process_slots.py. Worker processes import
this file, so the apps live at module level."""

from __future__ import annotations

import asyncio
import ctypes
import os
import tempfile
import time

import warmslot

crash_app = warmslot.App()


@crash_app.pipeline("count", slots=2, key="user", isolation="process", timeout=5.0)
def count(event, ctx):
    crash = event.get("crash")
    if crash == "exit":
        os._exit(3)
    if crash == "segv":
        ctypes.string_at(0)
    if event.get("sleep"):
        time.sleep(event["sleep"])
    ctx.state["n"] = ctx.state.get("n", 0) + 1
    return {"n": ctx.state["n"], "pid": os.getpid()}


# The same bot on SQLite (results of a batch commit in one transaction). Worker processes import
# this module too but never open the store: only the server does.
SQLITE_PATH = os.path.join(tempfile.gettempdir(), "warmslot-process-bots.db")
sqlite_app = warmslot.App(state=f"sqlite:///{SQLITE_PATH}")
sqlite_app.pipeline("count", slots=2, key="user", isolation="process", timeout=5.0)(count)


# The counter on SQLite in each isolation, for a test that corrupts a stored state.
STATE_PATHS = {
    iso: os.path.join(tempfile.gettempdir(), f"warmslot-process-bots-state-{iso}.db") for iso in ("thread", "process")
}
state_apps = {iso: warmslot.App(state=f"sqlite:///{path}") for iso, path in STATE_PATHS.items()}
state_thread_app, state_process_app = state_apps["thread"], state_apps["process"]  # module-level names
for _iso, _app in state_apps.items():
    _app.pipeline("count", slots=1, key="user", isolation=_iso, timeout=5.0)(count)


# An async bot on SQLite whose slots run several events at once: results commit within a moment,
# not when the slot's stream of top-ups ends.
SQLITE_ASYNC_PATH = os.path.join(tempfile.gettempdir(), "warmslot-process-bots-async.db")
sqlite_async_app = warmslot.App(state=f"sqlite:///{SQLITE_ASYNC_PATH}")


@sqlite_async_app.pipeline("nap", slots=1, key="user", isolation="process", concurrency=4, max_batch=8, timeout=3.0)
async def nap(event, ctx):
    await asyncio.sleep(event.get("sleep", 0.2))
    ctx.state["n"] = ctx.state.get("n", 0) + 1
    return {"n": ctx.state["n"]}


hang_app = warmslot.App()


@hang_app.pipeline("hang", slots=1, isolation="process", timeout=0.5)
def hang(event, ctx):
    if event.get("hang"):
        time.sleep(60)
    return {"ok": True, "pid": os.getpid()}


recycle_app = warmslot.App()


@recycle_app.pipeline("recycle", slots=1, key="k", isolation="process", max_executions=5)
def recycle(event, ctx):
    ctx.state["n"] = ctx.state.get("n", 0) + 1
    return {"n": ctx.state["n"], "pid": os.getpid()}


memory_app = warmslot.App()


@memory_app.pipeline("grow", slots=1, isolation="process", max_memory_mb=1)
def grow(event, ctx):
    return {"pid": os.getpid()}


class Warm:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.warmed_at = time.time()

    def __call__(self, event, ctx):
        return {"pid": self.pid, "warmed_at": self.warmed_at, "resources": ctx.resources}


class_app = warmslot.App(isolation="process")
class_app.pipeline("warm", slots=2, setup=lambda: {"model": "loaded"})(Warm)


class Broken:
    def __init__(self) -> None:
        raise RuntimeError("model file missing")

    def __call__(self, event, ctx):
        return {}


broken_app = warmslot.App()
broken_app.pipeline("broken", slots=1, isolation="process")(Broken)


async_app = warmslot.App()


@async_app.pipeline("llm", slots=1, key="k", isolation="process", concurrency=4, timeout=5.0)
async def llm(event, ctx):
    await asyncio.sleep(event.get("sleep", 0))
    ctx.state["n"] = ctx.state.get("n", 0) + 1
    return {"n": ctx.state["n"], "pid": os.getpid()}


class Flaky:
    """Warms up unless the file named by WARMSLOT_TEST_FLAKY exists."""

    def __init__(self) -> None:
        marker = os.environ.get("WARMSLOT_TEST_FLAKY")
        if marker and os.path.exists(marker):
            raise RuntimeError("warm-up refused by the test")

    def __call__(self, event, ctx):
        if event.get("exit"):
            os._exit(1)
        return {"pid": os.getpid()}


flaky_app = warmslot.App()
flaky_app.pipeline("flaky", slots=1, isolation="process")(Flaky)


retry_app = warmslot.App()


@retry_app.pipeline("once", slots=1, key="user", isolation="process", retries=1, retry_backoff=0.05, reply="async")
def crash_once(event, ctx):
    # The first attempt kills its worker (a slot crash); the retry, in a fresh worker, succeeds.
    marker = event["marker"]
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
    ctx.state["n"] = ctx.state.get("n", 0) + 1
    return {"n": ctx.state["n"]}


# Echoes what the worker decoded, keyed by a body field, with deliveries deduplicated by another
# body field: the ingress keeps only the key of a process pipeline's body (the worker parses the
# bytes), except when a dedupe field needs the document.
echo_app = warmslot.App()


@echo_app.pipeline("echo", key="user", isolation="process")
def echo(event, ctx):
    return {"event": event, "key": ctx.key}


@echo_app.pipeline("once", key="user", isolation="process", dedupe="id")
def once(event, ctx):
    ctx.state["runs"] = ctx.state.get("runs", 0) + 1
    return {"runs": ctx.state["runs"]}


# Process slots under the default scheduling policy (App(sched_batch=False)).
nobatch_app = warmslot.App(sched_batch=False)


@nobatch_app.pipeline("plain", isolation="process")
def plain(event, ctx):
    return {"pid": os.getpid()}
