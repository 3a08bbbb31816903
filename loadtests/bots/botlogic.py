"""The support-bot logic shared by every peer bot (plain ASGI, FastAPI, Celery).

It is the same computation as ``warmslot_bot.py``: per-conversation state holds
the last 10 messages, and the reply echoes the text with the turn number.
"""

HISTORY_LEN = 10

# conversation key -> {"history": [...]}; lives in the serving process.
STATES: dict = {}


def support(event: dict, states: dict = STATES) -> dict:
    state = states.get(event["conversation"])
    if state is None:
        state = states[event["conversation"]] = {}
    history = state.setdefault("history", [])
    history.append(event["text"])
    del history[:-HISTORY_LEN]
    return {"reply": "echo: " + event["text"], "turn": len(history)}
