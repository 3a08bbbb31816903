import os

import warmslot

app = warmslot.App()


@app.pipeline("support", key="conversation", slots=1)
def support(event, ctx):
    history = ctx.state.setdefault("history", [])
    history.append(event["text"])
    del history[:-10]
    return {"reply": "echo: " + event["text"], "turn": len(history)}


# Signed GitHub-style webhooks for the locust users (bench.py drives /hooks/support only).
@app.pipeline(
    "github",
    key=lambda e: e["repository"]["full_name"],
    signature=warmslot.github_signature(os.environ.get("WARMSLOT_WEBHOOK_SECRET", "loadtest-secret")),
)
def github(event, ctx):
    ctx.state["seen"] = ctx.state.get("seen", 0) + 1
    return {"repository": ctx.key, "event": ctx.headers.get("x-github-event"), "seen": ctx.state["seen"]}
