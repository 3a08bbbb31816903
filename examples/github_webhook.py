"""A GitHub webhook handler with signature checking (HMAC-SHA256, verified in Rust before the
event is queued; a bad signature is answered 401). Per-repository state counts events.

    WEBHOOK_SECRET=... warmslot run examples/github_webhook.py:app
"""

import os

import warmslot

app = warmslot.App()
secret = os.environ.get("WEBHOOK_SECRET", "change-me")


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
