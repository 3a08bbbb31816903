"""A support chatbot as a class: `__init__` runs once per slot before traffic (load models,
open SDK clients there); `__call__` handles one event. State keeps the last 10 messages of each
conversation. Run: `warmslot run examples/support_bot.py:app`."""

import warmslot

app = warmslot.App()


@app.pipeline("support", min_slots=2, max_slots=8, key="conversation", timeout=5.0)
class SupportBot:
    def __init__(self) -> None:
        self.canned = {
            "refund": "I can help with refunds. What is your order number?",
            "password": "You can reset your password from the login page.",
        }

    def __call__(self, event: dict, ctx: warmslot.Context) -> dict:
        text = event["text"]
        history = ctx.state.setdefault("history", [])
        history.append(text)
        del history[:-10]
        reply = next((r for k, r in self.canned.items() if k in text.lower()), "An agent will be with you shortly.")
        return {"reply": reply, "turn": len(history)}
