"""An async pipeline: awaited on an event loop owned by the slot pool (16 concurrent slots),
as a bot calling an LLM or any HTTP API would. Run: `warmslot run examples/async_llm.py:app`."""

import asyncio

import warmslot

app = warmslot.App()


@app.pipeline("llm", slots=16, key="user", timeout=10.0)
async def llm(event: dict, ctx: warmslot.Context) -> dict:
    await asyncio.sleep(0.05)  # stands in for `await client.chat.completions.create(...)`
    turns = ctx.state.setdefault("turns", 0) + 1
    ctx.state["turns"] = turns
    return {"answer": f"you said {event['text']!r}", "turns": turns}
