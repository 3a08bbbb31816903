"""`events=`: event filters decided in Rust before admission. A filtered event is answered
`200 {"ignored": true}` without running, is not deduplicated, and is counted as
`warmslot_requests_total{status="ignored"}`; the signature is checked first."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time

import pytest
import warmslot

SECRET = b"filter-secret"


def github(body: bytes, event: str, delivery: str = None):
    headers = {"X-Hub-Signature-256": "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()}
    if event is not None:
        headers["X-GitHub-Event"] = event
    if delivery is not None:
        headers["X-GitHub-Delivery"] = delivery
    return headers


def stripe(body: bytes):
    ts = str(int(time.time()))
    sig = hmac.new(SECRET, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={ts},v1={sig}"}


def slack(body: bytes):
    ts = str(int(time.time()))
    sig = hmac.new(SECRET, b"v0:" + ts.encode() + b":" + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Signature": "v0=" + sig, "X-Slack-Request-Timestamp": ts}


def ignored_count(c, pipeline: str) -> int:
    status, _, text = c.get("/metrics")
    assert status == 200
    m = re.search(rf'^warmslot_requests_total{{pipeline="{pipeline}",status="ignored"}} (\d+)$', text, re.M)
    assert m, text[:400]
    return int(m.group(1))


def make_app():
    app = warmslot.App()
    ran = {"gh": 0}
    lock = threading.Lock()

    @app.pipeline("gh", signature=warmslot.github_signature(SECRET), events=["push", "pull_request"])
    def gh(event, ctx):
        with lock:
            ran["gh"] += 1
        return {"ran": ctx.headers["x-github-event"]}

    @app.pipeline("pay", signature=warmslot.stripe_signature(SECRET), events=("invoice.paid",), dedupe=False)
    def pay(event):
        return {"ran": event["type"]}

    @app.pipeline("chat", signature=warmslot.slack_signature(SECRET), events=["app_mention", "url_verification"])
    def chat(event):
        if event["type"] == "url_verification":
            return {"challenge": event["challenge"]}
        return {"ran": event["event"]["type"]}

    @app.pipeline("custom", events=["a.b"], events_from="header:X-Event-Type")
    def custom(event):
        return {"ran": "custom"}

    @app.pipeline("nested", events=["deep"], events_from="field:meta.kind", key="user")
    def nested(event):
        return {"ran": event["meta"]["kind"]}

    return app, ran


def test_github_events_header(serve):
    app, ran = make_app()
    server, c = serve(app)
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    status, _, reply = c.post("gh", body, github(body, "push", "d-1"), raw=True)
    assert (status, reply) == (200, {"ran": "push"})
    assert ran["gh"] == 1

    status, headers, reply = c.post("gh", body, github(body, "issues", "d-2"), raw=True)
    assert (status, reply) == (200, {"ignored": True})
    assert headers["x-warmslot-ignored"] == "issues"
    assert "x-warmslot-execution-id" not in headers
    # No header at all: ignored too (a gateway would not fail the sender).
    status, headers, reply = c.post("gh", body, github(body, None, "d-3"), raw=True)
    assert (status, reply) == (200, {"ignored": True})
    assert "x-warmslot-ignored" not in headers
    assert ran["gh"] == 1, "an ignored event never runs"
    assert ignored_count(c, "gh") == 2
    assert ignored_count(c, "pay") == 0

    # Not deduplicated: the ignored delivery id d-2 runs when it comes as a push.
    status, _, reply = c.post("gh", body, github(body, "pull_request", "d-2"), raw=True)
    assert (status, reply) == (200, {"ran": "pull_request"})
    assert ran["gh"] == 2


def test_signature_comes_first(serve):
    app, ran = make_app()
    server, c = serve(app)
    body = b'{"ref": "x"}'
    for event in ("issues", "push"):
        status, _, reply = c.post("gh", body, {"X-GitHub-Event": event}, raw=True)
        assert status == 401 and reply["error"]["code"] == "bad_signature", event
        bad = {**github(body, event), "X-Hub-Signature-256": "sha256=" + "0" * 64}
        assert c.post("gh", body, bad, raw=True)[0] == 401
    # An ignored type with a body that is not JSON is still refused (the body check comes first).
    junk = b"{not json"
    assert c.post("gh", junk, github(junk, "issues"), raw=True)[0] == 400
    assert ignored_count(c, "gh") == 0 and ran["gh"] == 0


def test_stripe_body_type(serve):
    app, _ = make_app()
    server, c = serve(app)
    paid = json.dumps({"id": "evt_1", "type": "invoice.paid"}).encode()
    assert c.post("pay", paid, stripe(paid), raw=True)[2] == {"ran": "invoice.paid"}
    failed = json.dumps({"id": "evt_2", "type": "charge.failed"}).encode()
    status, headers, reply = c.post("pay", failed, stripe(failed), raw=True)
    assert (status, reply, headers["x-warmslot-ignored"]) == (200, {"ignored": True}, "charge.failed")
    untyped = b'{"id": "evt_3"}'
    assert c.post("pay", untyped, stripe(untyped), raw=True)[2] == {"ignored": True}
    assert ignored_count(c, "pay") == 2


def test_slack_event_type_then_type(serve):
    app, _ = make_app()
    server, c = serve(app)
    mention = json.dumps({"type": "event_callback", "event": {"type": "app_mention", "text": "hi"}}).encode()
    assert c.post("chat", mention, slack(mention), raw=True)[2] == {"ran": "app_mention"}
    message = json.dumps({"type": "event_callback", "event": {"type": "message"}}).encode()
    status, headers, reply = c.post("chat", message, slack(message), raw=True)
    assert (status, reply, headers["x-warmslot-ignored"]) == (200, {"ignored": True}, "message")
    challenge = json.dumps({"type": "url_verification", "challenge": "c-42"}).encode()
    assert c.post("chat", challenge, slack(challenge), raw=True)[2] == {"challenge": "c-42"}
    assert ignored_count(c, "chat") == 1


def test_explicit_events_from(serve):
    app, _ = make_app()
    server, c = serve(app)
    assert c.post("custom", {}, {"X-Event-Type": "a.b"})[2] == {"ran": "custom"}
    assert c.post("custom", {}, {"X-Event-Type": "a"})[2] == {"ignored": True}
    assert c.post("nested", {"user": 1, "meta": {"kind": "deep"}})[2] == {"ran": "deep"}
    assert c.post("nested", {"user": 1, "meta": {"kind": "shallow"}})[2] == {"ignored": True}
    assert c.post("nested", {"user": 1, "meta": "deep"})[2] == {"ignored": True}
    assert c.post("nested", [1, 2])[2] == {"ignored": True}
    assert ignored_count(c, "custom") == 1 and ignored_count(c, "nested") == 3


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"events": "push", "signature": warmslot.github_signature(SECRET)}, TypeError, "events"),
        ({"events": [], "signature": warmslot.github_signature(SECRET)}, ValueError, "events"),
        ({"events": ["push", 3], "signature": warmslot.github_signature(SECRET)}, TypeError, "events"),
        ({"events": ["push", ""], "signature": warmslot.github_signature(SECRET)}, TypeError, "events"),
        ({"events": ["push"]}, ValueError, "events_from"),
        ({"events": ["push"], "signature": warmslot.hmac_signature(SECRET)}, ValueError, "events_from"),
        ({"events": ["push"], "events_from": "type"}, ValueError, "events_from"),
        ({"events": ["push"], "events_from": "field:a..b"}, ValueError, "events_from"),
        ({"events": ["push"], "events_from": "header:"}, ValueError, "events_from"),
        ({"events": ["push"], "events_from": 3}, TypeError, "events_from"),
        ({"events_from": "header:X-Event-Type"}, ValueError, "events_from needs events"),
    ],
)
def test_declaration_errors(kwargs, exc, match):
    app = warmslot.App()
    with pytest.raises(exc, match=match):
        app.pipeline("p", **kwargs)


def test_an_event_type_with_spaces_around_it_is_refused_at_declaration():
    app = warmslot.App()
    with pytest.raises(ValueError, match="spaces around it"):
        app.pipeline("gh", signature=warmslot.github_signature("s"), events=["push "])(lambda event, ctx: {})
