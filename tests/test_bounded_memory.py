"""Bounded memory: execution records within max_record_bytes, memory-store keys within max_keys
(least recently used evicted), 128-bit execution ids, missing keys rejected on request."""

from __future__ import annotations

import re

import pytest
import warmslot
from conftest import poll


def test_memory_store_evicts_the_least_recently_used_key(serve):
    app = warmslot.App(max_keys=2)

    @app.pipeline("count", key="user", slots=1)
    def count(event, ctx):
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        return {"n": ctx.state["n"]}

    server, c = serve(app)
    n = lambda user: c.post("count", {"user": user})[2]["n"]  # noqa: E731
    assert [n("a"), n("a"), n("b")] == [1, 2, 1]
    assert n("a") == 3, "a is now the most recently used"
    assert n("c") == 1, "c evicts b, the least recently used"
    assert n("a") == 4, "a was kept"
    assert n("b") == 1, "b's state was forgotten"


def test_execution_records_stay_within_max_record_bytes(serve):
    app = warmslot.App(max_record_bytes=16_000, admin_token=None)

    @app.pipeline("big", reply="async")
    def big(event, ctx):
        return {"pad": "x" * 3000, "i": event["i"]}

    server, c = serve(app)
    ids = [c.post("big", {"i": i})[2]["execution_id"] for i in range(12)]

    def record(exec_id):
        status, _, body = c.get(f"/executions/{exec_id}")
        return status, body

    last = poll(lambda: record(ids[-1])[1].get("status") == "succeeded" and record(ids[-1]), 10.0, "the last record")
    assert last[1]["result"]["i"] == 11
    statuses = [record(i)[0] for i in ids]
    assert statuses[0] == 404, "the oldest records were evicted to stay within the byte budget"
    assert statuses.count(200) <= 16_000 // 3000, statuses
    assert record(ids[0])[1]["error"]["code"] == "unknown_execution"


def test_execution_ids_are_128_bit_hex(serve):
    app = warmslot.App()

    @app.pipeline("e")
    def e(event):
        return {}

    server, c = serve(app)
    ids = {c.post("e", {})[1]["x-warmslot-execution-id"] for _ in range(20)}
    assert len(ids) == 20
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids), ids
    assert c.get(f"/executions/{ids.pop()}")[0] == 200
    assert c.get("/executions/" + "0" * 32)[0] == 404


def test_missing_key_reject_and_unkeyed(serve):
    app = warmslot.App()

    @app.pipeline("strict", key="user", missing_key="reject")
    def strict(event, ctx):
        return {"key": ctx.key}

    @app.pipeline("lenient", key="user")
    def lenient(event, ctx):
        return {"key": ctx.key}

    @app.pipeline("strict_fn", key=lambda e: e.get("org"), missing_key="reject")
    def strict_fn(event, ctx):
        return {"key": ctx.key}

    server, c = serve(app)
    assert c.post("strict", {"user": "u1"})[2] == {"key": "u1"}
    for body in [{"text": "no user"}, {"user": None}]:
        status, _, err = c.post("strict", body)
        assert status == 400 and err["error"]["code"] == "bad_request"
        assert '"user"' in err["error"]["message"], err
    assert c.post("lenient", {"text": "no user"})[2] == {"key": None}
    status, _, err = c.post("strict_fn", {"text": "no org"})
    assert status == 400 and "returned None" in err["error"]["message"]
    assert c.post("strict_fn", {"org": "o"})[2] == {"key": "o"}


def test_missing_key_needs_a_key():
    with pytest.raises(ValueError, match="missing_key='reject' needs key="):
        warmslot.App().pipeline("x", missing_key="reject")
    with pytest.raises(ValueError, match="missing_key must be"):
        warmslot.App().pipeline("x", key="u", missing_key="drop")
