"""Limits that hold against hostile clients: head size (431), slow bodies (408), idle keep-alive,
oversized bodies read by write-then-read clients (413), hostile JSON (4xx)."""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest
import warmslot


def make_app(**kw):
    app = warmslot.App(**kw)

    @app.pipeline("echo", key="user")
    def echo(event, ctx):
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        return {"n": ctx.state["n"]}

    return app


def read_until_closed(s: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes the connection (or `deadline` passes)."""
    data = b""
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            break
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"connection still open after the deadline; got {data[:200]!r}")


def response_of(data: bytes):
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = {
        k.strip().lower().decode(): v.strip().decode()
        for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])
    }
    return status, headers, body


def test_large_head_gets_a_json_431_and_a_huge_one_is_refused(serve):
    server, c = serve(make_app(max_header_bytes=16 << 10))
    assert c.post("echo", {"user": "a"}, {"X-Pad": "p" * 8000})[0] == 200
    status, headers, body = c.post("echo", {"user": "a"}, {"X-Pad": "p" * 20000})
    assert status == 431
    assert body["error"]["code"] == "headers_too_large"
    assert "16384-byte limit" in body["error"]["message"]
    # Far above the limit (200 KB): refused with a 431 from the HTTP layer, then closed.
    with socket.create_connection((server.host, server.port)) as s:
        s.sendall(b"POST /hooks/echo HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * 200_000 + b"\r\n\r\n")
        data = read_until_closed(s, time.monotonic() + 10)
    assert data.startswith(b"HTTP/1.1 431"), data[:100]
    assert c.post("echo", {"user": "a"})[0] == 200, "still serving"


def test_default_header_limit_is_64_kib(serve):
    server, c = serve(make_app())
    assert c.post("echo", {"user": "a"}, {"X-Pad": "p" * 60000})[0] == 200
    assert c.post("echo", {"user": "a"}, {"X-Pad": "p" * 70000})[0] == 431
    with socket.create_connection((server.host, server.port)) as s:
        s.sendall(b"POST /hooks/echo HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * 200_000 + b"\r\n\r\n")
        data = read_until_closed(s, time.monotonic() + 10)
    assert data.startswith(b"HTTP/1.1 431"), data[:100]
    assert c.post("echo", {"user": "a"})[0] == 200


def test_slow_body_gets_408_and_does_not_block_others(serve):
    server, c = serve(make_app(body_timeout=0.5))
    with socket.create_connection((server.host, server.port)) as s:
        s.sendall(b'POST /hooks/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{"user":')
        started = time.monotonic()
        assert c.post("echo", {"user": "b"})[0] == 200, "others are served meanwhile"
        data = read_until_closed(s, started + 10)
        waited = time.monotonic() - started
    status, headers, body = response_of(data)
    assert status == 408, data
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert headers["connection"] == "close"
    assert 0.3 < waited < 5, waited
    echo_stats = next(s for s in server.stats() if s["name"] == "echo")
    assert echo_stats["requests"]["request_timeout"] == 1


def test_idle_keep_alive_and_slow_headers_are_closed(serve):
    server, c = serve(make_app(header_timeout=0.5))
    with socket.create_connection((server.host, server.port)) as s:
        body = b'{"user":"k"}'
        s.sendall(b"POST /hooks/echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        started = time.monotonic()
        data = read_until_closed(s, started + 10)
        assert data.startswith(b"HTTP/1.1 200"), data
        assert time.monotonic() - started > 0.3, "idle connection kept for about header_timeout"
    with socket.create_connection((server.host, server.port)) as s:
        s.sendall(b"POST /hooks/echo HTTP/1.1\r\nHost: t\r\n")  # never finishes its head
        started = time.monotonic()
        read_until_closed(s, started + 10)
        assert 0.3 < time.monotonic() - started < 5
    assert c.post("echo", {"user": "k"})[0] == 200


@pytest.mark.parametrize("size", [12 << 20, (1 << 20) + 1])
def test_write_then_read_client_reads_the_413(serve, size):
    """http.client sends the whole body before it reads: it must still read the 413."""
    server, c = serve(make_app())
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        conn.request("POST", "/hooks/echo", body=b"x" * size, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 413
    assert body["error"]["code"] == "payload_too_large"
    assert "1048576-byte limit" in body["error"]["message"]
    assert c.post("echo", {"user": "a"})[0] == 200


def test_chunked_oversized_body_is_answered_413_then_drained(serve):
    server, c = serve(make_app())
    with socket.create_connection((server.host, server.port)) as s:
        s.sendall(b"POST /hooks/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"y" * 65536
        for _ in range(40):  # 2.5 MiB, past the 1 MiB limit, written before reading
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        s.sendall(b"0\r\n\r\n")
        data = read_until_closed(s, time.monotonic() + 10)
    status, headers, body = response_of(data)
    assert status == 413 and json.loads(body)["error"]["code"] == "payload_too_large"


HOSTILE = {
    "deep arrays": b"[" * 100_000 + b"]" * 100_000,
    "deep objects": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "invalid utf-8": b'{"user": "\xff\xfe"}',
    "huge number": b'{"user": "h", "n": ' + b"9" * 100_000 + b"}",
    "huge exponent": b'{"user": "h", "n": 1e999999}',
    "truncated": b'{"user": "h", "text": "abc',
    "empty": b"",
    "lone surrogate": b'{"user": "\\ud800"}',
}


@pytest.mark.parametrize("what", list(HOSTILE))
def test_hostile_bodies_get_a_4xx(serve, what):
    server, c = serve(make_app())
    status, _, body = c.post("echo", HOSTILE[what], raw=True)
    assert 400 <= status < 500, (what, status, body)
    assert body["error"]["code"] in ("invalid_json", "bad_request")
    assert c.post("echo", {"user": "a"})[0] == 200
