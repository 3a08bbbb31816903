"""A counter bot for the store benchmark (``loadtests/store_bench.py``): each event adds one to
its user's counter. ``WARMSLOT_STATE`` picks the store (default ``memory``), ``WARMSLOT_SLOTS``
the number of slots (default 2), ``WARMSLOT_ISOLATION`` thread or process slots.

    warmslot run loadtests/bots/counter_bot.py:app
"""

from __future__ import annotations

import os

import warmslot

_options: dict = {"state": os.environ.get("WARMSLOT_STATE", "memory")}
if os.environ.get("WARMSLOT_ISOLATION"):
    _options["isolation"] = os.environ["WARMSLOT_ISOLATION"]

app = warmslot.App(**_options)


@app.pipeline("count", key="user", slots=int(os.environ.get("WARMSLOT_SLOTS", "2")))
def count(event: dict, ctx: warmslot.Context) -> dict:
    """Adds one to the user's counter and answers the new count."""
    ctx.state["n"] = ctx.state.get("n", 0) + 1
    return {"user": ctx.key, "n": ctx.state["n"]}
