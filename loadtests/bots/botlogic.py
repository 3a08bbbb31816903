"""The support-bot logic every system in the benchmark runs (warmslot, plain ASGI, FastAPI, Celery).

``reply(event, state)`` is the whole computation: append the text to the conversation's history,
keep the last 10 messages, answer ``{"reply": "echo: " + text, "turn": len(history)}``.
warmslot passes the conversation's ``ctx.state`` (kept and committed by warmslot); the peers call
``support(event)``, which keeps the states in a dict of the serving process, so with several
worker processes each worker holds its own share of the conversations.
"""

from __future__ import annotations

import os
import time

HISTORY_LEN = 10
# bench.py --cpu-us: iterations of pure-Python work per event (0: the light bot).
CPU_ITERS = int(os.environ.get("BOT_CPU_ITERS", "0"))


def burn(iters: int) -> int:
    """Pure-Python CPU work (holds the GIL throughout), the same for every system."""
    x = 0
    for i in range(iters):
        x = (x * 31 + i) & 0xFFFF
    return x


def calibrate(cpu_us: float) -> int:
    """Loop iterations that take about ``cpu_us`` µs in this interpreter (best of 5)."""
    n = 100_000
    best = min(_timed(n) for _ in range(5))
    return max(1, int(n * cpu_us / (best * 1e6)))


def _timed(n: int) -> float:
    t0 = time.perf_counter()
    burn(n)
    return time.perf_counter() - t0


# conversation key -> {"history": [...]}; lives in the serving process (one dict per worker process).
STATES: dict[str, dict] = {}


def reply(event: dict, state: dict) -> dict:
    """Update one conversation's ``state`` with ``event`` and return the reply."""
    if CPU_ITERS:
        burn(CPU_ITERS)
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
