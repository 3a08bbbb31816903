"""The Linux scheduling policy of warmslot's own threads and worker processes.

A server with process slots starts its threads (HTTP, slots, store writers, autoscaler) and,
through its slot threads, its worker processes, under ``SCHED_BATCH``: the same share of CPU as
``SCHED_OTHER`` (nice values still apply), but a thread that wakes up does not preempt the one
running on a busy CPU; it runs when that one blocks or its time slice ends. On an idle machine
nothing changes: a woken thread gets an idle CPU at once.

Why: when every core is busy (process slots running a CPU-bound bot), each result used to wake the
server's slot and HTTP threads, and each wake interrupted a worker in the middle of its event.
Under ``SCHED_BATCH`` the server's threads run between the workers' slices and handle the results
and requests that gathered meanwhile in one go. Measured in ``loadtests/bench.py`` (see README,
"Scheduling policy").

Threads inherit the policy of the thread that creates them, and processes that of the thread that
spawns them, so the server switches the starting thread to ``SCHED_BATCH`` while it starts
everything (``batch_policy``) and switches it back afterwards (``Server.grow`` does the same).
Nothing is changed when the starting thread runs another policy than ``SCHED_OTHER`` (a real-time
or idle policy, or ``SCHED_BATCH`` already: someone chose it), on systems without these policies,
or when the call is refused. A ``SCHED_RESET_ON_FORK`` flag on the starting thread is kept.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

_RESET_ON_FORK = getattr(os, "SCHED_RESET_ON_FORK", 0)
ENV = "WARMSLOT_SCHED_BATCH"


def supported() -> bool:
    """True where the ``SCHED_BATCH`` policy can be asked for (Linux)."""
    return all(hasattr(os, n) for n in ("sched_setscheduler", "sched_getscheduler", "SCHED_BATCH", "SCHED_OTHER"))


def policy(tid: int = 0) -> int:
    """The scheduling policy of thread ``tid`` (0: the calling thread), without the reset-on-fork flag."""
    return os.sched_getscheduler(tid) & ~_RESET_ON_FORK


def from_env() -> Optional[bool]:
    """``WARMSLOT_SCHED_BATCH``: ``1``/``true``/``yes``/``on`` → True, ``0``/``false``/``no``/``off``
    → False, unset or empty → None (decide by the app)."""
    value = os.environ.get(ENV, "").strip().lower()
    if not value:
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{ENV}={value!r}: use 1 or 0 (true/false, yes/no, on/off)")


@contextlib.contextmanager
def batch_policy(enabled: bool = True) -> Iterator[bool]:
    """Runs the block with the calling thread under ``SCHED_BATCH`` (threads and processes it
    starts keep it), then puts its policy back as it was. Yields whether it switched."""
    before = None
    if enabled and supported():
        try:
            raw = os.sched_getscheduler(0)
            if raw & ~_RESET_ON_FORK == os.SCHED_OTHER:
                os.sched_setscheduler(0, os.SCHED_BATCH | (raw & _RESET_ON_FORK), os.sched_param(0))
                before = raw
        except OSError:
            pass
    try:
        yield before is not None
    finally:
        if before is not None:
            try:
                os.sched_setscheduler(0, before, os.sched_param(0))
            except OSError:
                pass
