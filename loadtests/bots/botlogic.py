"""The support-bot logic every system in the benchmark runs (warmslot, plain ASGI, FastAPI, Celery).

``reply(event, state)`` is the whole computation: append the text to the conversation's history,
keep the last 10 messages, answer ``{"reply": "echo: " + text, "turn": len(history)}``.
warmslot passes the conversation's ``ctx.state`` (kept and committed by warmslot); the peers call
``support(event)``, which keeps the states in a dict of the serving process, so with several
worker processes each worker holds its own share of the conversations.
"""

from __future__ import annotations

HISTORY_LEN = 10

# conversation key -> {"history": [...]}; lives in the serving process (one dict per worker process).
STATES: dict[str, dict] = {}


def reply(event: dict, state: dict) -> dict:
    """Update one conversation's ``state`` with ``event`` and return the reply."""
    history = state.setdefault("history", [])
    history.append(event["text"])
    del history[:-HISTORY_LEN]
    return {"reply": "echo: " + event["text"], "turn": len(history)}


def support(event: dict, states: dict[str, dict] = STATES) -> dict:
    """The bot for peers without a state store: the conversation's state lives in ``states``."""
    key = event["conversation"]
    state = states.get(key)
    if state is None:
        state = states[key] = {}
    return reply(event, state)
