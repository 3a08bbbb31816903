"""`warmslot.testing`: the test client signs as each provider signs (the server's own check, and
the `standardwebhooks` package's verifier), waits for async executions, reads committed state,
and starts and stops the app around a ``with`` block."""

from __future__ import annotations

import base64
import json
import os
import time

import pytest
import warmslot
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from warmslot.testing import Headers, Response, TestClient, signature_headers

STD_SECRET = "whsec_" + base64.b64encode(b"a 24-byte webhook secret").decode()

SIGNATURES = {
    "github": warmslot.github_signature("gh-secret"),
    "slack": warmslot.slack_signature("slack-secret"),
    "stripe": warmslot.stripe_signature("stripe-secret"),
    "standard": warmslot.standard_webhooks_signature(STD_SECRET),
    "hmac": warmslot.hmac_signature("plain-secret", header="X-My-Signature", prefix="hmac="),
}


def signed_app() -> warmslot.App:
    app = warmslot.App()
    for name, sig in SIGNATURES.items():

        @app.pipeline(name, slots=1, signature=sig)
        def handler(event, ctx):
            return {"got": event, "event": ctx.headers.get("x-github-event")}

    return app


@pytest.fixture(scope="module")
def signed_client():
    with signed_app().test_client() as client:
        yield client


@pytest.mark.parametrize("pipeline", sorted(SIGNATURES))
def test_each_scheme_is_signed_as_the_server_checks_it(signed_client, pipeline):
    r = signed_client.post(pipeline, json={"n": 1})
    assert r.status_code == 200, r.text
    assert r.json()["got"] == {"n": 1}
    assert r.execution_id
    # Signed with another secret, or not at all: refused.
    wrong = "whsec_" + base64.b64encode(b"another secret, 24 bytes").decode() if pipeline == "standard" else "nope"
    assert signed_client.post(pipeline, json={"n": 1}, secret=wrong).status_code == 401
    assert signed_client.post(pipeline, json={"n": 1}, sign=False).status_code == 401


def test_a_tampered_body_is_refused(signed_client):
    body = json.dumps({"amount": 1}).encode()
    headers = signature_headers(SIGNATURES["github"], body)
    assert signed_client.post("github", content=body, headers=headers).status_code == 200
    assert signed_client.post("github", content=body.replace(b"1", b"9"), headers=headers).status_code == 401


def test_standard_webhooks_signature_verifies_with_the_sdk():
    body = json.dumps({"type": "invoice.paid"}).encode()
    headers = signature_headers(SIGNATURES["standard"], body, msg_id="msg_1")
    assert headers["webhook-id"] == "msg_1"
    Webhook(STD_SECRET).verify(body, headers)  # raises when the signature is wrong
    with pytest.raises(WebhookVerificationError):
        Webhook(STD_SECRET).verify(body + b" ", headers)


def test_event_shows_in_ctx_headers_and_response_headers_ignore_case(signed_client):
    r = signed_client.post("github", json={}, event="push")
    assert r.status_code == 200 and r.json()["event"] == "push"
    assert r.headers["Content-Type"] == r.headers["content-type"] == r.headers["CONTENT-TYPE"]
    assert "X-Warmslot-Execution-Id" in r.headers and r.headers.get("x-warmslot-execution-id") == r.execution_id
    assert json.loads(r.text) == r.json()


def test_headers_mapping():
    h = Headers([("X-A", "1"), ("x-a", "2"), ("Content-Type", "text/plain")])
    assert h["x-a"] == "1, 2" and h.get_list("X-A") == ["1", "2"]
    assert len(h) == 2 and set(h) == {"X-A", "Content-Type"} and "content-type" in h and "nope" not in h
    r = Response(202, Headers([]), b'{"execution_id": "e1"}')
    assert r.execution_id == "e1" and r.is_success


def test_connections_from_other_threads_are_closed_with_the_client():
    import threading

    with counter_app().test_client() as client:
        replies = []
        threads = [
            threading.Thread(target=lambda u=u: replies.append(client.post("count", json={"user": u}).status_code))
            for u in "abcd"
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert replies == [200] * 4 and len(client._conns) == 5  # this thread's (the health check) and 4
    assert client._conns == []


def test_caller_headers_win():
    app = warmslot.App()

    @app.pipeline("h", slots=1)
    def h(event, ctx):
        return {"ct": ctx.headers.get("content-type"), "extra": ctx.headers.get("x-extra")}

    with app.test_client() as client:
        r = client.post("h", json={}, headers={"content-type": "application/vnd.x+json", "X-Extra": "yes"})
        assert r.json() == {"ct": "application/vnd.x+json", "extra": "yes"}


def counter_app(state: str = "memory", **options) -> warmslot.App:
    app = warmslot.App(state=state, **options)

    @app.pipeline("count", slots=2, key="user")
    def count(event, ctx):
        if event.get("fail"):
            raise RuntimeError("asked to fail")
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        return {"n": ctx.state["n"]}

    return app


def test_prefer_async_and_wait():
    with counter_app(admin_token="s3cret").test_client() as client:
        r = client.post("count", json={"user": "ann"}, prefer_async=True)
        assert r.status_code == 202 and r.execution_id
        record = client.wait(r.execution_id, timeout=10)
        assert record["status"] == "succeeded"
        failed = client.wait(client.post("count", json={"user": "ann", "fail": True}, prefer_async=True).execution_id)
        assert failed["status"] == "failed"
        # Admin routes need the token: the client sends the app's.
        assert client.get("/executions/" + r.execution_id, headers={"Authorization": "Bearer x"}).status_code == 401


def test_wait_times_out_naming_the_execution():
    app = warmslot.App()

    @app.pipeline("slow", slots=1, timeout=30)
    def slow(event, ctx):
        import time

        time.sleep(1.0)
        return {}

    with app.test_client() as client:
        r = client.post("slow", json={}, prefer_async=True)
        with pytest.raises(TimeoutError, match=r.execution_id):
            client.wait(r.execution_id, timeout=0.1)
        assert client.wait(r.execution_id)["status"] == "succeeded"


def test_delivery_id_dedupes(signed_client):
    first = signed_client.post("github", json={"n": 2}, delivery_id="d-1")
    again = signed_client.post("github", json={"n": 2}, delivery_id="d-1")
    assert first.status_code == again.status_code == 200
    assert first.execution_id == again.execution_id
    assert signed_client.post("standard", json={}, delivery_id="msg_d1").execution_id == (
        signed_client.post("standard", json={}, delivery_id="msg_d1").execution_id
    )


def test_state_on_sqlite(tmp_path):
    with counter_app("sqlite:///" + str(tmp_path / "state.db")).test_client() as client:
        assert client.state("count", "ann") is None
        for n in range(1, 4):
            assert client.post("count", json={"user": "ann"}).status_code == 200
            assert client.state("count", "ann") == {"n": n}  # committed before the reply
        client.wait(client.post("count", json={"user": "bob"}, prefer_async=True).execution_id)
        assert client.state("count", "ann") == {"n": 3}
        assert client.state("count", "bob") == {"n": 1}
        # A failed execution commits nothing.
        assert client.post("count", json={"user": "ann", "fail": True}).status_code == 500
        assert client.state("count", "ann") == {"n": 3}
        with pytest.raises(KeyError, match="nope"):
            client.state("nope", "ann")


def test_state_on_redis(redis_url):
    with counter_app(redis_url).test_client() as client:
        key = "user-" + os.urandom(4).hex()
        assert client.state("count", key) is None
        client.post("count", json={"user": key})
        assert client.state("count", key) == {"n": 1}


def test_state_on_memory_and_in_memory_sqlite():
    for state in ("memory", "sqlite://"):
        with counter_app(state).test_client() as client:
            assert client.state("count", "ann") is None
            client.post("count", json={"user": "ann"})
            client.post("count", json={"user": "ann"})
            assert client.state("count", "ann") == {"n": 2}, state


def test_reading_a_state_on_redis_takes_no_lease(redis_url):
    # A read while nothing runs must not lock the key: the next event runs at once.
    with counter_app(redis_url).test_client() as client:
        key = "user-" + os.urandom(4).hex()
        client.post("count", json={"user": key})
        assert client.state("count", key) == {"n": 1}
        started = time.monotonic()
        assert client.post("count", json={"user": key}).json() == {"n": 2}
        assert time.monotonic() - started < 10.0, "the key was locked by the read (a lease lasts the timeout)"


def test_the_client_starts_and_stops_the_server():
    app = counter_app()
    client = app.test_client()
    with pytest.raises(RuntimeError, match="not started"):
        client.post("count", json={})
    with client:
        assert client.get("/healthz").status_code == 200
        server = client.server
        assert server.host == "127.0.0.1" and server.port > 0 and not server.stopped
        assert repr(client).startswith("<warmslot.testing.TestClient http://127.0.0.1:")
    assert server.stopped and app.server is None


def test_testclient_class_directly():
    with TestClient(counter_app()) as client:
        assert client.post("count", json={"user": "x"}).json() == {"n": 1}
        assert client.post("count", json={"user": "x"}).json() == {"n": 2}
