"""HTTP checks of a server: ready (``/healthz`` and one real event), and a reply's full check."""

from __future__ import annotations

import http.client
import json
import time
from typing import Optional

from .common import HISTORY_LEN, HOOK_PATH, NGINX_TEXT
from .processes import log_tail


def http_request(port: int, method: str, path: str, body: Optional[bytes] = None, timeout: float = 2.0) -> tuple:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def reply_problem(body: bytes, text: str) -> Optional[str]:
    """Full check of one reply to an event whose text is ``text``; None when it is right."""
    try:
        reply = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:200]!r}"
    if not isinstance(reply, dict) or set(reply) != {"reply", "turn"}:
        return f"not {{reply, turn}}: {body[:200]!r}"
    if reply["reply"] != "echo: " + text:
        return f"reply does not echo {text!r}: {body[:200]!r}"
    if not isinstance(reply["turn"], int) or not 1 <= reply["turn"] <= HISTORY_LEN:
        return f"turn not an int in 1..{HISTORY_LEN}: {body[:200]!r}"
    return None


def check_probe(port: int, probe_body: bytes, nginx: bool) -> None:
    """POST one real event and check the whole reply; raises RuntimeError when it is wrong."""
    status, data = http_request(port, "POST", HOOK_PATH, probe_body, timeout=5.0)
    if status != 200:
        raise RuntimeError(f"POST {HOOK_PATH} -> {status} {data[:200]!r}")
    problem = reply_problem(data, NGINX_TEXT if nginx else json.loads(probe_body)["text"])
    if problem:
        raise RuntimeError("wrong reply to a probe event: " + problem)


def wait_ready(port: int, procs: list, timeout: float, probe_body: bytes, nginx: bool) -> None:
    """Ready = GET /healthz answers 200, then one POST of a real event gets a right reply."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    stage = "healthz"
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.name} exited with code {p.returncode} before ready:\n" + log_tail(p.logpath))
        try:
            if stage == "healthz":
                status, _ = http_request(port, "GET", "/healthz", timeout=1.0)
                if status == 200:
                    stage = "probe"
                    continue
                last = f"GET /healthz -> {status}"
            else:
                check_probe(port, probe_body, nginx)
                return
        except (OSError, http.client.HTTPException, RuntimeError) as exc:
            last = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, RuntimeError) and "wrong reply" in str(exc):
                raise
        time.sleep(0.05)
    tails = "\n".join(f"--- {p.name}:\n{log_tail(p.logpath)}" for p in procs)
    raise RuntimeError(f"not ready after {timeout:.0f}s ({stage}: {last})\n{tails}")
