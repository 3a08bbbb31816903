"""Process slots: warm worker processes that survive crashes and hangs (issue 6)."""

from __future__ import annotations

import json
import os
import time

import process_bots
import pytest
import warmslot
from conftest import Client, children, concurrently, wait_for, workers
from warmslot import _core


def test_workers_are_warm_before_healthz_and_run_in_other_processes(serve):
    server, c = serve(process_bots.class_app)
    assert c.get("/healthz")[0] == 200
    status, _, body = c.post("warm", {"x": 1})
    assert status == 200
    assert body["pid"] != os.getpid(), "the pipeline runs in a worker process"
    assert body["resources"] == {"model": "loaded"}
    assert body["warmed_at"] < time.time()
    pids = {c.post("warm", {})[2]["pid"] for _ in range(20)} | {body["pid"]}
    assert pids <= {w[0] for w in workers()}
    assert len(workers()) == 2


@pytest.mark.parametrize("crash", ["exit", "segv"])
def test_a_crash_fails_only_its_execution_and_the_pool_recovers(serve, crash):
    server, c = serve(process_bots.crash_app)
    before = {w[0] for w in workers()}
    assert len(before) == 2

    def other(i: int):
        with Client(server.host, server.port) as cc:
            return [cc.post("count", {"user": f"u{i}"})[0] for _ in range(10)]

    import threading

    results: dict = {}
    t = threading.Thread(target=lambda: results.setdefault("others", concurrently(4, other)))
    t.start()
    status, _, body = c.post("count", {"user": "victim", "crash": crash})
    t.join()
    assert status == 500, body
    assert body["error"]["code"] == "slot_crashed"
    expected = "exited with code 3" if crash == "exit" else "signal 11 (SIGSEGV)"
    assert expected in body["error"]["message"]
    assert all(s == 200 for r in results["others"] for s in r), results
    # A fresh warm worker replaces the dead one; the dead one is reaped (no zombie).
    wait_for(lambda: server._core.pool(0)["warm"] == 2, 3.0, "the pool to be full again")
    assert all(state != "Z" for _, state, _ in children()), children()
    after = {w[0] for w in workers()}
    assert len(after) == 2 and after != before
    pool = server._core.pool(0)
    assert pool["crashes"]["exit" if crash == "exit" else "signal"] == 1
    assert pool["warmups"]["replace"] == 1
    # Nothing was committed for the crashed run: the victim key starts from scratch.
    assert c.post("count", {"user": "victim"})[2]["n"] == 1
    metrics = c.get("/metrics")[2]
    assert 'warmslot_slot_crashes_total{pipeline="count",reason="' in metrics


def test_per_key_counts_stay_exact_across_worker_processes(serve):
    server, c = serve(process_bots.crash_app)
    keys = [f"k{i}" for i in range(4)]

    def client(i: int):
        with Client(server.host, server.port) as cc:
            return [cc.post("count", {"user": keys[(i + j) % 4]})[0] for j in range(25)]

    assert all(s == 200 for r in concurrently(8, client) for s in r)
    pids = set()
    for k in keys:
        status, _, body = c.post("count", {"user": k})
        assert (status, body["n"]) == (200, 51), body
        pids.add(body["pid"])


def test_on_sqlite_a_batch_commits_once_and_a_crash_commits_nothing(serve):
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(process_bots.SQLITE_PATH + suffix):
            os.remove(process_bots.SQLITE_PATH + suffix)
    server, c = serve(process_bots.sqlite_app)
    keys = [f"k{i}" for i in range(4)]

    def client(i: int):
        with Client(server.host, server.port) as cc:
            return [cc.post("count", {"user": keys[(i + j) % 4]}) for j in range(25)]

    def victim(_: int):
        with Client(server.host, server.port) as cc:
            return [cc.post("count", {"user": "victim", "crash": "exit"})]

    results = concurrently(9, lambda i: victim(i) if i == 8 else client(i))
    crashed = results[8][0]
    assert crashed[0] == 500 and crashed[2]["error"]["code"] == "slot_crashed", crashed
    assert all(r[0] == 200 for rs in results[:8] for r in rs)
    for k in keys:
        status, headers, body = c.post("count", {"user": k})
        assert (status, body["n"]) == (200, 51), body
    assert c.post("count", {"user": "victim"})[2]["n"] == 1, "the crashed run committed nothing"
    # Each execution's record is durable at commit.
    status, headers, _ = results[0][0]
    record = c.get(f"/executions/{headers['x-warmslot-execution-id']}")
    assert record[0] == 200 and record[2]["status"] == "succeeded", record


def test_on_sqlite_a_concurrent_slot_commits_each_result_without_waiting_for_the_others(serve):
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(process_bots.SQLITE_ASYNC_PATH + suffix):
            os.remove(process_bots.SQLITE_ASYNC_PATH + suffix)
    server, c = serve(process_bots.sqlite_async_app)
    import threading

    slow: dict = {}
    t = threading.Thread(target=lambda: slow.setdefault("r", c.post("nap", {"user": "slow", "sleep": 2.5})))
    t.start()
    wait_for(lambda: server._core.pool(0)["busy"] == 1, 3.0, "the slow event to run")

    def fast(i: int):
        with Client(server.host, server.port) as cc:
            started = time.monotonic()
            status, _, body = cc.post("nap", {"user": f"u{i}", "sleep": 0.05})
            return status, time.monotonic() - started, body

    # They run beside the slow one in the same worker; each commits and answers as it ends, not
    # when the slow one does.
    results = concurrently(3, fast)
    assert [r[0] for r in results] == [200, 200, 200], results
    assert max(r[1] for r in results) < 1.5, results
    assert "r" not in slow, "the slow one is still running"
    t.join()
    assert slow["r"][0] == 200 and slow["r"][2] == {"n": 1}


def test_a_hung_run_gets_504_and_the_slot_is_replaced(serve):
    server, c = serve(process_bots.hang_app)
    first = c.post("hang", {})[2]["pid"]
    t0 = time.monotonic()
    status, _, body = c.post("hang", {"hang": True})
    assert status == 504 and body["error"]["code"] == "pipeline_timeout"
    # The next event is served by a fresh worker once the hung one is killed.
    while True:
        status, _, body = c.post("hang", {})
        if status == 200:
            break
        assert status == 504, body  # queued behind the hung run past its own deadline
        assert time.monotonic() - t0 < 5
    assert time.monotonic() - t0 < 3.5
    assert body["pid"] != first
    wait_for(lambda: server._core.pool(0)["crashes"]["hang"] == 1, 3.0, "the hang to be counted")
    assert all(state != "Z" for _, state, _ in children())


def test_workers_recycle_after_max_executions(serve):
    server, c = serve(process_bots.recycle_app)
    pids = []
    for i in range(1, 21):
        status, _, body = c.post("recycle", {"k": "a"})
        assert (status, body["n"]) == (200, i), body
        pids.append(body["pid"])
    assert len(set(pids)) >= 3, "recycled about every 5 executions (plus jitter)"
    assert server._core.pool(0)["recycles"]["max_executions"] >= 2
    assert len(workers()) == 1


def test_workers_recycle_above_max_memory(serve):
    server, c = serve(process_bots.memory_app)
    pids = {c.post("grow", {})[2]["pid"] for _ in range(3)}
    assert len(pids) >= 2, "every worker is above 1 MB of RSS, so each is recycled after a batch"
    assert server._core.pool(0)["recycles"]["max_memory"] >= 1


def test_a_worker_that_cannot_warm_up_fails_the_start_clearly():
    with pytest.raises(RuntimeError, match="model file missing"):
        process_bots.broken_app.start("127.0.0.1", 0, timeout=20)
    wait_for(lambda: not workers(), 5.0, "no worker left behind")


def test_an_app_workers_cannot_import_fails_at_start():
    app = warmslot.App()

    @app.pipeline("local", isolation="process")
    def local(event, ctx):
        return {}

    with pytest.raises(RuntimeError, match="cannot import"):
        app.start("127.0.0.1", 0)


def test_async_pipelines_run_concurrently_on_the_workers_loop(serve):
    server, c = serve(process_bots.async_app)

    def client(i: int):
        with Client(server.host, server.port) as cc:
            return cc.post("llm", {"k": f"k{i}", "sleep": 0.3})

    t0 = time.monotonic()
    out = concurrently(4, client)
    assert all(s == 200 for s, _, _ in out), out
    assert time.monotonic() - t0 < 1.1, "4 events of distinct keys share one slot at once (concurrency=4)"
    assert c.post("llm", {"k": "k0"})[2]["n"] == 2


def test_stop_leaves_no_worker_behind():
    server = process_bots.crash_app.start("127.0.0.1", 0)
    assert len(workers()) == 2
    server.stop(drain=1.0)
    wait_for(lambda: not workers(), 5.0, "workers to exit")
    assert all(state != "Z" for _, state, _ in children())


def test_a_slot_that_keeps_failing_to_warm_backs_off_and_healthz_says_so(serve, tmp_path, monkeypatch):
    marker = tmp_path / "refuse"
    monkeypatch.setenv("WARMSLOT_TEST_FLAKY", str(marker))
    server, c = serve(process_bots.flaky_app)
    assert c.get("/healthz")[0] == 200
    marker.write_text("x")
    assert c.post("flaky", {"exit": True})[0] == 500

    # The replacement cannot warm up: /healthz turns 503 and names the problem.
    def unhealthy():
        status, _, body = c.get("/healthz")
        return status == 503 and "warm-up refused by the test" in body["pipelines"]["flaky"].get("problem", "")

    wait_for(unhealthy, 5.0, "/healthz to report the failing warm-up")
    marker.unlink()
    wait_for(lambda: c.get("/healthz")[0] == 200, 10.0, "the slot to warm up again after its backoff")
    assert c.post("flaky", {})[0] == 200
    assert "problem" not in c.get("/healthz")[2]["pipelines"]["flaky"]


def test_a_busy_concurrent_slot_releases_each_key_as_its_event_ends(serve):
    server, c = serve(process_bots.async_app)
    stop = time.monotonic() + 2.0

    def load(i: int):
        with Client(server.host, server.port) as cc:
            n = 0
            while time.monotonic() < stop:
                assert cc.post("llm", {"k": f"load{i}", "sleep": 0.01})[0] == 200
                n += 1
            return n

    import threading

    t = threading.Thread(target=lambda: concurrently(3, load))
    t.start()
    try:
        # While the slot never runs dry, one key's events still follow each other promptly.
        for _ in range(5):
            t0 = time.monotonic()
            status, _, body = c.post("llm", {"k": "x"})
            assert status == 200, body
            assert time.monotonic() - t0 < 1.0
    finally:
        t.join()


def test_workers_start_when_the_server_is_pid_1(tmp_path):
    """In a container without an init, the server is PID 1: its workers must still warm up."""
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) to run the server as PID 1 of a new PID namespace")
    script = tmp_path / "pid1.py"
    script.write_text(
        "import os, sys, urllib.request\n"
        f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "import process_bots\n"
        "assert os.getpid() == 1\n"
        "server = process_bots.hang_app.start('127.0.0.1', 0, timeout=20)\n"
        "req = urllib.request.Request(server.url + '/hooks/hang', data=b'{}', method='POST')\n"
        "print(urllib.request.urlopen(req).status)\n"
        "server.stop()\n"
    )
    out = subprocess.run(
        ["unshare", "-p", "-f", "--mount-proc", sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.strip() == "200", out.stdout + out.stderr


def test_workers_decode_bodies_as_python_json_does_and_the_ingress_finds_the_key(serve):
    server, c = serve(process_bots.echo_app)
    bodies = [
        b'{"user":"a","text":"caf\\u00e9 \\ud83d\\ude00",'
        b'"n":[1,-2,3.5,1e300,18446744073709551615,-9223372036854775808]}',
        b'{"user":7,"deep":{"x":[{"y":null},true,false,{}]},"s":"\\"\\\\\\/\\n"}',
        b'{"user":"first","z":1,"a":2,"user":"last"}',
        b'{"user":1.5e3,"unicode":"\xc3\xa9\xe2\x82\xac"}',
        b'{"text":"no key"}',
        b'[1,2,{"user":"nested is not the key"}]',
    ]
    for body in bodies:
        status, _, reply = c.post("echo", body, {"Content-Type": "application/json"}, raw=True)
        assert status == 200, (body, reply)
        expected = json.loads(body)
        assert reply["event"] == expected, body
        if isinstance(expected, dict):
            assert list(reply["event"]) == list(expected), "fields in order, a repeated one where it first was"
    keys = [c.post("echo", b, raw=True)[2]["key"] for b in bodies]
    assert keys == ["a", "7", "last", "1500.0", None, None]
    # What a worker could not decode is refused at the ingress, with the thread slots' errors.
    for bad in [
        b'{"user":"x","n":' + b"9" * 400 + b"}",
        b"[" * 200 + b"]" * 200,
        b'{"user":"\\ud800"}',
        b'{"user":{}}',
    ]:
        status, _, reply = c.post("echo", bad, raw=True)
        assert status == 400, (bad[:30], reply)
        assert reply["error"]["code"] in ("invalid_json", "bad_request"), reply


def test_a_process_pipeline_deduplicates_by_a_body_field(serve):
    server, c = serve(process_bots.echo_app)
    replies = [c.post("once", {"user": "u", "id": "evt_1", "attempt": i}) for i in range(3)]
    assert [r[0] for r in replies] == [200, 200, 200]
    assert [r[2]["runs"] for r in replies] == [1, 1, 1], "the repeats got the first execution's result"
    assert c.post("once", {"user": "u", "id": "evt_2"})[2]["runs"] == 2


def test_thread_slot_entry_points_refuse_a_process_pipeline(serve):
    # A process pipeline's events carry no parsed document (its workers parse the bytes): a thread
    # slot must never be pointed at one.
    server, _ = serve(process_bots.echo_app)
    with pytest.raises(ValueError, match="does not use thread slots"):
        server._core.run_thread_slot(0, 0, lambda *a: None, _core.WarmupReason.DEMAND, 0.0)
    with pytest.raises(ValueError, match="does not use thread slots"):
        server._core.run_thread_slot(0, 0, object(), _core.WarmupReason.DEMAND, 0.0, True)


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_a_stored_state_that_cannot_be_decoded_is_that_events_state_error(serve, isolation):
    import sqlite3

    db = process_bots.STATE_PATHS[isolation]
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.remove(db + suffix)
    server, c = serve(process_bots.state_apps[isolation])
    assert c.post("count", {"user": "ok"})[2]["n"] == 1
    assert c.post("count", {"user": "bad"})[2]["n"] == 1
    pids = {w[0] for w in workers()}
    assert len(pids) == (1 if isolation == "process" else 0)
    with sqlite3.connect(db, timeout=5.0) as conn:  # another writer, as a bad migration would be
        changed = conn.execute("UPDATE warmslot_state SET state = ? WHERE key = 'bad'", (b'{"n": 1, oops',))
        assert changed.rowcount == 1
    status, _, body = c.post("count", {"user": "bad"})
    assert (status, body["error"]["code"]) == (500, "state_error"), body
    assert "cannot decode stored state" in body["error"]["message"]
    # Only that event failed: the slot (and its worker process) serves the next ones.
    assert c.post("count", {"user": "ok"})[2]["n"] == 2
    assert {w[0] for w in workers()} == pids
    assert sum(server._core.pool(0)["crashes"].values()) == 0
