"""`App`: declare pipelines, then serve them."""

from __future__ import annotations

import atexit
import logging
import signal
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import _core, _json
from .predictor import Autoscaler
from .slots import PipelineRuntime
from .spec import KeySpec, PipelineSpec, Signature

log = logging.getLogger("warmslot")

_running: "weakref.WeakSet[Server]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    # Stop Rust threads and join slot threads before the interpreter finalizes.
    for server in list(_running):
        server.stop(drain=1.0)


def _parse_state(state: str) -> Tuple[Optional[str], Optional[str]]:
    """(SQLite database path, Redis URL); both None for the in-memory store."""
    if state in ("memory", "memory://", ""):
        return None, None
    if state.startswith("redis://"):
        return None, state
    if state.startswith("sqlite://"):
        # SQLAlchemy's convention: sqlite:///relative.db, sqlite:////absolute/path.db,
        # and plain sqlite:// for a private in-memory database.
        rest = state[len("sqlite://") :]
        path = rest[1:] if rest.startswith("/") else rest
        return path or ":memory:", None
    raise ValueError(
        f"state={state!r} is not a known store; use 'memory', 'sqlite:///path.db' or 'redis://host:6379/0'"
    )


class App:
    """A set of pipelines served behind webhooks.

    ``state``: where per-key state lives: ``"memory"`` (the default, lost at exit) or
    ``"sqlite:///state.db"`` (durable, one SQLite file; relative to the working directory, or
    absolute with four slashes: ``"sqlite:////var/lib/bots/state.db"``), or ``"redis://host:6379/0"``
    (cluster mode: several warmslot processes share state; a per-key lease keeps one key's events
    from running in two processes at once). ``debug=True`` puts
    tracebacks into error bodies. ``max_records``: executions kept for ``GET /executions/<id>``.
    ``spin_us``: how long idle threads spin for the next event before parking (lower latency at
    low load against some CPU; 0 parks at once). ``io_threads``: tokio threads for HTTP (1 runs a
    current-thread runtime).
    """

    def __init__(
        self,
        state: str = "memory",
        *,
        debug: bool = False,
        max_body_bytes: int = 1 << 20,
        max_records: int = 100_000,
        io_threads: int = 1,
        max_connections: int = 10_000,
        drain_timeout: float = 10.0,
        spin_us: int = 50,
    ) -> None:
        self.state = state
        self.sqlite_path, self.redis_url = _parse_state(state)
        self.debug = debug
        self.max_body_bytes = max_body_bytes
        self.max_records = max_records
        self.io_threads = io_threads
        self.max_connections = max_connections
        self.drain_timeout = drain_timeout
        self.spin_us = spin_us
        self.pipelines: Dict[str, PipelineSpec] = {}
        self._servers: List[Server] = []
        self._stop_requested: Optional[threading.Event] = None

    def pipeline(
        self,
        name: Optional[str] = None,
        *,
        slots: Optional[int] = None,
        min_slots: Optional[int] = None,
        max_slots: Optional[int] = None,
        key: KeySpec = None,
        timeout: Optional[float] = 30.0,
        setup: Optional[Callable[[], Any]] = None,
        max_body_bytes: Optional[int] = None,
        queue_size: int = 4096,
        max_batch: int = 64,
        signature: Optional[Signature] = None,
        reply: str = "sync",
        scaling: str = "predictive",
        scaling_options: Optional[Dict[str, Any]] = None,
    ) -> Callable[[Any], Any]:
        """Registers a function or class as the pipeline ``name`` (default: its ``__name__``).

        ``slots`` pre-warmed workers (or ``min_slots`` warm, up to ``max_slots``); ``key``: event
        field (or callable(event) -> str) whose events run one at a time, in order, sharing
        ``ctx.state``; ``timeout``: seconds from receipt to answer (504 after); ``setup``: called
        once per slot, its result is ``ctx.resources``; ``queue_size``: events that may wait
        before 429; ``signature``: a webhook signature check (see ``warmslot.github_signature``);
        ``reply="async"`` answers every webhook 202 at once (providers that want a fast 2xx), as
        ``Prefer: respond-async`` does per request. ``scaling``: how the pool is sized between
        ``min_slots`` and ``max_slots``: ``"predictive"`` (default; warms slots one warm-up ahead
        of the traffic and learns recurring bursts), ``"reactive"`` (the Knative Pod Autoscaler)
        or ``"static"`` (``min_slots``, never more); ``scaling_options``: that policy's
        parameters (``warmslot.policies``), e.g. ``{"stable_window": 30}`` for ``"reactive"``.
        """

        def register(target: Any) -> Any:
            pname = name or getattr(target, "__name__", None)
            if not pname:
                raise ValueError("pipeline needs a name")
            if pname in self.pipelines:
                raise ValueError(f"pipeline {pname!r} is declared twice")
            default = 16 if _is_async_target(target) else 4
            lo = min_slots if min_slots is not None else (slots if slots is not None else 1)
            hi = max_slots if max_slots is not None else (slots if slots is not None else max(lo, default))
            if slots is not None and (min_slots is not None or max_slots is not None):
                raise ValueError(f"pipeline {pname!r}: give slots=, or min_slots=/max_slots=, not both")
            self.pipelines[pname] = PipelineSpec(
                name=pname,
                target=target,
                min_slots=lo,
                max_slots=hi,
                key=key,
                timeout=timeout,
                setup=setup,
                max_body_bytes=max_body_bytes if max_body_bytes is not None else self.max_body_bytes,
                queue_size=queue_size,
                max_batch=max_batch,
                signature=signature,
                reply=reply,
                scaling=scaling,
                scaling_options=scaling_options,
            )
            return target

        return register

    def start(self, host: str = "127.0.0.1", port: int = 8000, *, wait: bool = True, timeout: float = 60.0) -> "Server":
        """Starts serving in background threads; returns a `Server` (port 0 picks a free port)."""
        server = Server(self, host, port)
        self._servers.append(server)
        if wait:
            try:
                server.wait_ready(timeout)
            except BaseException:
                server.stop(drain=0)
                raise
        return server

    def serve(self, host: str = "127.0.0.1", port: int = 8000) -> None:
        """Serves until SIGINT or SIGTERM (or ``app.stop()`` from another thread), then drains and
        stops. Port 0 picks a free port; ``app.server.port`` tells which once it is up."""
        stop = self._stop_requested = threading.Event()
        server = self.start(host, port, wait=False)
        previous = {}
        if threading.current_thread() is threading.main_thread():
            # Both signals stop the server, also when the shell started us with SIGINT ignored
            # (background jobs of non-interactive shells).
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: stop.set())
        try:
            server.wait_ready(60.0, stop)
            names = ", ".join(f"/hooks/{n}" for n in self.pipelines)
            print(f"warmslot: serving {names} on {server.url} (Ctrl-C to stop)", flush=True)
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            print("warmslot: stopping (draining in-flight executions)...", flush=True)
            server.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop(self) -> None:
        """Stops every server this app started (and makes a blocking ``serve()`` return)."""
        if self._stop_requested is not None:
            self._stop_requested.set()
        for server in list(self._servers):
            server.stop()

    @property
    def server(self) -> Optional["Server"]:
        """The most recently started server that is still running, if any."""
        running = [s for s in self._servers if not s.stopped]
        return running[-1] if running else None


def _is_async_target(target: Any) -> bool:
    from .spec import _is_async

    return _is_async(target)


def _key_fn(key: Callable[[Any], Any]) -> Callable[[bytes], Optional[str]]:
    def compute(body: bytes) -> Optional[str]:
        value = key(_json.loads(body))
        return None if value is None else str(value)

    return compute


class Server:
    """A running app. Use ``app.start(...)``; stop with ``stop()`` or as a context manager."""

    def __init__(self, app: App, host: str, port: int) -> None:
        if not app.pipelines:
            raise ValueError("the app has no pipelines; declare one with @app.pipeline(...)")
        self.app = app
        specs = list(app.pipelines.values())
        config = {
            "host": host,
            "port": port,
            "max_records": app.max_records,
            "io_threads": app.io_threads,
            "max_connections": app.max_connections,
            "spin_us": app.spin_us,
            "sqlite_path": app.sqlite_path,
            "redis_url": app.redis_url,
        }
        key_fns: List[Optional[Callable[[bytes], Optional[str]]]] = [
            _key_fn(s.key) if callable(s.key) else None for s in specs
        ]
        self._core = _core.Core(config, [s.as_config() for s in specs], key_fns)
        self.host, self.port = self._core.start()
        self._stopped = False
        self._lock = threading.Lock()
        blocking = app.sqlite_path is not None or app.redis_url is not None  # stores that do I/O
        self.runtimes = [
            PipelineRuntime(self._core, i, s, app.debug, app.spin_us, blocking) for i, s in enumerate(specs)
        ]
        for rt in self.runtimes:
            rt.start()
        self.autoscaler = Autoscaler(self._core, self.runtimes)
        self.autoscaler.start()
        _running.add(self)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def is_ready(self) -> bool:
        return bool(self._core.is_ready())

    def wait_ready(self, timeout: float = 60.0, stop: Optional[threading.Event] = None) -> None:
        """Blocks until every pipeline has its minimum of warm slots (or `stop` is set)."""
        deadline = time.monotonic() + timeout
        while not self._core.is_ready():
            if stop is not None and stop.is_set():
                return
            errors = [e for rt in self.runtimes for e in rt.errors]
            if errors:
                raise RuntimeError("; ".join(errors))
            if time.monotonic() > deadline:
                raise TimeoutError(f"pipelines not warm after {timeout}s")
            time.sleep(0.005)

    def stats(self) -> List[Dict[str, Any]]:
        """Per-pipeline counters and latency quantiles (µs) measured at the execution boundary."""
        return self._core.stats()

    def metrics(self) -> str:
        return self._core.metrics_text()

    def predictions(self) -> Dict[str, Dict[str, Any]]:
        """Per pipeline: its scaling policy's snapshot: ``policy``, ``phase``, ``forecast_rps``,
        ``target_slots`` and the policy's own figures."""
        return {rt.spec.name: snap for rt, snap in zip(self.runtimes, self.autoscaler.snapshots())}

    def grow(self, pipeline: str, slots: int) -> int:
        """Warms more slots for `pipeline` (up to its max_slots); returns how many were started."""
        for rt in self.runtimes:
            if rt.spec.name == pipeline:
                return rt.grow(slots)
        raise KeyError(pipeline)

    def stop(self, drain: Optional[float] = None) -> None:
        """Refuses new webhooks (503), lets accepted ones finish (up to `drain` seconds), fails
        the rest, then stops every thread. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self.autoscaler.stop()
        if self in self.app._servers:
            self.app._servers.remove(self)
        self._core.shutdown(self.app.drain_timeout if drain is None else drain)
        deadline = time.monotonic() + 5.0  # one budget for all slot threads, not 5 s each
        for rt in self.runtimes:
            rt.join(deadline)
        _running.discard(self)

    @property
    def stopped(self) -> bool:
        return self._stopped

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<warmslot.Server {self.url} pipelines={list(self.app.pipelines)}>"
