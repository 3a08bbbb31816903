from __future__ import annotations

import collections
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import warmslot


class Client:
    """A keep-alive HTTP/1.1 client for one server (stdlib only, so tests exercise real sockets)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.conn = http.client.HTTPConnection(host, port, timeout=30)

    def request(
        self, method: str, path: str, body: Any = None, headers: Optional[Dict[str, str]] = None, raw: bool = False
    ) -> Tuple[int, Dict[str, str], Any]:
        data = body if raw or body is None else json.dumps(body).encode()
        try:
            self.conn.request(method, path, data, headers or {})
            resp = self.conn.getresponse()
        except (ConnectionError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            self.conn.request(method, path, data, headers or {})
            resp = self.conn.getresponse()
        payload = resp.read()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        if resp.getheader("connection", "").lower() == "close":
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        ctype = hdrs.get("content-type", "")
        return resp.status, hdrs, (json.loads(payload) if ctype.startswith("application/json") else payload.decode())

    def post(self, pipeline: str, body: Any, headers: Optional[Dict[str, str]] = None, raw: bool = False):
        return self.request("POST", f"/hooks/{pipeline}", body, headers, raw)

    def get(self, path: str):
        return self.request("GET", path)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def children() -> list:
    """(pid, state, cmdline) of this process's direct children."""
    me = os.getpid()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == me:
            out.append((int(entry), fields[0], cmd))
    return out


def workers() -> list:
    """(pid, state, cmdline) of this process's worker processes (`python -m warmslot.worker`)."""
    return [c for c in children() if "warmslot.worker" in c[2]]


def concurrently(n: int, fn: Callable[[int], Any]) -> List[Any]:
    """Runs fn(0..n-1) in n threads at once; returns the results in order, re-raising the first
    error a thread hit (so an assertion inside a client thread fails the test)."""
    results: List[Any] = [None] * n
    errors: List[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = fn(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    """Polls `cond` until it returns something true, and returns that; fails the test after
    `timeout` seconds, naming `what`."""
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)
    return value


def poll(fn: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """`wait_for` with a default timeout (30 s), for servers that answer over HTTP."""
    return wait_for(fn, timeout, what)


@pytest.fixture
def serve() -> Iterator:
    """serve(app) starts `app` on a free loopback port and returns (server, client); stopped after the test."""
    servers = []
    clients = []

    def start(app: warmslot.App):
        server = app.start("127.0.0.1", 0)
        servers.append(server)
        client = Client(server.host, server.port)
        clients.append(client)
        return server, client

    yield start
    for c in clients:
        c.close()
    for s in servers:
        s.stop(drain=2.0)


def flaky_app(state: str, **options: Any) -> Tuple[warmslot.App, "collections.Counter[str]"]:
    """An app on `state` with pipeline "flaky" (keyed by "user", 2 retries 50 ms apart, plus
    `options`): the event tagged `tag` fails its first `fail_times` attempts, then adds 1 to its
    key's "ok" and answers {"attempt": n}. Returns the app and the attempts counted per tag."""
    app = warmslot.App(state=state)
    calls: "collections.Counter[str]" = collections.Counter()

    @app.pipeline("flaky", key="user", retries=2, retry_backoff=0.05, **options)
    def flaky(event, ctx):
        calls[event["tag"]] += 1
        if calls[event["tag"]] <= event["fail_times"]:
            raise RuntimeError(f"attempt {calls[event['tag']]} fails")
        ctx.state["ok"] = ctx.state.get("ok", 0) + 1
        return {"attempt": calls[event["tag"]]}

    return app, calls


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_killbot(tmp_path, port: int, env: Dict[str, str]) -> subprocess.Popen:
    """Runs `tmp_path/killbot.py:app` with `warmslot run` in a subprocess (its stderr appended to
    `tmp_path/server.log`) and waits until it is healthy: a server a test can SIGKILL."""
    log = tmp_path / "server.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "warmslot", "run", f"{tmp_path / 'killbot.py'}:app", "--port", str(port)],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=out,
        )

    wait_healthy(port, proc, exited=log.read_text)
    return proc


def wait_healthy(
    port: int, proc: subprocess.Popen, timeout: float = 30.0, exited: Optional[Callable[[], Any]] = None
) -> None:
    """Waits until the server `proc` answers `GET /healthz` on `port` with 200; fails the test if
    it exits first, with `exited()` (default: its output) in the message."""

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early: {exited() if exited else proc.communicate()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    wait_for(healthy, timeout, f"the server on port {port} to be healthy")


def send_counted(
    port: int,
    accepted: Dict[str, List[str]],
    lock: threading.Lock,
    stop: threading.Event,
    i: int,
    per_client: int,
    headers: Optional[Dict[str, str]] = None,
) -> None:
    """Client `i` of a kill test: posts `{"user": "k0".."k5", "n": n}` to `count` until `stop`, the
    server goes away, or `per_client` events; the execution id of each `202` goes to `accepted`."""
    with Client("127.0.0.1", port) as c:
        for n in range(per_client):
            if stop.is_set():
                return
            user = f"k{(i + n) % 6}"
            try:
                status, _, body = c.post("count", {"user": user, "n": n}, headers)
            except OSError:
                return
            if status == 202:
                with lock:
                    accepted[user].append(body["execution_id"])


def wait_all_succeeded(port: int, accepted: Dict[str, List[str]]) -> None:
    """Polls the server on `port` until every execution in `accepted` has succeeded."""
    ids = [eid for v in accepted.values() for eid in v]
    with Client("127.0.0.1", port) as c:

        def all_done() -> bool:
            return all(c.get(f"/executions/{eid}")[2].get("status") == "succeeded" for eid in ids)

        poll(all_done, timeout=60, what="every accepted execution to succeed")


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A real redis-server on a free loopback port (no persistence), stopped after the test."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (apt-get install -y redis-server; .ci/run installs it)")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )

    def accepts() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    wait_for(accepts, 10, f"redis-server on port {port}")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)
