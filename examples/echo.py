"""The smallest warmslot app: `warmslot run examples/echo.py:app`, then
curl -XPOST localhost:8000/hooks/echo -d '{"user": "ann", "text": "hi"}'"""

import warmslot

app = warmslot.App()


@app.pipeline("echo", slots=4, key="user")
def echo(event: dict, ctx: warmslot.Context) -> dict:
    ctx.state["count"] = ctx.state.get("count", 0) + 1  # per-user state, committed after return
    return {"reply": "echo: " + event["text"], "count": ctx.state["count"]}
