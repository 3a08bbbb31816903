"""The server processes a run starts: free ports, their process groups, their logs."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from typing import Optional

from .common import ROOT


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProcessGroup:
    """Every server process started by the bench; each runs in its own session (process group),
    so that the workers it forks are measured (CPU time) and killed with it."""

    def __init__(self) -> None:
        self.procs: list = []

    def start(self, name: str, cmd: list, logdir: str, env: Optional[dict] = None, cwd: str = ROOT) -> subprocess.Popen:
        logpath = os.path.join(logdir, f"{name}.log")
        logf = open(logpath, "ab")
        logf.write(("$ " + " ".join(cmd) + "\n").encode())
        logf.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        logf.close()
        proc.logpath = logpath  # type: ignore[attr-defined]
        proc.name = name  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    def stop_all(self, grace: float = 3.0) -> None:
        procs, self.procs = self.procs[::-1], []
        for p in procs:
            self._signal(p, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.05, deadline - time.monotonic()))
        for p in procs:  # the group may outlive its leader: always make sure
            self._signal(p, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=2)


def log_tail(path: str, n: int = 15) -> str:
    try:
        with open(path, "rb") as f:
            lines = f.read().decode(errors="replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError:
        return ""
