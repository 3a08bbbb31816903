"""Every bot in examples/ loads, warms up and answers a webhook."""

from __future__ import annotations

import glob
import hashlib
import hmac
import json
import os

import pytest
from conftest import Client
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
def test_example_serves(path):
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
