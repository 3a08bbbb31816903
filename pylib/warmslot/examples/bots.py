"""The bundled example bots: ``warmslot run warmslot.examples.bots:app`` or ``warmslot demo``."""

from __future__ import annotations

import asyncio
import hashlib

import warmslot

app = warmslot.App()


@app.pipeline("echo", slots=2, key="user")
def echo(event: dict, ctx: warmslot.Context) -> dict:
    """Echoes the text and counts messages per user."""
    ctx.state["count"] = ctx.state.get("count", 0) + 1
    return {"reply": "echo: " + str(event.get("text", "")), "count": ctx.state["count"]}


@app.pipeline("support", min_slots=2, max_slots=8, key="conversation", timeout=5.0)
class SupportBot:
    """A support chatbot: keeps the last 10 messages of each conversation and routes by intent."""

    INTENTS = {
        "refund": "I can help with refunds. What is your order number?",
        "password": "You can reset your password from the login page.",
        "human": "Connecting you to a human agent.",
    }

    def __init__(self) -> None:
        # Runs once per slot before it takes traffic: load models, open SDK clients here.
        self.fallback = "Thanks! An agent will read this shortly."

    def __call__(self, event: dict, ctx: warmslot.Context) -> dict:
        text = str(event.get("text", ""))
        history = ctx.state.setdefault("history", [])
        history.append(text)
        del history[:-10]
        reply = next((r for word, r in self.INTENTS.items() if word in text.lower()), self.fallback)
        return {"reply": reply, "turn": len(history)}


@app.pipeline("signals", key="symbol", slots=16)
async def signals(event: dict, ctx: warmslot.Context) -> dict:
    """A trading-signal bot: awaits a (simulated) market-data call, keeps a moving average."""
    await asyncio.sleep(0.001)
    price = float(event.get("price", 0.0))
    prices = ctx.state.setdefault("prices", [])
    prices.append(price)
    del prices[:-20]
    avg = sum(prices) / len(prices)
    digest = hashlib.sha1(f"{event.get('symbol')}:{price}".encode()).hexdigest()[:8]
    return {"symbol": event.get("symbol"), "signal": "buy" if price < avg else "hold", "avg": avg, "id": digest}
