"""The admin token guards /metrics and /executions/*; webhooks and /healthz stay open."""

from __future__ import annotations

import os
import threading

import pytest
import warmslot
from prometheus_client.parser import text_string_to_metric_families

TOKEN = "tok-3f9a_Zq"


def make_app(**kw):
    app = warmslot.App(**kw)

    @app.pipeline("echo", key="user")
    def echo(event, ctx):
        return {"user": event["user"]}

    return app


def test_admin_routes_need_the_bearer_token(serve):
    server, c = serve(make_app(admin_token=TOKEN))
    status, headers, _ = c.post("echo", {"user": "a"}, {"Prefer": "respond-async"})
    assert status == 202, "webhooks stay open"
    exec_id = headers["x-warmslot-execution-id"]
    assert c.get("/healthz")[0] == 200, "/healthz stays open"

    for path in ["/metrics", f"/executions/{exec_id}", "/executions/nope"]:
        for auth in [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer "]:
            hdrs = {"Authorization": auth} if auth else {}
            status, h, body = c.request("GET", path, headers=hdrs)
            assert status == 401, (path, auth, body)
            assert body["error"]["code"] == "unauthorized"
            assert "Bearer" in body["error"]["message"]
            assert h["www-authenticate"].startswith("Bearer")

    good = {"Authorization": f"Bearer {TOKEN}"}
    status, _, text = c.request("GET", "/metrics", headers=good)
    assert status == 200
    names = {f.name for f in text_string_to_metric_families(text)}
    assert "warmslot_requests" in names
    status, _, record = c.request("GET", f"/executions/{exec_id}", headers=good)
    assert status == 200 and record["id"] == exec_id
    # The token is checked before the method: a POST without it learns nothing.
    assert c.request("POST", "/metrics", b"", raw=True)[0] == 401
    assert c.request("POST", "/metrics", b"", headers=good, raw=True)[0] == 405


def test_without_a_token_admin_routes_are_open(serve, monkeypatch):
    monkeypatch.delenv("WARMSLOT_ADMIN_TOKEN", raising=False)
    server, c = serve(make_app())
    assert c.get("/metrics")[0] == 200


def test_token_from_the_environment(serve, monkeypatch):
    monkeypatch.setenv("WARMSLOT_ADMIN_TOKEN", TOKEN)
    app = make_app()
    assert app.admin_token == TOKEN
    server, c = serve(app)
    assert c.get("/metrics")[0] == 401
    assert c.request("GET", "/metrics", headers={"Authorization": f"bearer {TOKEN}"})[0] == 200


@pytest.mark.parametrize("bad", ["", "   ", " padded", "line\nbreak", 42])
def test_bad_tokens_are_refused_at_declaration(bad):
    with pytest.raises(ValueError, match="admin_token"):
        warmslot.App(admin_token=bad)


def test_cli_says_admin_routes_need_the_token(tmp_path):
    from conftest import free_port, wait_for
    from test_cli import run_cli, wait_healthy

    bot = tmp_path / "bot.py"
    bot.write_text("import warmslot\napp = warmslot.App()\n@app.pipeline\ndef hi(event):\n    return {}\n")
    port = free_port()
    env = dict(os.environ, WARMSLOT_ADMIN_TOKEN=TOKEN)
    proc = run_cli("run", str(bot), "--port", str(port), env=env)
    seen: list = []
    reader = threading.Thread(target=lambda: seen.extend(iter(proc.stdout.readline, "")))
    reader.start()
    try:
        wait_healthy(port, proc)
        # /healthz answers as soon as the listener is up; the banner is printed a moment later.
        wait_for(lambda: any("Authorization: Bearer" in line for line in seen), 30, "the admin-token banner")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        reader.join(timeout=30)
    out = "".join(seen)
    assert "Authorization: Bearer" in out, out
    assert TOKEN not in out + err, "the token itself is never printed"
    assert proc.returncode == 0, err
