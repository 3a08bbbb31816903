import warmslot
app = warmslot.App()

@app.pipeline("support", key="conversation", slots=1)
def support(event, ctx):
    history = ctx.state.setdefault("history", [])
    history.append(event["text"])
    del history[:-10]
    return {"reply": "echo: " + event["text"], "turn": len(history)}
