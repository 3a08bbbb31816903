"""The support bot as a warmslot app; the bot logic is ``botlogic.reply``, shared with every peer.

    warmslot run loadtests/bots/warmslot_bot.py:app

Environment (set by bench.py): ``WARMSLOT_ISOLATION`` is passed as ``App(isolation=...)``
(``thread`` or ``process`` slots; unset leaves the argument out, i.e. warmslot's default, thread
slots), ``WARMSLOT_SPIN_US`` sets ``App(spin_us=...)`` (how long an idle slot spins for the next
event before parking; unset keeps warmslot's default), ``WARMSLOT_SLOTS`` the number of slots of
the support pipeline (default 1). ``WARMSLOT_SCHED_BATCH=0`` is read by warmslot itself
(``App(sched_batch=None)``: keep the default scheduling policy).
"""

from __future__ import annotations

import os
import sys

import warmslot

# warmslot's loader puts this directory on sys.path; process slots import this file again in
# their worker processes, so make sure the neighbour module is importable there too.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from botlogic import reply  # noqa: E402

_app_options: dict = {}
if os.environ.get("WARMSLOT_ISOLATION"):
    _app_options["isolation"] = os.environ["WARMSLOT_ISOLATION"]
if os.environ.get("WARMSLOT_SPIN_US"):
    _app_options["spin_us"] = int(os.environ["WARMSLOT_SPIN_US"])

app = warmslot.App(**_app_options)


@app.pipeline("support", key="conversation", slots=int(os.environ.get("WARMSLOT_SLOTS", "1")))
def support(event: dict, ctx: warmslot.Context) -> dict:
    """The shared support bot on the conversation's warmslot state."""
    return reply(event, ctx.state)


# Signed GitHub-style webhooks for the locust users (bench.py drives /hooks/support only).
@app.pipeline(
    "github",
    key=lambda e: e["repository"]["full_name"],
    signature=warmslot.github_signature(os.environ.get("WARMSLOT_WEBHOOK_SECRET", "loadtest-secret")),
)
def github(event: dict, ctx: warmslot.Context) -> dict:
    """Counts deliveries per repository."""
    ctx.state["seen"] = ctx.state.get("seen", 0) + 1
    return {"repository": ctx.key, "event": ctx.headers.get("x-github-event"), "seen": ctx.state["seen"]}
