"""A GitHub webhook handler with signature checking (HMAC-SHA256 of the body with the webhook's
secret, verified in Rust before the event is queued; a missing or bad signature is answered 401).
Per-repository state counts events.

It needs the webhook's secret (the one set on GitHub's webhook page) in ``WEBHOOK_SECRET``, and
refuses to start without it. To try it locally, with any secret:

    export WEBHOOK_SECRET=try-me
    warmslot run examples/github_webhook.py:app

then, in another shell with the same WEBHOOK_SECRET, send a request signed as GitHub signs it:

    BODY='{"action": "opened", "repository": {"full_name": "acme/bot"}}'
    SIG=$(python3 -c 'import hashlib, hmac, os, sys; print(hmac.new(os.environ["WEBHOOK_SECRET"].encode(), sys.argv[1].encode(), hashlib.sha256).hexdigest())' "$BODY")
    curl -s http://127.0.0.1:8000/hooks/github -H 'X-GitHub-Event: issues' -H "X-Hub-Signature-256: sha256=$SIG" -d "$BODY"

It answers ``{"repository":"acme/bot","event":"issues","seen":1}`` (``seen`` counts up per
repository and event); the same ``curl`` without the signature header, or signed with another
secret, is answered ``401``.
"""  # noqa: E501

import os

import warmslot

secret = os.environ.get("WEBHOOK_SECRET", "")
if not secret:
    # No default secret: anyone who can reach the server could sign events with a well-known one.
    raise SystemExit(
        "github_webhook.py: set WEBHOOK_SECRET to your GitHub webhook's secret "
        "(to try it locally: WEBHOOK_SECRET=try-me warmslot run examples/github_webhook.py:app)"
    )

app = warmslot.App()


@app.pipeline(
    "github",
    key=lambda event: event.get("repository", {}).get("full_name"),
    signature=warmslot.github_signature(secret),
)
def github(event: dict, ctx: warmslot.Context) -> dict:
    kind = ctx.headers.get("x-github-event", "unknown")
    counts = ctx.state.setdefault("events", {})
    counts[kind] = counts.get(kind, 0) + 1
    return {"repository": ctx.key, "event": kind, "seen": counts[kind]}
