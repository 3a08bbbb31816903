"""Standard Webhooks signatures, checked against the `standardwebhooks` package's own signer, and
secrets checked at declaration for every scheme."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import pytest
import warmslot
from standardwebhooks.webhooks import Webhook

SECRET = "whsec_" + base64.b64encode(b"a 24-byte webhook secret").decode()


def signed(secret: str, body: bytes, msg_id: str = "msg_2Lh9", when: datetime = None):
    when = when or datetime.now(tz=timezone.utc)
    sig = Webhook(secret).sign(msg_id, when, body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(when.timestamp())), "webhook-signature": sig}


def make_app():
    app = warmslot.App()

    @app.pipeline("std", signature=warmslot.standard_webhooks_signature(SECRET))
    def std(event, ctx):
        return {"type": event["type"], "id": ctx.headers["webhook-id"]}

    return app


def test_standard_webhooks_good_and_bad(serve):
    server, c = serve(make_app())
    body = json.dumps({"type": "invoice.paid", "data": {"n": 1}}).encode()
    status, _, reply = c.post("std", body, signed(SECRET, body), raw=True)
    assert status == 200 and reply == {"type": "invoice.paid", "id": "msg_2Lh9"}

    # The package's own verifier accepts what we accept (same headers, same body).
    Webhook(SECRET).verify(body, signed(SECRET, body))

    other = "whsec_" + base64.b64encode(b"another secret entirely!").decode()
    stale = datetime.now(tz=timezone.utc) - timedelta(minutes=6)
    future = datetime.now(tz=timezone.utc) + timedelta(minutes=6)
    cases = {
        "wrong secret": (body, signed(other, body)),
        "stale": (body, signed(SECRET, body, when=stale)),
        "from the future": (body, signed(SECRET, body, when=future)),
        "changed body": (body.replace(b"paid", b"void"), signed(SECRET, body)),
        "changed id": (body, {**signed(SECRET, body), "webhook-id": "msg_other"}),
        "garbage header": (body, {**signed(SECRET, body), "webhook-signature": "v1,!!!not base64"}),
        "other version only": (body, {**signed(SECRET, body), "webhook-signature": "v1a,abcd"}),
        "no headers": (body, {}),
        "timestamp not a number": (body, {**signed(SECRET, body), "webhook-timestamp": "soon"}),
    }
    for what, (payload, headers) in cases.items():
        status, h, reply = c.post("std", payload, headers, raw=True)
        assert status == 401, what
        assert reply["error"]["code"] == "bad_signature", what

    # Several signatures (key rotation): one good v1 among others is enough.
    good = signed(SECRET, body)
    several = " ".join(["v1,AAAA", signed(other, body)["webhook-signature"], good["webhook-signature"]])
    rotated = {**good, "webhook-signature": several}
    assert c.post("std", body, rotated, raw=True)[0] == 200
    assert c.post("std", body, signed(SECRET, body), raw=True)[0] == 200, "still serving"


def test_secret_forms():
    raw = b"a 24-byte webhook secret"
    assert warmslot.standard_webhooks_signature(SECRET).secret == raw
    assert warmslot.standard_webhooks_signature(SECRET[len("whsec_") :]).secret == raw
    assert warmslot.standard_webhooks_signature(raw).secret == raw
    with pytest.raises(ValueError, match="base64"):
        warmslot.standard_webhooks_signature("whsec_not base64!")
    with pytest.raises(ValueError, match="tolerance"):
        warmslot.standard_webhooks_signature(SECRET, tolerance=0)


@pytest.mark.parametrize(
    "make",
    [
        warmslot.github_signature,
        warmslot.slack_signature,
        warmslot.stripe_signature,
        warmslot.standard_webhooks_signature,
        warmslot.hmac_signature,
    ],
)
def test_empty_secrets_are_refused_for_every_scheme(make):
    for empty in ["", b""]:
        with pytest.raises(ValueError, match="secret"):
            make(empty)
    with pytest.raises(TypeError, match="secret"):
        make(None)


def test_a_string_is_not_a_signature():
    app = warmslot.App()
    with pytest.raises(TypeError, match="signature must be a warmslot signature"):
        app.pipeline("x", signature="secret")


def test_signature_timestamp_within_tolerance_is_accepted(serve):
    server, c = serve(make_app())
    body = b'{"type": "t"}'
    slightly_old = datetime.now(tz=timezone.utc) - timedelta(minutes=4)
    assert c.post("std", body, signed(SECRET, body, when=slightly_old), raw=True)[0] == 200
