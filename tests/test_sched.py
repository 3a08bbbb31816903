"""The scheduling policy of the server's threads and worker processes (``App(sched_batch=...)``)."""

from __future__ import annotations

import os
import socket
import sys
import threading

import process_bots
import pytest
import warmslot
from conftest import workers
from warmslot import sched

linux = pytest.mark.skipif(sys.platform != "linux", reason="SCHED_BATCH is a Linux policy")


@pytest.fixture
def batch_allowed() -> None:
    """Skips where the kernel refuses SCHED_BATCH to this thread (asked directly, not through
    the code under test); leaves the thread under the default policy."""
    assert sched.policy() == os.SCHED_OTHER, "the tests start under the default policy"
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError as exc:
        pytest.skip(f"this system refuses SCHED_BATCH: {exc}")
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def io_threads() -> set:
    """Native ids of this process's HTTP threads (named by the core)."""
    out = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() == "warmslot-io":
                    out.add(int(tid))
        except OSError:
            continue
    return out


def slot_threads(pipeline: str) -> set:
    return {t.native_id for t in threading.enumerate() if t.name.startswith(f"warmslot-{pipeline}-")}


def worker_pids() -> set:
    return {w[0] for w in workers()}


def policies(ids: set) -> set:
    assert ids, "nothing to look at"
    return {sched.policy(i) for i in ids}


def new(before: set, now: set) -> set:
    """The threads or processes of the server under test (another test's may still be around)."""
    return now - before


@linux
def test_process_slots_run_the_server_and_its_workers_under_sched_batch(serve, batch_allowed):
    io_before, workers_before = io_threads(), worker_pids()
    server, c = serve(process_bots.echo_app)
    assert c.post("echo", {"user": "a"})[0] == 200
    assert server.sched_switched is True
    assert policies(new(io_before, io_threads())) == {os.SCHED_BATCH}
    assert policies(slot_threads("echo")) == {os.SCHED_BATCH}
    workers = new(workers_before, worker_pids())
    assert policies(workers) == {os.SCHED_BATCH}, "workers inherit it from their slot thread"
    assert sched.policy() == os.SCHED_OTHER, "the thread that started the server gets its policy back"

    # Slots added later from this (default-policy) thread get it too, and so do their workers.
    before = slot_threads("echo")
    assert server.grow("echo", 2) == 1
    assert c.post("echo", {"user": "b"})[0] == 200
    assert policies(slot_threads("echo") - before) == {os.SCHED_BATCH}
    assert policies(new(workers_before | workers, worker_pids())) == {os.SCHED_BATCH}
    assert sched.policy() == os.SCHED_OTHER


@linux
def test_sched_batch_false_keeps_the_default_policy(serve, batch_allowed):
    io_before, workers_before = io_threads(), worker_pids()
    server, c = serve(process_bots.nobatch_app)
    assert c.post("plain", {})[0] == 200
    assert server.sched_switched is False
    assert policies(new(io_before, io_threads())) == {os.SCHED_OTHER}
    assert policies(slot_threads("plain")) == {os.SCHED_OTHER}
    assert policies(new(workers_before, worker_pids())) == {os.SCHED_OTHER}


@linux
def test_thread_slots_keep_the_default_policy_unless_asked(serve, batch_allowed):
    for asked, expected in ((None, os.SCHED_OTHER), (True, os.SCHED_BATCH)):
        app = warmslot.App(sched_batch=asked)

        @app.pipeline("t")
        def t(event, ctx):
            return {"policy": sched.policy()}

        io_before = io_threads()
        server, c = serve(app)
        status, _, body = c.post("t", {})
        assert status == 200
        assert body["policy"] == expected, "the pipeline runs on a slot thread"
        assert policies(new(io_before, io_threads())) == {expected}
        server.stop(drain=1.0)


@linux
def test_a_policy_the_caller_chose_is_left_alone(serve, batch_allowed):
    workers_before = worker_pids()
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    try:
        server, c = serve(process_bots.echo_app)
        assert c.post("echo", {"user": "a"})[0] == 200
        assert server.sched_switched is False, "nothing was switched"
        assert sched.policy() == os.SCHED_BATCH, "not reset to the default afterwards"
        workers = new(workers_before, worker_pids())
        assert policies(workers) == {os.SCHED_BATCH}, "inherited from the caller, as without warmslot"
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


@linux
def test_a_failed_start_gives_the_policy_back(batch_allowed):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(Exception, match="bind|in use"):
            process_bots.echo_app.start("127.0.0.1", taken.getsockname()[1])
    assert sched.policy() == os.SCHED_OTHER


def test_sched_batch_is_checked(monkeypatch):
    with pytest.raises(TypeError, match="sched_batch"):
        warmslot.App(sched_batch="yes")  # type: ignore[arg-type]
    monkeypatch.setenv("WARMSLOT_SCHED_BATCH", "0")
    assert warmslot.App().sched_batch is False
    monkeypatch.setenv("WARMSLOT_SCHED_BATCH", "yes")
    assert warmslot.App().sched_batch is True
    assert warmslot.App(sched_batch=False).sched_batch is False, "the argument wins"
    monkeypatch.setenv("WARMSLOT_SCHED_BATCH", "maybe")
    with pytest.raises(ValueError, match="WARMSLOT_SCHED_BATCH"):
        warmslot.App()
