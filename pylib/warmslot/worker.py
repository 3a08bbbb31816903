"""A worker process of a ``process``-isolated pipeline: ``python -m warmslot.worker TARGET PIPELINE``.

Started by the server (never forked from it). Its stdin is one end of a Unix socketpair; the
worker moves it to another descriptor and reopens stdin on /dev/null. It imports the app from
TARGET (``path/to/bots.py:app`` or ``package.module:app``), warms the pipeline (class
``__init__``, ``setup=``), says so, then runs batch frames until the server closes the socket.
Frame formats are in ``rust/core/src/runtime/wire.rs``; ``_core`` encodes and decodes them.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import socket
import struct
import sys
import time
from typing import TYPE_CHECKING, List, Optional

if TYPE_CHECKING:
    from .runner import EventRunner

from . import _core, logs

READY, WARMUP_FAILED, HELLO = 2, 3, 0xFFFFFFFF


def _die_with_parent() -> None:
    """Asks Linux to SIGKILL us when the server dies, so a killed server leaves no orphans."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except Exception:
        pass


def _read_exact(sock: socket.socket, n: int) -> Optional[bytes]:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            return None
        got += k
    return bytes(buf)


def _read_frame(sock: socket.socket) -> Optional[bytes]:
    head = _read_exact(sock, 4)
    if head is None:
        return None
    (length,) = struct.unpack("<I", head)
    return _read_exact(sock, length)


def main(argv: List[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m warmslot.worker TARGET PIPELINE", file=sys.stderr)
        return 2
    target, name = argv
    sock = socket.socket(fileno=os.dup(0))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    _die_with_parent()
    # NOTE: the server sends SIGUSR1 to a worker whose run overstays its deadline, then kills it:
    # the stack shows where it hung. (Arming faulthandler.dump_traceback_later per event instead
    # starts and joins a watchdog thread per event: ~50 µs each, more than a light event costs.)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    parent = os.environ.get("WARMSLOT_PARENT_PID")
    if parent and os.getppid() != int(parent):
        return 0  # the server died before we could ask to die with it
    logs.configure_worker(name)
    try:
        from .loader import load_app
        from .runner import EventRunner

        app = load_app(target)
        spec = app.pipelines.get(name)
        if spec is None:
            raise LookupError(f"{target} has no pipeline named {name!r}")
        instance = spec.instantiate()
        resources = spec.setup() if spec.setup is not None else None
        loop = None
        if spec.is_async:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            if asyncio.iscoroutine(resources):
                resources = loop.run_until_complete(resources)
        runner = EventRunner(spec, instance, resources, app.debug)
    except BaseException as exc:
        from .runner import error_message

        sock.sendall(_core.encode_result(HELLO, WARMUP_FAILED, error_message(exc, True).encode()))
        return 1
    sock.sendall(_core.encode_result(HELLO, READY))

    if loop is not None:
        return loop.run_until_complete(_serve_async(sock, runner))
    # NOTE: the per-event loop uses local names and unpacks each event once (no slicing, no
    # helper call per result): 3166 -> 2864 ns an event with the support bot, decoding, running
    # and encoding included (timeit, 4-event frames, 2026-12-02).
    decode_batch, encode_result, run_sync = _core.decode_batch, _core.encode_result, runner.run_sync
    send, monotonic = sock.sendall, time.monotonic
    while True:
        frame = _read_frame(sock)
        if frame is None:
            return 0  # the server closed the socket: stop
        try:
            events = decode_batch(frame)
        except ValueError as exc:
            print(f"warmslot worker: bad batch frame: {exc}", file=sys.stderr)
            return 3
        received = monotonic()
        for index, execution_id, key, event, state, headers, received_at, remaining in events:
            if remaining is not None:
                # `remaining` was computed when the batch was sent: measure from its arrival.
                remaining -= monotonic() - received
                if remaining <= 0:
                    # Answered 504 while it waited behind its batch-mates: do not run it.
                    send(encode_result(index, 1, b"pipeline_timeout", b"the deadline passed before the run started"))
                    continue
            ok, a, b = run_sync(execution_id, key, event, state, headers, received_at, remaining)
            if ok:
                send(encode_result(index, 0, a, b))
            else:
                send(encode_result(index, 1, a.encode(), b.encode("utf-8", "backslashreplace")))


async def _serve_async(sock: socket.socket, runner: "EventRunner") -> int:
    """Async pipelines: every event of every batch frame runs as a task on this loop at once (the
    server sends at most `concurrency` at a time); results go back as each finishes."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    send_lock = asyncio.Lock()
    tasks: set = set()

    async def read_exact(n: int) -> Optional[bytes]:
        buf = bytearray()
        while len(buf) < n:
            chunk = await loop.sock_recv(sock, n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    async def one(ev: tuple) -> None:
        ok, a, b = await runner.run_async(*ev[1:])
        if ok:
            data = _core.encode_result(ev[0], 0, a, b)
        else:
            data = _core.encode_result(ev[0], 1, a.encode(), b.encode("utf-8", "backslashreplace"))
        async with send_lock:  # frames must not interleave
            await loop.sock_sendall(sock, data)

    while True:
        head = await read_exact(4)
        if head is None:
            break
        frame = await read_exact(struct.unpack("<I", head)[0])
        if frame is None:
            break
        for ev in _core.decode_batch(frame):
            task = loop.create_task(one(ev))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
