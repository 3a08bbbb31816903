"""Every error of the contract gets its status and a JSON error body, and the server keeps serving."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import warmslot
from conftest import Client, concurrently
from warmslot import _core

# What the async pipeline "aslow" saw: CancelledError at its await, or the code after the await.
ASLOW_CANCELLED = threading.Event()
ASLOW_RESUMED = threading.Event()


def make_app(**kw):
    app = warmslot.App(**kw)

    @app.pipeline("echo", key="user")
    def echo(event, ctx):
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        return {"n": ctx.state["n"]}

    @app.pipeline("boom", key="user")
    def boom(event, ctx):
        ctx.state["touched"] = True
        raise ValueError("the bot fell over")

    @app.pipeline("slow", key="user", timeout=0.2)
    def slow(event, ctx):
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        time.sleep(event.get("sleep", 0.5))
        return {"n": ctx.state["n"]}

    @app.pipeline("aslow", timeout=0.2)
    async def aslow(event, ctx):
        import asyncio

        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            ASLOW_CANCELLED.set()
            raise
        ASLOW_RESUMED.set()  # only if the sleep was not cancelled
        return {}

    @app.pipeline("small", max_body_bytes=100)
    def small(event, ctx):
        return {"ok": True}

    @app.pipeline("signed", signature=warmslot.github_signature("s3cret"))
    def signed(event, ctx):
        return {"ok": True}

    @app.pipeline("unjson")
    def unjson(event, ctx):
        return {"obj": object()}

    return app


def error_of(resp, status, code):
    got_status, headers, body = resp
    assert got_status == status, body
    assert headers["content-type"] == "application/json"
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]["message"], headers


def still_serving(c):
    assert c.get("/healthz")[0] == 200
    assert c.post("echo", {"user": "z"})[0] == 200


def test_invalid_json_is_400(serve):
    server, c = serve(make_app())
    for bad in [b"{", b"{'a': 1}", b"", b"[1,2", b"{} trailing"]:
        msg, _ = error_of(c.post("echo", bad, raw=True), 400, "invalid_json")
        assert "JSON" in msg
    still_serving(c)


def test_unknown_pipeline_404_and_unknown_route(serve):
    server, c = serve(make_app())
    msg, _ = error_of(c.post("nope", {}), 404, "unknown_pipeline")
    assert "nope" in msg
    error_of(c.get("/nowhere"), 404, "not_found")
    assert c.request("POST", "/hooks/echo/?source=github", {"user": "t"})[0] == 200, "trailing slash, query"
    error_of(c.get("/executions/00000000000000000000"), 404, "unknown_execution")
    still_serving(c)


def test_wrong_method_405(serve):
    server, c = serve(make_app())
    _, headers = error_of(c.get("/hooks/echo"), 405, "method_not_allowed")
    assert headers["allow"] == "POST"
    error_of(c.request("POST", "/metrics", b"", raw=True), 405, "method_not_allowed")
    still_serving(c)


def test_payload_too_large_413_with_and_without_content_length(serve):
    server, c = serve(make_app())
    msg, _ = error_of(c.post("small", {"pad": "x" * 200}), 413, "payload_too_large")
    assert "100-byte" in msg and "small" in msg
    # Chunked upload: no Content-Length, the limit is enforced while reading.
    with socket.create_connection((server.host, server.port)) as s:
        chunk = b"x" * 150
        s.sendall(
            b"POST /hooks/small HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + f"{len(chunk):x}\r\n".encode()
            + chunk
            + b"\r\n0\r\n\r\n"
        )
        data = s.recv(65536)
    assert data.startswith(b"HTTP/1.1 413")
    assert b"payload_too_large" in data
    assert c.post("small", {"a": 1})[0] == 200
    still_serving(c)


def test_default_body_limit_is_one_mib(serve):
    server, c = serve(make_app())
    ok = b'{"user":"q","pad":"' + b"x" * (1024 * 1024 - 40) + b'"}'
    assert c.post("echo", ok, raw=True)[0] == 200
    too_big = b'{"user":"q","pad":"' + b"x" * (1024 * 1024) + b'"}'
    error_of(c.post("echo", too_big, raw=True), 413, "payload_too_large")
    still_serving(c)


def test_bad_signature_401(serve):
    server, c = serve(make_app())
    body = b'{"action":"opened"}'
    good = "sha256=" + _core.hmac_sha256_hex(b"s3cret", [body])
    assert c.post("signed", body, {"X-Hub-Signature-256": good}, raw=True)[0] == 200
    msg, _ = error_of(
        c.post("signed", body, {"X-Hub-Signature-256": "sha256=" + "0" * 64}, raw=True), 401, "bad_signature"
    )
    assert "does not match" in msg
    msg, _ = error_of(c.post("signed", body, raw=True), 401, "bad_signature")
    assert "missing" in msg
    error_of(c.post("signed", b'{"action":"closed"}', {"X-Hub-Signature-256": good}, raw=True), 401, "bad_signature")
    still_serving(c)


def test_pipeline_exception_500_commits_nothing_and_hides_traceback(serve):
    server, c = serve(make_app())
    msg, headers = error_of(c.post("boom", {"user": "u"}), 500, "pipeline_error")
    assert msg == "ValueError: the bot fell over"
    assert "Traceback" not in msg
    _, _, record = c.get("/executions/" + headers["x-warmslot-execution-id"])
    assert record["status"] == "failed"
    assert record["error"] == {"code": "pipeline_error", "message": "ValueError: the bot fell over"}
    still_serving(c)


def test_debug_mode_puts_traceback_in_the_error(serve):
    server, c = serve(make_app(debug=True))
    msg, _ = error_of(c.post("boom", {"user": "u"}), 500, "pipeline_error")
    assert "Traceback" in msg and "the bot fell over" in msg


def test_raising_pipeline_commits_no_state(serve):
    app = warmslot.App()

    @app.pipeline("flaky", key="user")
    def flaky(event, ctx):
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        if event.get("fail"):
            raise RuntimeError("nope")
        return ctx.state["n"]

    server, c = serve(app)
    assert c.post("flaky", {"user": "a"})[2] == 1
    assert c.post("flaky", {"user": "a", "fail": True})[0] == 500
    assert c.post("flaky", {"user": "a"})[2] == 2, "the failed run's update must not be committed"


def test_non_json_reply_is_a_pipeline_error(serve):
    server, c = serve(make_app())
    msg, _ = error_of(c.post("unjson", {}), 500, "pipeline_error")
    assert "not JSON" in msg
    still_serving(c)


def test_timeout_504_commits_nothing(serve):
    server, c = serve(make_app())
    t0 = time.monotonic()
    msg, headers = error_of(c.post("slow", {"user": "t", "sleep": 0.6}), 504, "pipeline_timeout")
    assert time.monotonic() - t0 < 0.55, "the client is answered at the deadline, not when the run ends"
    assert "0.200s" in msg
    _, _, rec = c.get("/executions/" + headers["x-warmslot-execution-id"])
    assert rec["status"] == "timed_out"
    time.sleep(0.6)  # let the late run finish: its state must not be committed
    assert c.post("slow", {"user": "t", "sleep": 0})[2] == {"n": 1}
    still_serving(c)


def test_async_timeout_cancels_the_coroutine(serve):
    ASLOW_CANCELLED.clear()
    ASLOW_RESUMED.clear()
    server, c = serve(make_app())
    error_of(c.post("aslow", {}), 504, "pipeline_timeout")
    # Its 5 s sleep is cancelled at the 0.2 s deadline: CancelledError well before the sleep ends.
    assert ASLOW_CANCELLED.wait(timeout=3.0), "the coroutine got no CancelledError at its deadline"
    assert not ASLOW_RESUMED.is_set(), "the code after the await ran"
    still_serving(c)


def test_overload_429_with_retry_after_and_nothing_accepted_is_lost(serve):
    app = warmslot.App()
    ran = []

    @app.pipeline("narrow", slots=1, queue_size=2, max_batch=1, timeout=None)
    def narrow(event, ctx):
        time.sleep(0.05)
        ran.append(event["i"])
        return {"i": event["i"]}

    server, _ = serve(app)

    def client(i):
        with Client(server.host, server.port) as c:
            return c.post("narrow", {"i": i})

    results = concurrently(16, client)
    refused = [r for r in results if r[0] == 429]
    accepted = [i for i, r in enumerate(results) if r[0] == 200]
    assert refused, "a full ring must refuse early"
    for _, headers, body in refused:
        assert headers["retry-after"] == "1"
        assert body["error"]["code"] == "overloaded"
    assert len(refused) + len(accepted) == 16
    assert sorted(ran) == sorted(accepted), "every accepted request ran exactly once"
    c = Client(server.host, server.port)
    _, _, metrics = c.get("/metrics")
    assert f'warmslot_requests_total{{pipeline="narrow",status="overloaded"}} {len(refused)}' in metrics
    assert c.post("narrow", {"i": 99})[0] == 200
    c.close()


def test_healthz_is_503_until_slots_are_warm():
    app = warmslot.App()
    release = threading.Event()

    @app.pipeline("heavy", slots=1)
    class Heavy:
        def __init__(self):
            release.wait(10)

        def __call__(self, event, ctx):
            return {"ok": True}

    server = app.start("127.0.0.1", 0, wait=False)
    try:
        c = Client(server.host, server.port)
        status, _, body = c.get("/healthz")
        assert status == 503 and body["status"] == "warming"
        # A webhook sent while warming waits in the ring and runs once the slot is warm.
        result = {}

        def send():
            other = Client(server.host, server.port)
            result["r"] = other.post("heavy", {})
            other.close()

        t = threading.Thread(target=send)
        t.start()
        time.sleep(0.1)
        release.set()
        t.join(10)
        assert result["r"][0] == 200
        assert c.get("/healthz")[0] == 200
        c.close()
    finally:
        server.stop()


def test_warm_up_failure_is_reported():
    app = warmslot.App()

    @app.pipeline("broken")
    class Broken:
        def __init__(self):
            raise RuntimeError("missing API key")

        def __call__(self, event, ctx):
            return {}

    with pytest.raises(RuntimeError, match="missing API key"):
        app.start("127.0.0.1", 0, timeout=10)
