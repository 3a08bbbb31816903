"""The scheduling policy of the server's threads and worker processes (``App(sched_batch=...)``)."""

from __future__ import annotations

import os
import threading

import process_bots
import pytest
import warmslot
from warmslot import sched

pytestmark = pytest.mark.skipif(not sched.supported(), reason="SCHED_BATCH is a Linux policy")


@pytest.fixture(autouse=True)
def allowed() -> None:
    with sched.batch_policy() as switched:
        if not switched:
            pytest.skip("this system refuses SCHED_BATCH to this thread (or it runs another policy)")


def io_threads() -> list:
    """Native ids of this process's HTTP threads (named by the core)."""
    out = []
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/comm") as f:
            if f.read().strip() == "warmslot-io":
                out.append(int(tid))
    return out


def slot_threads(pipeline: str) -> list:
    return [t.native_id for t in threading.enumerate() if t.name.startswith(f"warmslot-{pipeline}-")]


def worker_pids() -> list:
    me = str(os.getpid())
    out = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = f.read().rsplit(")", 1)[1].split()[1]
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except (OSError, IndexError):
            continue
        if ppid == me and b"warmslot.worker" in cmd:
            out.append(int(entry))
    return out


def policies(ids: list) -> set:
    assert ids, "nothing to look at"
    return {sched.policy(i) for i in ids}


def test_process_slots_run_the_server_and_its_workers_under_sched_batch(serve):
    assert sched.policy() == os.SCHED_OTHER
    server, c = serve(process_bots.echo_app)
    assert c.post("echo", {"user": "a"})[0] == 200
    assert server.sched_batch is True
    assert policies(io_threads()) == {os.SCHED_BATCH}
    assert policies(slot_threads("echo")) == {os.SCHED_BATCH}
    assert policies(worker_pids()) == {os.SCHED_BATCH}, "workers inherit it from their slot thread"
    assert sched.policy() == os.SCHED_OTHER, "the thread that started the server gets its policy back"


def test_sched_batch_false_keeps_the_default_policy(serve):
    server, c = serve(process_bots.nobatch_app)
    assert c.post("plain", {})[0] == 200
    assert server.sched_batch is False
    assert policies(io_threads()) == {os.SCHED_OTHER}
    assert policies(slot_threads("plain")) == {os.SCHED_OTHER}
    assert policies(worker_pids()) == {os.SCHED_OTHER}


def test_thread_slots_keep_the_default_policy_unless_asked(serve):
    for asked, expected in ((None, os.SCHED_OTHER), (True, os.SCHED_BATCH)):
        app = warmslot.App(sched_batch=asked)

        @app.pipeline("t")
        def t(event, ctx):
            return {"policy": sched.policy()}

        server, c = serve(app)
        status, _, body = c.post("t", {})
        assert status == 200
        assert body["policy"] == expected, "the pipeline runs on a slot thread"
        assert policies(io_threads()) == {expected}
        server.stop(drain=1.0)


def test_a_policy_the_caller_chose_is_left_alone(serve):
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    try:
        server, c = serve(process_bots.echo_app)
        assert c.post("echo", {"user": "a"})[0] == 200
        assert server.sched_batch is False, "nothing was switched"
        assert sched.policy() == os.SCHED_BATCH, "not reset to the default afterwards"
        assert policies(worker_pids()) == {os.SCHED_BATCH}, "inherited from the caller, as without warmslot"
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def test_sched_batch_is_checked():
    with pytest.raises(TypeError, match="sched_batch"):
        warmslot.App(sched_batch="yes")  # type: ignore[arg-type]
