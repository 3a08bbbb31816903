"""The Linux scheduling policy of warmslot's own threads and worker processes.

A server starts its threads (HTTP, slots, store writers, autoscaler) and, through its slot threads,
its worker processes, under ``SCHED_BATCH``: the same share of CPU as ``SCHED_OTHER`` (nice values
still apply), but a thread that wakes up does not preempt the one running on a busy CPU; it runs
when that one blocks or its time slice ends. On an idle machine nothing changes: a woken thread
gets an idle CPU at once.

Why: when every core is busy (process slots running a CPU-bound bot), each result used to wake the
server's slot and HTTP threads, and each wake interrupted a worker in the middle of its event.
Under ``SCHED_BATCH`` the server's threads run between the workers' slices and handle the results
and requests that gathered meanwhile in one go. Measured in ``loadtests/bench.py`` (see README,
"Scheduling policy").

Threads inherit the policy of the thread that creates them, and processes that of the thread that
spawns them, so the server switches the starting thread to ``SCHED_BATCH`` while it starts
everything (``batch_policy``) and switches it back afterwards. Nothing is changed when the starting
thread runs another policy than ``SCHED_OTHER`` (a real-time or idle policy, or ``SCHED_BATCH``
already: someone chose it), on systems without these policies, or when the call is refused.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

_RESET_ON_FORK = getattr(os, "SCHED_RESET_ON_FORK", 0)


def supported() -> bool:
    """True where the ``SCHED_BATCH`` policy can be asked for (Linux)."""
    return all(hasattr(os, n) for n in ("sched_setscheduler", "sched_getscheduler", "SCHED_BATCH", "SCHED_OTHER"))


def policy(tid: int = 0) -> int:
    """The scheduling policy of thread ``tid`` (0: the calling thread), without the reset-on-fork flag."""
    return os.sched_getscheduler(tid) & ~_RESET_ON_FORK


@contextlib.contextmanager
def batch_policy(enabled: bool = True) -> Iterator[bool]:
    """Runs the block with the calling thread under ``SCHED_BATCH`` (threads and processes it
    starts keep it), then puts it back under ``SCHED_OTHER``. Yields whether it switched."""
    switched = False
    if enabled and supported():
        try:
            if policy() == os.SCHED_OTHER:
                os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
                switched = True
        except OSError:
            pass
    try:
        yield switched
    finally:
        if switched:
            try:
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            except OSError:
                pass
