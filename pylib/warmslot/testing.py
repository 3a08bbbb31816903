"""A test client for warmslot apps, in the manner of FastAPI's ``TestClient``::

    from warmslot.testing import TestClient

    def test_echo():
        with TestClient(app) as client:  # or: with app.test_client() as client:
            r = client.post("echo", json={"user": "ann", "text": "hi"})
            assert r.status_code == 200 and r.json()["reply"] == "echo: hi"

The client starts the app on an ephemeral loopback port (``app.start("127.0.0.1", 0)``), waits
until ``/healthz`` answers 200, and stops it (draining accepted executions) when the ``with``
block ends. `TestClient.post` signs each webhook with the pipeline's own signature check and
secret (GitHub, Slack, Stripe, Standard Webhooks, or a plain `warmslot.hmac_signature`), so the
request goes through the same Rust verification as a provider's would. Stdlib only.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import http.client
import json as _jsonlib
import socket
import threading
import time
import urllib.parse
import uuid
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

from .spec import Signature, standard_webhooks_signature

if TYPE_CHECKING:
    from .app import App, Server

__all__ = ["Headers", "Response", "TestClient", "signature_headers"]

#: Statuses of an execution record that no longer change.
FINAL_STATUSES = frozenset({"succeeded", "failed", "timed_out"})

#: The header the server names an execution in (every webhook answer carries it).
EXECUTION_ID_HEADER = "x-warmslot-execution-id"


class Headers(Mapping[str, str]):
    """Response headers: a read-only mapping whose lookups ignore case (as httpx's ``Headers``).
    A header sent more than once is joined with ``", "``."""

    def __init__(self, items: List[Tuple[str, str]]) -> None:
        self._items = list(items)
        merged: Dict[str, Tuple[str, str]] = {}
        for name, value in self._items:
            low = name.lower()
            if low in merged:
                merged[low] = (merged[low][0], merged[low][1] + ", " + value)
            else:
                merged[low] = (name, value)
        self._merged = merged

    def __getitem__(self, name: str) -> str:
        return self._merged[name.lower()][1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._merged

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._merged.values())

    def __len__(self) -> int:
        return len(self._merged)

    def get_list(self, name: str) -> List[str]:
        """Every value of `name`, in the order received."""
        low = name.lower()
        return [v for k, v in self._items if k.lower() == low]

    def __repr__(self) -> str:
        return f"Headers({dict((k, v) for k, v in self._merged.values())!r})"


class Response:
    """An HTTP answer, shaped like an ``httpx.Response``: ``status_code``, ``headers`` (case
    insensitive), ``content`` (bytes), ``text``, ``json()``; plus ``execution_id``, the execution
    the server named (the ``x-warmslot-execution-id`` header, or a 202's ``execution_id``)."""

    def __init__(self, status_code: int, headers: Headers, content: bytes, reason: str = "") -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content
        self.reason_phrase = reason

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return _jsonlib.loads(self.content)

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def execution_id(self) -> Optional[str]:
        named = self.headers.get(EXECUTION_ID_HEADER)
        if named:
            return named
        try:
            body = self.json()
        except ValueError:
            return None
        value = body.get("execution_id") if isinstance(body, dict) else None
        return value if isinstance(value, str) else None

    def __repr__(self) -> str:
        return f"<Response [{self.status_code}]>"


def signature_headers(
    signature: Signature, body: bytes, *, msg_id: Optional[str] = None, now: Optional[float] = None
) -> Dict[str, str]:
    """The headers that `signature` accepts for `body`, as its provider sends them, signed now (or
    at `now`, Unix seconds). `msg_id`: the Standard Webhooks ``webhook-id`` (random when None)."""
    ts = str(int(time.time() if now is None else now))
    key = signature.secret

    def hex_mac(*parts: bytes) -> str:
        return hmac.new(key, b"".join(parts), hashlib.sha256).hexdigest()

    if signature.scheme == "hex":
        return {signature.header: signature.prefix + hex_mac(body)}
    if signature.scheme == "slack":
        return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": "v0=" + hex_mac(b"v0:", ts.encode(), b":", body)}
    if signature.scheme == "stripe":
        return {"Stripe-Signature": f"t={ts},v1=" + hex_mac(ts.encode(), b".", body)}
    if signature.scheme == "standard":
        mid = msg_id or "msg_" + uuid.uuid4().hex
        mac = hmac.new(key, f"{mid}.{ts}.".encode() + body, hashlib.sha256).digest()
        return {
            "webhook-id": mid,
            "webhook-timestamp": ts,
            "webhook-signature": "v1," + base64.b64encode(mac).decode(),
        }
    raise ValueError(f"unknown signature scheme {signature.scheme!r}")


class TestClient:
    """Runs `app` on an ephemeral loopback port for the length of a ``with`` block and talks to
    it over real HTTP. ``app.test_client()`` makes one.

    ``timeout=60.0``: seconds to wait for the app's warm-up and health. Outside a ``with`` block,
    call `start` and `close` yourself."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, app: "App", *, timeout: float = 60.0) -> None:
        self.app = app
        self.timeout = timeout
        self._server: Optional["Server"] = None
        self._local = threading.local()
        self._conns: List[http.client.HTTPConnection] = []  # every thread's, closed by `close`
        self._conns_lock = threading.Lock()

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> "TestClient":
        """Starts the app on ``127.0.0.1`` and a free port and waits until it is healthy."""
        if self._server is not None:
            raise RuntimeError("this test client is already started")
        server = self.app.start("127.0.0.1", 0, timeout=self.timeout)
        self._server = server
        try:
            deadline = time.monotonic() + self.timeout
            while True:
                r = self.request("GET", "/healthz")
                if r.status_code == 200:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{server.url}/healthz answered {r.status_code} for {self.timeout}s: {r.text}")
                time.sleep(0.01)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stops the server (new webhooks get 503, accepted ones finish, up to the app's
        ``drain_timeout``). Idempotent."""
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._local = threading.local()
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def __enter__(self) -> "TestClient":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def server(self) -> "Server":
        """The running `warmslot.Server`."""
        if self._server is None:
            raise RuntimeError("the test client is not started: use `with app.test_client() as client:`")
        return self._server

    @property
    def base_url(self) -> str:
        return self.server.url

    # --- HTTP ------------------------------------------------------------------------------

    def request(
        self, method: str, path: str, *, content: Optional[bytes] = None, headers: Optional[Mapping[str, str]] = None
    ) -> Response:
        """One request to the server (a keep-alive connection per thread)."""
        server = self.server
        sent = dict(headers or {})
        for attempt in (0, 1):
            conn: Optional[http.client.HTTPConnection] = getattr(self._local, "conn", None)
            reused = conn is not None
            if conn is None:
                conn = http.client.HTTPConnection(server.host, server.port, timeout=self.timeout)
                self._local.conn = conn
                with self._conns_lock:
                    self._conns.append(conn)
            try:
                conn.request(method, path, content, sent)
                resp = conn.getresponse()
                payload = resp.read()
            except (ConnectionError, http.client.HTTPException, socket.timeout) as exc:
                self._drop(conn)
                # Only a kept-alive connection the server had closed is tried again (nothing was
                # read): a timeout or a failure on a fresh connection may have reached the server,
                # and sending a webhook twice would run it twice.
                stale = reused and isinstance(exc, (http.client.RemoteDisconnected, BrokenPipeError))
                if attempt or not stale:
                    raise
                continue
            if (resp.getheader("connection") or "").lower() == "close":
                self._drop(conn)
            return Response(resp.status, Headers(resp.getheaders()), payload, resp.reason)
        raise AssertionError("unreachable")

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        self._local.conn = None
        with self._conns_lock:
            if conn in self._conns:
                self._conns.remove(conn)

    def get(self, path: str, *, headers: Optional[Mapping[str, str]] = None) -> Response:
        """``GET path``, with the app's admin token (when it has one) unless `headers` sets
        ``Authorization``."""
        return self.request("GET", path, headers=self._admin(headers))

    def post(
        self,
        pipeline: str,
        json: Any = None,
        *,
        content: Optional[Union[bytes, str]] = None,
        headers: Optional[Mapping[str, str]] = None,
        event: Optional[str] = None,
        prefer_async: bool = False,
        delivery_id: Optional[str] = None,
        secret: Optional[Union[str, bytes]] = None,
        sign: bool = True,
    ) -> Response:
        """Sends a webhook to ``/hooks/<pipeline>``.

        ``json``: the event, serialized as JSON (or ``content``: the raw body). ``headers``: more
        headers; a header given here wins over the ones the client adds. ``event``: the event
        type, sent as ``X-GitHub-Event`` (what GitHub sends; ``ctx.headers["x-github-event"]``).
        ``prefer_async``: sends ``Prefer: respond-async`` (a 202 with ``execution_id``; see
        `wait`). ``delivery_id``: the delivery's id, in the header the pipeline's provider uses
        (``X-GitHub-Delivery`` for GitHub, ``webhook-id`` for Standard Webhooks, else
        ``Idempotency-Key``), so that a repeat is deduplicated as the provider's would be.

        The body is signed with the pipeline's own signature check: its scheme, header and
        secret. ``secret`` signs with another secret instead (to test a refusal); ``sign=False``
        sends no signature.
        """
        if content is not None and json is not None:
            raise TypeError("give json= or content=, not both")
        if content is None:
            body = _jsonlib.dumps(json).encode() if json is not None else b"{}"
        else:
            body = content.encode() if isinstance(content, str) else bytes(content)
        spec = self.app.pipelines.get(pipeline)
        signature = spec.signature if spec is not None else None
        out: Dict[str, str] = {"Content-Type": "application/json"}
        if event is not None:
            out["X-GitHub-Event"] = event
        if prefer_async:
            out["Prefer"] = "respond-async"
        scheme = _provider(signature)
        if delivery_id is not None and scheme != "standard":
            out["X-GitHub-Delivery" if scheme == "github" else "Idempotency-Key"] = delivery_id
        if signature is not None and sign:
            if secret is not None:
                signature = _with_secret(signature, secret)
            out.update(signature_headers(signature, body, msg_id=delivery_id))
        elif delivery_id is not None and scheme == "standard":
            out["webhook-id"] = delivery_id
        # The caller's headers win, compared without case.
        given = {k.lower() for k in (headers or {})}
        merged = {k: v for k, v in out.items() if k.lower() not in given}
        merged.update(headers or {})
        path = "/hooks/" + urllib.parse.quote(pipeline, safe="")
        return self.request("POST", path, content=body, headers=merged)

    # --- executions and state --------------------------------------------------------------

    def execution(self, execution_id: str) -> Optional[Dict[str, Any]]:
        """The record of an execution (``GET /executions/<id>``), or None when unknown."""
        r = self.get("/executions/" + urllib.parse.quote(execution_id, safe=""))
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise RuntimeError(f"GET /executions/{execution_id} answered {r.status_code}: {r.text}")
        record: Dict[str, Any] = r.json()
        return record

    def wait(self, execution_id: str, timeout: float = 10.0) -> Dict[str, Any]:
        """Polls ``GET /executions/<id>`` until the execution has finished (``succeeded``,
        ``failed`` or ``timed_out``) and returns its record; ``TimeoutError`` after `timeout`
        seconds."""
        if not isinstance(execution_id, str) or not execution_id:
            raise ValueError(f"execution_id must be a non-empty str, got {execution_id!r}")
        deadline = time.monotonic() + timeout
        pause = 0.002
        last: Optional[Dict[str, Any]] = None
        while True:
            last = self.execution(execution_id)
            if last is not None and last.get("status") in FINAL_STATUSES:
                return last
            if time.monotonic() > deadline:
                status = last.get("status") if last is not None else "unknown"
                raise TimeoutError(f"execution {execution_id} did not finish within {timeout}s (status: {status})")
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def state(self, pipeline: str, key: str) -> Any:
        """The committed state of `key` in `pipeline` (what ``ctx.state`` holds at the start of
        the key's next execution), or None when the key has none.

        Read by the store itself, for every store; it takes no lease and leaves the key's recency
        in the in-memory store alone."""
        if pipeline not in self.app.pipelines:
            raise KeyError(f"no pipeline {pipeline!r} (the app has {sorted(self.app.pipelines)})")
        index = next(rt.index for rt in self.server.runtimes if rt.spec.name == pipeline)
        raw = self.server._core.state(index, str(key))
        return None if raw is None else _jsonlib.loads(raw)

    def _admin(self, headers: Optional[Mapping[str, str]]) -> Dict[str, str]:
        out = dict(headers or {})
        token = self.app.admin_token
        if token and not any(k.lower() == "authorization" for k in out):
            out["Authorization"] = f"Bearer {token}"
        return out

    def __repr__(self) -> str:
        where = self._server.url if self._server is not None else "not started"
        return f"<warmslot.testing.TestClient {where} pipelines={list(self.app.pipelines)}>"


def _provider(signature: Optional[Signature]) -> str:
    if signature is None:
        return "none"
    if signature.scheme == "hex":
        return "github" if signature.header.lower() == "x-hub-signature-256" else "hmac"
    return signature.scheme


def _with_secret(signature: Signature, secret: Union[str, bytes]) -> Signature:
    if signature.scheme == "standard" and isinstance(secret, str):
        key = standard_webhooks_signature(secret).secret
    else:
        key = secret.encode() if isinstance(secret, str) else bytes(secret)
    return dataclasses.replace(signature, secret=key)
