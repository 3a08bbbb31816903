"""Every bot in examples/ loads, warms up and answers a webhook."""

from __future__ import annotations

import glob
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Dict, Tuple

import pytest
from conftest import Client, free_port, wait_healthy
from warmslot.loader import load_app

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.py")))

EVENTS = {
    "echo": {"user": "ann", "text": "hi"},
    "support": {"conversation": "c1", "text": "I want a refund"},
    "llm": {"user": "u", "text": "hello"},
    "github": {"action": "opened", "repository": {"full_name": "acme/bot"}},
}


def test_there_are_examples():
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_example_serves(path, monkeypatch):
    monkeypatch.setenv("WEBHOOK_SECRET", "a-test-secret")  # github_webhook.py refuses to start without one
    app = load_app(path + ":app")
    with app.start("127.0.0.1", 0) as server:
        c = Client(server.host, server.port)
        for name in app.pipelines:
            body = json.dumps(EVENTS[name]).encode()
            headers = {"X-GitHub-Event": "pull_request"}
            spec = app.pipelines[name]
            if spec.signature is not None:
                digest = hmac.new(spec.signature.secret, body, hashlib.sha256).hexdigest()
                headers["X-Hub-Signature-256"] = "sha256=" + digest
            status, _, reply = c.post(name, body, headers, raw=True)
            assert status == 200, (name, reply)
            assert isinstance(reply, dict) and reply
        c.close()


# -- examples/github_webhook.py: no default secret, and a signed request to try -----------------

GITHUB = os.path.join(ROOT, "examples", "github_webhook.py")


def test_github_example_refuses_to_start_without_a_secret():
    env = {k: v for k, v in os.environ.items() if k != "WEBHOOK_SECRET"}
    for secret in (None, ""):
        if secret is not None:
            env["WEBHOOK_SECRET"] = secret
        result = subprocess.run(
            [sys.executable, "-m", "warmslot", "run", f"{GITHUB}:app", "--port", str(free_port())],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0
        assert result.stdout == "", "it never served"
        assert result.stderr.splitlines() == [
            "github_webhook.py: set WEBHOOK_SECRET to your GitHub webhook's secret "
            "(to try it locally: WEBHOOK_SECRET=try-me warmslot run examples/github_webhook.py:app)"
        ]


def _serve_github(secret: str) -> Tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "warmslot", "run", f"{GITHUB}:app", "--port", str(port)],
        env={**os.environ, "WEBHOOK_SECRET": secret},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_healthy(port, proc)
    return proc, port


def _post(port: int, body: bytes, headers: Dict[str, str]) -> Tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/hooks/github", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_github_example_takes_requests_signed_as_github_signs_them_and_refuses_others():
    secret = "s3cret-for-this-test"
    proc, port = _serve_github(secret)
    try:
        body = json.dumps({"action": "opened", "repository": {"full_name": "acme/bot"}}).encode()
        signed = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        event = {"X-GitHub-Event": "issues", "Content-Type": "application/json"}
        assert _post(port, body, {**event, "X-Hub-Signature-256": signed}) == (
            200,
            {"repository": "acme/bot", "event": "issues", "seen": 1},
        )
        status, reply = _post(port, body, event)
        assert status == 401 and reply["error"]["code"] == "bad_signature", reply
        other = "sha256=" + hmac.new(b"another-secret", body, hashlib.sha256).hexdigest()
        assert _post(port, body, {**event, "X-Hub-Signature-256": other})[0] == 401
        assert _post(port, body + b" ", {**event, "X-Hub-Signature-256": signed})[0] == 401, "the body is signed"
        assert _post(port, body, {**event, "X-Hub-Signature-256": signed})[1]["seen"] == 2
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def _docstring_commands() -> Tuple[str, str]:
    """The docstring's request commands (BODY=, SIG=, curl) and the answer it says they get."""
    import ast

    with open(GITHUB) as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ""
    commands = [ln.strip() for ln in doc.splitlines() if re.match(r"\s+(BODY=|SIG=|curl )", ln)]
    assert len(commands) == 3, commands
    answer = re.search(r"It answers ``(.+?)``", doc)
    assert answer is not None, doc
    return "\n".join(commands), answer.group(1)


@pytest.mark.skipif(shutil.which("curl") is None or shutil.which("bash") is None, reason="needs curl and bash")
def test_github_example_docstring_request_works_as_pasted():
    commands, answer = _docstring_commands()
    assert "127.0.0.1:8000" in commands
    secret = "try-me"
    proc, port = _serve_github(secret)
    try:
        script = commands.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        env = {**os.environ, "WEBHOOK_SECRET": secret}
        done = subprocess.run(["bash", "-euc", script], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done
        assert done.stdout.strip() == answer
        unsigned = script.replace('-H "X-Hub-Signature-256: sha256=$SIG" ', "") + " -o /dev/null -w '%{http_code}'"
        done = subprocess.run(["bash", "-euc", unsigned], env=env, capture_output=True, text=True, timeout=60)
        assert done.stdout.strip() == "401", done
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


# -- the examples tested as a user would, with warmslot.testing ---------------------------------


def test_github_example_with_the_test_client(monkeypatch):
    monkeypatch.setenv("WEBHOOK_SECRET", "a-test-secret")
    app = load_app(GITHUB + ":app")
    event = {"action": "opened", "repository": {"full_name": "acme/bot"}}
    with app.test_client() as client:
        r = client.post("github", json=event, event="issues")  # signed with the pipeline's secret
        assert r.status_code == 200
        assert r.json() == {"repository": "acme/bot", "event": "issues", "seen": 1}
        assert client.post("github", json=event, event="issues").json()["seen"] == 2
        assert client.post("github", json=event, event="push").json() == {
            "repository": "acme/bot",
            "event": "push",
            "seen": 1,
        }
        refused = client.post("github", json=event, event="issues", secret="another-secret")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "bad_signature"
        assert client.post("github", json=event, sign=False).status_code == 401
        done = client.wait(client.post("github", json=event, event="issues", prefer_async=True).execution_id)
        assert done["status"] == "succeeded"


def test_echo_example_with_the_test_client():
    app = load_app(os.path.join(ROOT, "examples", "echo.py") + ":app")
    with app.test_client() as client:
        assert client.post("echo", json={"user": "ann", "text": "hi"}).json() == {"reply": "echo: hi", "count": 1}
        assert client.post("echo", json={"user": "ann", "text": "again"}).json()["count"] == 2
        assert client.post("echo", json={"user": "bob", "text": "hey"}).json()["count"] == 1
