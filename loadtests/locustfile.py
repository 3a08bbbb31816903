"""Locust users of a warmslot support bot (``FastHttpUser``).

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000
    python loadtests/run_locust.py --host http://127.0.0.1:8000 --seconds 10 --users 20 --p99-ms 50

What the users do:
- each message belongs to a conversation drawn from a skewed, Zipf-like
  distribution over ``WARMSLOT_CONVERSATIONS`` keys (a few hot conversations,
  a long tail); the message text and metadata range from a few hundred bytes
  to a few KB (log-uniform);
- ``SyncBotUser`` POSTs ``/hooks/<pipeline>`` and gets the reply in the response;
- ``AsyncBotUser`` (a share ``WARMSLOT_ASYNC_SHARE`` of the users) POSTs with
  ``Prefer: respond-async``, expects 202 + ``execution_id`` + ``Location``,
  then polls ``GET /executions/<id>`` until ``succeeded``/``failed``/``timed_out``;
  its end-to-end time is reported as ``ASYNC <pipeline> end-to-end``;
- every reply is validated: ``reply == "echo: " + text`` and ``turn`` is an
  int in 1..10 (the bot keeps the last 10 messages).  A 429 is a failure;
- ``SignedWebhookUser`` (a share ``WARMSLOT_SIGNED_SHARE`` of the users) delivers
  GitHub-style webhooks to ``/hooks/github``, signed with HMAC-SHA256
  (``X-Hub-Signature-256``); one delivery in ten carries a wrong signature
  and must be refused with 401 ``bad_signature``.

Environment:
  WARMSLOT_PIPELINE       pipeline name (default ``support``)
  WARMSLOT_ASYNC_SHARE    share of users in async mode, 0..1 (default 0.2)
  WARMSLOT_CONVERSATIONS  number of conversation keys (default 1000)
  WARMSLOT_ZIPF_S         Zipf exponent (default 1.1)
  WARMSLOT_WAIT_MIN/MAX   think time between messages in seconds (default 0 / 0.05)
  WARMSLOT_POLL_TIMEOUT   seconds an async execution may take (default 10)
  WARMSLOT_CHECK_EXECUTION_ID  0 to not require the x-warmslot-execution-id
                          header (to point the sync users at a peer bot)
  WARMSLOT_SIGNED_SHARE   share of users sending signed webhooks (default 0.1;
                          0 for peer bots, which have no /hooks/github)
  WARMSLOT_WEBHOOK_SECRET the signing secret (default ``loadtest-secret``)
"""

import hashlib
import hmac
import itertools
import json
import math
import os
import random
import string
import time

import gevent
from locust import between, constant, task
from locust.contrib.fasthttp import FastHttpUser

PIPELINE = os.environ.get("WARMSLOT_PIPELINE", "support")
ASYNC_SHARE = min(1.0, max(0.0, float(os.environ.get("WARMSLOT_ASYNC_SHARE", "0.2"))))
CONVERSATIONS = int(os.environ.get("WARMSLOT_CONVERSATIONS", "1000"))
ZIPF_S = float(os.environ.get("WARMSLOT_ZIPF_S", "1.1"))
WAIT_MIN = float(os.environ.get("WARMSLOT_WAIT_MIN", "0"))
WAIT_MAX = float(os.environ.get("WARMSLOT_WAIT_MAX", "0.05"))
POLL_TIMEOUT = float(os.environ.get("WARMSLOT_POLL_TIMEOUT", "10"))
CHECK_EXEC_ID = os.environ.get("WARMSLOT_CHECK_EXECUTION_ID", "1") != "0"
SIGNED_SHARE = min(1.0, max(0.0, float(os.environ.get("WARMSLOT_SIGNED_SHARE", "0.1"))))
SECRET = os.environ.get("WARMSLOT_WEBHOOK_SECRET", "loadtest-secret").encode()
MIN_BYTES, MAX_BYTES = 250, 4096
HISTORY_LEN = 10
TERMINAL = {"succeeded", "failed", "timed_out"}

HOOK = f"/hooks/{PIPELINE}"
_HEADERS = {"Content-Type": "application/json"}
_ASYNC_HEADERS = {"Content-Type": "application/json", "Prefer": "respond-async"}

# Zipf-like key popularity: weight(rank k) = 1 / k**s, sampled by bisection on the CDF.
_CUM = list(itertools.accumulate(1.0 / (k**ZIPF_S) for k in range(1, CONVERSATIONS + 1)))
_WORDS = (
    "order",
    "refund",
    "delivery",
    "account",
    "password",
    "invoice",
    "plan",
    "card",
    "please",
    "thanks",
    "help",
    "when",
    "where",
    "broken",
    "late",
    "twice",
    "again",
    "why",
)
_seq = itertools.count()


def pick_conversation(rng: random.Random) -> str:
    return f"conv-{rng.choices(range(CONVERSATIONS), cum_weights=_CUM)[0]:06d}"


def make_event(rng: random.Random) -> dict:
    """One user message, JSON-encoded to between MIN_BYTES and MAX_BYTES (log-uniform)."""
    target = int(math.exp(rng.uniform(math.log(MIN_BYTES), math.log(MAX_BYTES))))
    conv = pick_conversation(rng)
    n = next(_seq)
    text_len = max(8, int(target * rng.uniform(0.2, 0.6)))
    words = []
    size = 0
    while size < text_len:
        w = rng.choice(_WORDS)
        words.append(w)
        size += len(w) + 1
    text = " ".join(words)[:text_len] + f" #{n}"
    event = {
        "conversation": conv,
        "user": "user-" + conv[5:],
        "text": text,
        "meta": {
            "channel": rng.choice(("web", "whatsapp", "telegram", "email")),
            "locale": rng.choice(("en-US", "de-DE", "fr-FR", "es-ES")),
            "ts": int(time.time() * 1000),
            "message_id": f"msg-{n:010d}",
            "attachments": [],
            "pad": "",
        },
    }
    encoded = len(json.dumps(event, separators=(",", ":")))
    if encoded < target:
        event["meta"]["pad"] = "".join(rng.choices(string.ascii_letters, k=target - encoded))
    return event


def check_reply(reply, text: str) -> str:
    """'' when the reply is right, else what is wrong."""
    if not isinstance(reply, dict):
        return f"reply is not an object but {type(reply).__name__}"
    if reply.get("reply") != "echo: " + text:
        return "reply does not echo the text"
    turn = reply.get("turn")
    if not isinstance(turn, int) or isinstance(turn, bool):
        return f"turn is not an int but {type(turn).__name__}"
    if not 1 <= turn <= HISTORY_LEN:
        return f"turn out of range 1..{HISTORY_LEN}: {turn}"
    return ""


def _brief(text) -> str:
    """An error reply, short and stable (the error code when it is warmslot's JSON error)."""
    try:
        err = json.loads(text or "")["error"]
        return str(err.get("code") if isinstance(err, dict) else err)[:100]
    except (ValueError, KeyError, TypeError, AttributeError):
        return (text or "")[:100]


def _wait():
    return between(WAIT_MIN, WAIT_MAX) if WAIT_MAX > 0 else constant(0)


class SyncBotUser(FastHttpUser):
    """Posts messages and reads the reply from the response."""

    weight = max(0, round(100 * (1 - ASYNC_SHARE)))
    wait_time = _wait()

    def on_start(self):
        self.rng = random.Random()

    @task
    def send_message(self):
        event = make_event(self.rng)
        with self.client.post(HOOK, data=json.dumps(event), headers=_HEADERS, name=HOOK, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}: {_brief(resp.text)}")
                return
            try:
                problem = check_reply(resp.json(), event["text"])
            except ValueError:
                problem = "reply is not valid JSON"
            if problem:
                resp.failure(problem)
            elif CHECK_EXEC_ID and not resp.headers.get("x-warmslot-execution-id"):
                resp.failure("missing x-warmslot-execution-id header")


class AsyncBotUser(FastHttpUser):
    """Posts with ``Prefer: respond-async`` and polls the execution until it ends."""

    weight = max(0, round(100 * ASYNC_SHARE))
    wait_time = _wait()

    def on_start(self):
        self.rng = random.Random()

    def _fire(self, start: float, exc=None, length: int = 0):
        self.environment.events.request.fire(
            request_type="ASYNC",
            name=f"{PIPELINE} end-to-end",
            response_time=(time.perf_counter() - start) * 1000.0,
            response_length=length,
            exception=exc,
            context={},
        )

    @task
    def send_message_async(self):
        event = make_event(self.rng)
        start = time.perf_counter()
        with self.client.post(
            HOOK, data=json.dumps(event), headers=_ASYNC_HEADERS, name=f"{HOOK} (async)", catch_response=True
        ) as resp:
            if resp.status_code != 202:
                resp.failure(
                    "status 200, expected 202 (Prefer: respond-async ignored)"
                    if resp.status_code == 200
                    else f"status {resp.status_code}, expected 202: {_brief(resp.text)}"
                )
                return
            try:
                exec_id = resp.json()["execution_id"]
            except (ValueError, KeyError, TypeError):
                resp.failure("no execution_id in the 202 reply")
                return
            location = resp.headers.get("Location") or resp.headers.get("location")
            if location != f"/executions/{exec_id}":
                resp.failure(f"Location {location!r} is not /executions/{exec_id}")
                return
        delay = 0.002
        deadline = start + POLL_TIMEOUT
        while True:
            with self.client.get(f"/executions/{exec_id}", name="/executions/[id]", catch_response=True) as poll:
                if poll.status_code != 200:
                    poll.failure(f"status {poll.status_code}: {_brief(poll.text)}")
                    self._fire(start, RuntimeError(f"poll status {poll.status_code}"))
                    return
                try:
                    record = poll.json()
                except ValueError:
                    poll.failure("execution record is not valid JSON")
                    self._fire(start, RuntimeError("invalid execution record"))
                    return
                status = record.get("status")
                if status not in TERMINAL | {"queued", "running"}:
                    poll.failure(f"unknown status {status!r}")
                    self._fire(start, RuntimeError(f"unknown status {status!r}"))
                    return
                if record.get("id") not in (None, exec_id) or record.get("pipeline") not in (None, PIPELINE):
                    poll.failure("execution record is for another execution or pipeline")
                    self._fire(start, RuntimeError("wrong execution record"))
                    return
                if status in TERMINAL:
                    if status != "succeeded":
                        err = record.get("error")
                        code = err.get("code") if isinstance(err, dict) else err
                        poll.failure(f"execution {status}: {str(code)[:100]}")
                        self._fire(start, RuntimeError(f"execution {status}"))
                        return
                    problem = check_reply(record.get("result"), event["text"])
                    if problem:
                        poll.failure(problem)
                        self._fire(start, RuntimeError(problem))
                    else:
                        self._fire(start, None, len(poll.content or b""))
                    return
            if time.perf_counter() > deadline:
                self._fire(start, TimeoutError(f"execution {exec_id} not done after {POLL_TIMEOUT}s"))
                return
            gevent.sleep(delay)
            delay = min(delay * 2, 0.1)


class SignedWebhookUser(FastHttpUser):
    """Delivers signed GitHub-style webhooks; a tenth are forged and must get 401."""

    weight = max(0, round(100 * SIGNED_SHARE))
    wait_time = _wait()

    def on_start(self):
        self.rng = random.Random()

    @task
    def deliver(self):
        repo = f"acme/{pick_conversation(self.rng)}"
        event = {
            "action": self.rng.choice(("opened", "closed", "synchronize")),
            "repository": {"full_name": repo},
            "sender": {"login": "octocat"},
            "number": next(_seq),
        }
        body = json.dumps(event).encode()
        forged = self.rng.random() < 0.1
        sig = hmac.new(b"wrong" if forged else SECRET, body, hashlib.sha256).hexdigest()
        headers = {
            "Content-Type": "application/json",
            "X-GitHub-Event": "pull_request",
            "X-Hub-Signature-256": "sha256=" + sig,
        }
        name = "/hooks/github (forged)" if forged else "/hooks/github"
        with self.client.post("/hooks/github", data=body, headers=headers, name=name, catch_response=True) as resp:
            if forged:
                if resp.status_code != 401 or _brief(resp.text) != "bad_signature":
                    resp.failure(f"forged signature got {resp.status_code}: {_brief(resp.text)}")
                else:
                    resp.success()
                return
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}: {_brief(resp.text)}")
                return
            try:
                reply = resp.json()
            except ValueError:
                resp.failure("reply is not valid JSON")
                return
            if reply.get("repository") != repo or not isinstance(reply.get("seen"), int):
                resp.failure("reply does not name the repository and count")


# A zero weight would make locust refuse the class; drop it instead.
if SignedWebhookUser.weight == 0:
    del SignedWebhookUser
if AsyncBotUser.weight == 0:
    del AsyncBotUser
elif SyncBotUser.weight == 0:
    del SyncBotUser
