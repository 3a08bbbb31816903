"""Rough edges a new user hit in their first hour, each fixed (issue 19)."""

from __future__ import annotations

from typing import Any

import warmslot


def keyed_and_unkeyed_app() -> warmslot.App:
    app = warmslot.App()

    @app.pipeline("orders", key="order_id", missing_key="reject")
    def orders(event: Any, ctx: warmslot.Context) -> dict:
        return {"key": ctx.key}

    @app.pipeline("any")
    def any_value(event: Any, ctx: warmslot.Context) -> dict:
        return {"type": type(event).__name__}

    return app


def test_a_boolean_is_not_a_key(serve):
    _, c = serve(keyed_and_unkeyed_app())
    for value in (True, False):
        status, _, body = c.post("orders", {"order_id": value})
        assert status == 400, body
        assert body["error"]["code"] == "bad_request"
        assert body["error"]["message"] == 'key field "order_id" must be a string or a number, found a boolean'
    assert c.post("orders", {"order_id": 7})[2] == {"key": "7"}, "numbers still are keys"


def test_a_pipeline_that_rejects_keyless_events_says_the_body_must_be_an_object(serve):
    # (with missing_key="unkeyed", the default, such a body runs without a key: test_pipelines.py)
    _, c = serve(keyed_and_unkeyed_app())
    status, _, body = c.post("orders", [{"order_id": "a"}])
    assert status == 400, body
    assert body["error"]["message"] == (
        'the body must be a JSON object (the pipeline is keyed by its field "order_id"), found an array'
    )
    assert c.post("orders", "just text")[0] == 400


def test_an_unkeyed_pipeline_takes_any_json_value(serve):
    # Some providers batch events in an array (SendGrid's event webhook): an unkeyed pipeline gets it as is.
    _, c = serve(keyed_and_unkeyed_app())
    assert c.post("any", [{"event": "open"}, {"event": "click"}])[2] == {"type": "list"}
    assert c.post("any", {"event": "open"})[2] == {"type": "dict"}
