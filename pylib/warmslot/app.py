"""`App`: declare pipelines, then serve them."""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union, overload

from . import _core, sched
from .predictor import Autoscaler
from .slots import PipelineRuntime
from .spec import (
    KeySpec,
    PipelineSpec,
    Signature,
    check_count,
    check_events,
    check_name,
    check_options,
    check_seconds,
)

if TYPE_CHECKING:
    from .testing import TestClient

#: A pipeline: a function or a class. The decorator returns it unchanged, with its type.
P = TypeVar("P", bound=Callable[..., Any])

log = logging.getLogger("warmslot")

_running: "weakref.WeakSet[Server]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    # Stop Rust threads and join slot threads before the interpreter finalizes.
    for server in list(_running):
        server.stop(drain=1.0)


class StartupError(RuntimeError):
    """Pipelines failed to warm up, so the server did not start serving.

    ``failures`` maps each failing pipeline to one line: which slot failed, and the exception."""

    def __init__(self, failures: Dict[str, str]) -> None:
        self.failures = failures
        super().__init__("; ".join(failures.values()))


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
    """A set of pipelines served behind webhooks: declare them with `pipeline`, then serve them
    with `serve` (blocks until Ctrl-C or SIGTERM), `start` (background threads; returns a
    `Server`) or ``warmslot run file.py:app``. ``App(...)``'s options, each with its default, are
    listed in `App.__init__`.

    The routes: ``POST /hooks/<pipeline>`` (a webhook), ``GET /healthz`` (200 once every pipeline
    has its minimum of warm slots, else 503), and the admin routes ``GET /dashboard``, ``/stats``,
    ``/metrics``, ``/executions`` and ``/executions/<id>``. ``GET /executions`` lists finished
    executions, newest first: without ``?status=`` only the **failed** ones;
    ``?status=succeeded``, ``failed`` or ``timed_out`` picks another outcome (queued or running
    executions are not listed; ``/executions/<id>`` shows one in any state), ``?pipeline=<name>``
    one pipeline, ``?limit=<n>`` at most n records (default 100).
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
        admin_token: Optional[str] = None,
        max_header_bytes: int = 64 << 10,
        header_timeout: float = 30.0,
        body_timeout: float = 30.0,
        max_record_bytes: int = 64 << 20,
        max_keys: int = 100_000,
        max_state_bytes: int = 1 << 20,
        isolation: str = "thread",
        records_ttl: float = 7 * 86400.0,
        sqlite_synchronous: str = "normal",
        sched_batch: Optional[bool] = None,
    ) -> None:
        """Every option is checked here: a wrong type or value is a TypeError or ValueError that
        names it. All but ``state`` are keyword-only.

        ``state="memory"``
            Where per-key state (``ctx.state``) lives: ``"memory"`` (lost at exit),
            ``"sqlite:///state.db"`` (durable, one SQLite file; relative to the working
            directory, or absolute with four slashes: ``"sqlite:////var/lib/bots/state.db"``), or
            ``"redis://host:6379/0"`` (cluster mode: several warmslot processes share state; a
            per-key lease keeps one key's events from running in two processes at once; async
            events are journaled in Redis, so a process that dies loses none; a crash of Redis
            itself loses what Redis's persistence settings lose).
        ``debug=False``
            ``True`` puts the pipeline's traceback into the error body of a failed execution
            (else the body has the exception's type and message).
        ``max_body_bytes=1 << 20`` (1 MiB)
            Largest webhook body (``413 payload_too_large`` above); a pipeline's own
            ``max_body_bytes=`` wins.
        ``max_records=100_000``
            Finished executions kept in memory for ``GET /executions`` and ``/executions/<id>``
            (and delivery ids remembered for ``dedupe``); the oldest go first.
        ``io_threads=1``
            Tokio threads for HTTP (1 runs a current-thread runtime).
        ``max_connections=10_000``
            Open client connections at most; past it, new ones wait to be accepted.
        ``drain_timeout=10.0``
            Seconds `Server.stop` (and so `serve` on Ctrl-C or SIGTERM) lets accepted executions
            finish before it fails the rest; 0 fails them at once.
        ``spin_us=50``
            Microseconds idle threads spin for the next event before parking (lower latency at
            low load against some CPU; 0 parks at once); a process slot also polls this long for
            its worker's next result while results come faster than that.
        ``admin_token=None``
            Makes ``/metrics``, ``/stats``, ``/dashboard`` and ``/executions*`` require
            ``Authorization: Bearer <token>`` (``/dashboard`` also takes ``?token=<token>``),
            else ``401 unauthorized``; webhooks and ``/healthz`` stay open. ``None`` reads the
            ``WARMSLOT_ADMIN_TOKEN`` environment variable; without it the admin routes are open.
        ``max_header_bytes=64 << 10`` (64 KiB)
            Largest request head (``431 headers_too_large`` above); at least 1024.
        ``header_timeout=30.0``
            Seconds a client has to send a request's headers, and how long a keep-alive
            connection may idle.
        ``body_timeout=30.0``
            Seconds a client has to send a body (``408 request_timeout`` after).
        ``max_record_bytes=64 << 20`` (64 MiB)
            Bytes the in-memory execution records may hold, replies included (oldest evicted
            first), besides ``max_records``.
        ``max_keys=100_000``
            Keys the in-memory state store keeps per pipeline (the least recently used key is
            evicted past it).
        ``max_state_bytes=1 << 20`` (1 MiB)
            Largest state of one key: an execution whose new state is larger fails with ``500
            state_too_large`` and commits nothing.
        ``isolation="thread"``
            Default isolation of the pipelines: ``"thread"`` (slots are threads in this
            interpreter) or ``"process"`` (warm worker processes); a pipeline's own
            ``isolation=`` wins.
        ``records_ttl=7 * 86400.0`` (7 days)
            Seconds a durable store (SQLite, Redis) keeps finished execution records (and so
            answers repeated deliveries), besides the ``max_records`` bound.
        ``sqlite_synchronous="normal"``
            ``"normal"`` (a commit survives a crash of the process; a power cut may lose the last
            ones) or ``"full"`` (fsync every commit).
        ``sched_batch=None``
            On Linux, run the server's threads and worker processes under the ``SCHED_BATCH``
            scheduling policy (same CPU share; a thread that wakes up waits for a busy CPU's
            current slice instead of preempting it). ``None`` reads the ``WARMSLOT_SCHED_BATCH``
            environment variable (``1`` or ``0``), and without it does so when a pipeline uses
            process slots, where it saves the CPU that waking the server's threads cost the
            workers when every core is busy; ``True`` always, ``False`` never. Nothing changes
            when the thread that starts the server runs another policy than the default one (see
            ``warmslot.sched`` and the README).
        """
        if not isinstance(state, str):
            raise TypeError(f"state must be a str such as 'memory' or 'sqlite:///state.db', got {type(state).__name__}")
        if isolation not in ("thread", "process"):
            raise ValueError(f"isolation must be 'thread' or 'process', got {isolation!r}")
        self.isolation = isolation
        #: How worker processes import this app ("path/to/file.py:attr" or "module:attr");
        #: `warmslot run` sets it, `start()` derives it from where the pipelines are defined.
        self.target: Optional[str] = None
        self.state = state
        self.sqlite_path, self.redis_url = _parse_state(state)
        self.debug = bool(debug)
        self.max_body_bytes = check_count("max_body_bytes", max_body_bytes)
        self.max_records = check_count("max_records", max_records)
        self.io_threads = check_count("io_threads", io_threads)
        self.max_connections = check_count("max_connections", max_connections)
        self.drain_timeout = check_seconds("drain_timeout", drain_timeout) if drain_timeout != 0 else 0.0
        self.spin_us = check_count("spin_us", spin_us, minimum=0)
        if sched_batch is None:
            sched_batch = sched.from_env()
        elif not isinstance(sched_batch, bool):
            raise TypeError(f"sched_batch must be True, False or None, got {sched_batch!r}")
        self.sched_batch = sched_batch
        if admin_token is None:
            admin_token = os.environ.get("WARMSLOT_ADMIN_TOKEN") or None
        elif not isinstance(admin_token, str) or not admin_token.strip():
            raise ValueError("admin_token must be a non-empty str (or None to read WARMSLOT_ADMIN_TOKEN)")
        if admin_token is not None and (admin_token != admin_token.strip() or not admin_token.isprintable()):
            raise ValueError("admin_token must be printable, without leading or trailing spaces")
        self.admin_token: Optional[str] = admin_token
        self.max_header_bytes = check_count("max_header_bytes", max_header_bytes, minimum=1024)
        self.header_timeout = check_seconds("header_timeout", header_timeout)
        self.body_timeout = check_seconds("body_timeout", body_timeout)
        self.max_record_bytes = check_count("max_record_bytes", max_record_bytes)
        self.max_keys = check_count("max_keys", max_keys)
        self.max_state_bytes = check_count("max_state_bytes", max_state_bytes)
        self.records_ttl = check_seconds("records_ttl", records_ttl)
        if sqlite_synchronous not in ("normal", "full"):
            raise ValueError(f"sqlite_synchronous must be 'normal' or 'full', got {sqlite_synchronous!r}")
        self.sqlite_synchronous = sqlite_synchronous
        self.pipelines: Dict[str, PipelineSpec] = {}
        self._servers: List[Server] = []
        self._stop_requested: Optional[threading.Event] = None
        self._on_serving: Optional[Callable[[], None]] = None  # the CLI's hook: startup is over

    @overload
    def pipeline(self, name: P) -> P: ...

    @overload
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
        missing_key: str = "unkeyed",
        isolation: Optional[str] = None,
        concurrency: int = 1,
        max_executions: Optional[int] = None,
        max_memory_mb: Optional[int] = None,
        scaling: str = "predictive",
        scaling_options: Optional[Dict[str, Any]] = None,
        dedupe: Union[bool, str, Callable[[Any], Any]] = True,
        dedupe_window: float = 86400.0,
        retries: int = 0,
        retry_backoff: float = 1.0,
        events: Optional[Sequence[str]] = None,
        events_from: Optional[str] = None,
    ) -> Callable[[P], P]: ...

    def pipeline(
        self,
        name: Union[str, None, P] = None,
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
        missing_key: str = "unkeyed",
        isolation: Optional[str] = None,
        concurrency: int = 1,
        max_executions: Optional[int] = None,
        max_memory_mb: Optional[int] = None,
        scaling: str = "predictive",
        scaling_options: Optional[Dict[str, Any]] = None,
        dedupe: Union[bool, str, Callable[[Any], Any]] = True,
        dedupe_window: float = 86400.0,
        retries: int = 0,
        retry_backoff: float = 1.0,
        events: Optional[Sequence[str]] = None,
        events_from: Optional[str] = None,
    ) -> Union[P, Callable[[P], P]]:
        """Registers a function or class as the pipeline ``name`` (default: its ``__name__``).
        Usable bare (``@app.pipeline``) or with options (``@app.pipeline("echo", slots=4)``);
        returns the function or class unchanged.

        ``slots`` pre-warmed workers (or ``min_slots`` warm, up to ``max_slots``); ``key``: event
        field (or callable(event) -> str) whose events run one at a time, in order, sharing
        ``ctx.state``; ``missing_key``: what a keyed pipeline does with an event without the key
        (``"unkeyed"``: runs it without a key, the default; ``"reject"``: ``400 bad_request``);
        ``timeout``: seconds from receipt to answer (504 after); ``setup``: called
        once per slot, its result is ``ctx.resources``; ``queue_size``: events that may wait
        before 429; ``signature``: a webhook signature check (see ``warmslot.github_signature``);
        ``reply="async"`` answers every webhook 202 at once (providers that want a fast 2xx), as
        ``Prefer: respond-async`` does per request. Every option is checked here, at declaration;
        errors name the argument. ``scaling``: how the pool is sized between
        ``min_slots`` and ``max_slots``: ``"predictive"`` (default; warms slots one warm-up ahead
        of the traffic and learns recurring bursts), ``"reactive"`` (the Knative Pod Autoscaler)
        or ``"static"`` (``min_slots``, never more); ``scaling_options``: that policy's
        parameters (``warmslot.policies``), e.g. ``{"stable_window": 30}`` for ``"reactive"``.

        ``isolation``: ``"thread"`` (slots are threads in this interpreter; the default unless
        ``App(isolation=...)`` says otherwise) or ``"process"`` (each slot is a warm worker
        process: uses every core, and a crash or hang costs one execution, not the server).
        ``concurrency``: events one slot of an async pipeline runs at once. ``max_executions`` /
        ``max_memory_mb``: recycle a worker process after about that many executions (+ up to
        10% jitter) or once its resident memory exceeds that, between batches.

        ``dedupe``: where a delivery id comes from: ``True`` (default: the ``Idempotency-Key``,
        ``webhook-id`` or ``X-GitHub-Delivery`` header), a body field name (Stripe's ``"id"``,
        Slack's ``"event_id"``), a callable(event) -> str, or ``False``. A delivery whose id was
        seen within ``dedupe_window`` seconds is not run again: it gets the first execution's
        answer (same status, body and ``x-warmslot-execution-id``; a ``202`` with the same id when
        it asks for an async reply). ``retries``: further attempts of a failed async execution
        (exception or slot crash), after ``retry_backoff`` seconds, doubled each time; a retry
        joins the back of its key's lane. After the last one the execution is ``failed`` and
        listed by ``GET /executions?status=failed&pipeline=<name>``.

        ``events``: the event types that run, e.g. ``["push", "pull_request"]`` (default: every
        event). Decided in Rust after the signature check, before admission: any other event is
        answered ``200 {"ignored": true}`` (header ``x-warmslot-ignored: <type>``) without running,
        journaling or deduplicating it, and counted as ``warmslot_requests_total{status="ignored"}``;
        so is an event whose type is not found (as a gateway would). The type is found where the
        ``signature``'s provider puts it (GitHub's ``X-GitHub-Event`` header; the body's ``type``
        for Stripe and Standard Webhooks; Slack's ``event.type``, else its top-level ``type``, as in
        ``url_verification``), or as ``events_from`` says: ``"header:X-Event-Type"`` or
        ``"field:type"`` / ``"field:event.type"`` (a dotted path into the JSON body).
        """
        if name is not None and not isinstance(name, str):
            if not callable(name):
                raise TypeError(f"name must be a str (or use @app.pipeline bare), got {type(name).__name__}")
            # Bare `@app.pipeline`: the decorated function or class arrived as `name`.
            return self.pipeline()(name)
        if name is not None:
            check_name(name)
        check_options(
            slots=slots,
            min_slots=min_slots,
            max_slots=max_slots,
            key=key,
            timeout=timeout,
            setup=setup,
            max_body_bytes=max_body_bytes,
            queue_size=queue_size,
            max_batch=max_batch,
            signature=signature,
            reply=reply,
            missing_key=missing_key,
        )
        if not (isinstance(dedupe, (bool, str)) or callable(dedupe)) or dedupe == "":
            raise TypeError(
                f"dedupe must be True, False, a body field name or a callable(event) -> str, got {dedupe!r}"
            )
        dedupe_window = check_seconds("dedupe_window", dedupe_window)
        retries = check_count("retries", retries, minimum=0)
        retry_backoff = check_seconds("retry_backoff", retry_backoff)
        event_types = check_events(events, events_from, signature)

        def register(target: P) -> P:
            if not callable(target):
                raise TypeError(f"@app.pipeline decorates a function or a class, got {type(target).__name__}")
            pname = name if name is not None else getattr(target, "__name__", None)
            if not pname:
                raise ValueError("pipeline needs a name: @app.pipeline('name')")
            check_name(pname)
            if pname in self.pipelines:
                raise ValueError(f"pipeline {pname!r} is declared twice")
            default = 16 if _is_async_target(target) else 4
            lo = min_slots if min_slots is not None else (slots if slots is not None else 1)
            hi = max_slots if max_slots is not None else (slots if slots is not None else max(lo, default))
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
                missing_key=missing_key,
                isolation=isolation,
                concurrency=concurrency,
                max_executions=max_executions,
                max_memory_mb=max_memory_mb,
                scaling=scaling,
                scaling_options=scaling_options,
                dedupe=dedupe,
                dedupe_window=dedupe_window,
                retries=retries,
                retry_backoff=retry_backoff,
                events=event_types,
                events_from=events_from,
            )
            return target

        return register

    def start(self, host: str = "127.0.0.1", port: int = 8000, *, wait: bool = True, timeout: float = 60.0) -> "Server":
        """Starts serving in background threads and returns the running `Server` (``server.url``,
        ``server.port``; stop it with ``server.stop()``, ``app.stop()`` or ``with app.start() as
        server:``). Does not install signal handlers or print anything.

        ``host="127.0.0.1"``
            Address to listen on (``"0.0.0.0"`` or ``"::"`` for every interface).
        ``port=8000``
            Port to listen on; 0 picks a free one (``server.port`` tells which).
        ``wait=True``
            Block until every pipeline has its minimum of warm slots; ``False`` returns at once
            (``server.wait_ready()`` waits later; webhooks that come meanwhile queue for the
            first warm slot).
        ``timeout=60.0``
            Seconds to wait for the warm-up when ``wait``: ``TimeoutError`` after.

        Raises ``ValueError`` when the app has no pipelines, ``OSError`` when the address cannot
        be listened on (a port in use), and, when ``wait``, `StartupError` (one line per pipeline
        whose slots failed to warm up) or ``TimeoutError``, having stopped the server.
        """
        server = Server(self, host, port)
        self._servers.append(server)
        if wait:
            try:
                server.wait_ready(timeout)
            except BaseException:
                server.stop(drain=0)
                raise
        return server

    def test_client(self, *, timeout: float = 60.0) -> "TestClient":
        """A `warmslot.testing.TestClient` for this app: ``with app.test_client() as client:``
        starts it on an ephemeral loopback port, waits until ``/healthz`` answers 200, and stops it
        (draining) at the end of the block; ``client.post("github", json=..., event="push")``
        signs each webhook with the pipeline's own secret. ``timeout``: seconds to wait for the
        warm-up."""
        from .testing import TestClient

        return TestClient(self, timeout=timeout)

    def serve(self, host: str = "127.0.0.1", port: int = 8000) -> None:
        """Serves until SIGINT (Ctrl-C) or SIGTERM, or ``app.stop()`` from another thread, then
        drains and returns; what ``warmslot run`` does.

        ``host="127.0.0.1"``
            Address to listen on (``"0.0.0.0"`` or ``"::"`` for every interface).
        ``port=8000``
            Port to listen on; 0 picks a free one (``app.server.port`` tells which once it is up).

        It waits up to 60 s for every pipeline's minimum of warm slots, then prints ``warmslot:
        serving /hooks/<name>, ... on http://HOST:PORT, dashboard at .../dashboard (Ctrl-C to
        stop)``. On SIGINT or SIGTERM (handled when called from the main thread; the previous
        handlers are put back on return) it prints ``warmslot: stopping (draining in-flight
        executions)...``: new webhooks get 503 while accepted executions finish, for up to the
        app's ``drain_timeout``. Raises what `start` raises: `StartupError` when slots fail to warm
        up (nothing is drained then), ``TimeoutError``, ``OSError``, ``ValueError``.
        """
        stop = self._stop_requested = threading.Event()
        server = self.start(host, port, wait=False)
        previous = {}
        if threading.current_thread() is threading.main_thread():
            # Both signals stop the server, also when the shell started us with SIGINT ignored
            # (background jobs of non-interactive shells).
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: stop.set())
        serving = False
        try:
            server.wait_ready(60.0, stop)
            serving = True
            if self._on_serving is not None:
                self._on_serving()
            names = ", ".join(f"/hooks/{n}" for n in self.pipelines)
            print(
                f"warmslot: serving {names} on {server.url}, dashboard at {server.url}/dashboard (Ctrl-C to stop)",
                flush=True,
            )
            if self.admin_token:
                print(
                    "warmslot: /metrics, /stats, /dashboard and /executions/* need Authorization: Bearer <admin token>",
                    flush=True,
                )
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            if serving:
                drain(server)
            else:
                server.stop(drain=0)
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


def drain(server: "Server") -> None:
    """How `App.serve` (and ``warmslot demo``) stop on Ctrl-C or SIGTERM: says so, then
    ``server.stop()``: new webhooks get 503, accepted executions finish (up to the app's
    ``drain_timeout``), the rest fail."""
    print("warmslot: stopping (draining in-flight executions)...", flush=True)
    server.stop()


def _is_async_target(target: Any) -> bool:
    from .spec import _is_async

    return _is_async(target)


def _worker_target(app: "App", names: List[str]) -> str:
    """How a worker process imports `app`: `app.target` when set (``warmslot run`` sets it),
    else the file (or module) that defines the pipelines, and the module-level name of the app."""
    if app.target:
        return app.target
    spec = app.pipelines[names[0]]
    module = sys.modules.get(getattr(spec.target, "__module__", "") or "")
    attr = next((k for k, v in vars(module).items() if v is app), None) if module is not None else None
    where = getattr(module, "__file__", None) if module is not None else None
    if module is None or attr is None or (where is None and module.__name__ == "__main__"):
        raise RuntimeError(
            f"pipeline {names[0]!r} uses isolation='process', but its worker processes cannot import "
            "this App: define the App and its pipelines at module level of an importable file or module, "
            "or set app.target = 'path/to/file.py:app'"
        )
    return f"{os.path.abspath(where)}:{attr}" if where else f"{module.__name__}:{attr}"


class Server:
    """A running app. Use ``app.start(...)``; stop with ``stop()`` or as a context manager."""

    def __init__(self, app: App, host: str, port: int) -> None:
        if not app.pipelines:
            raise ValueError("the app has no pipelines; declare one with @app.pipeline(...)")
        self.app = app
        specs = list(app.pipelines.values())
        if os.environ.get("WARMSLOT_WORKER"):
            raise RuntimeError(
                "this module starts a warmslot server when imported, and a worker process imported it: "
                "guard app.start()/app.serve() with `if __name__ == '__main__':`"
            )
        settings = _core.AppSettings(
            host=host,
            port=port,
            max_records=app.max_records,
            io_threads=app.io_threads,
            max_connections=app.max_connections,
            spin_us=app.spin_us,
            admin_token=app.admin_token,
            max_header_bytes=app.max_header_bytes,
            header_timeout=app.header_timeout,
            body_timeout=app.body_timeout,
            max_record_bytes=app.max_record_bytes,
            max_keys=app.max_keys,
            max_state_bytes=app.max_state_bytes,
            records_ttl=app.records_ttl,
            store="redis" if app.redis_url is not None else ("sqlite" if app.sqlite_path is not None else "memory"),
            sqlite_path=app.sqlite_path,
            sqlite_synchronous=app.sqlite_synchronous,
            redis_url=app.redis_url,
        )
        isolation = [s.isolation or app.isolation for s in specs]
        process = [s.name for s, iso in zip(specs, isolation) if iso == "process"]
        target = _worker_target(app, process) if process else ""
        pipelines = [
            s.settings(iso, [sys.executable, "-m", "warmslot.worker", target, s.name] if iso == "process" else None)
            for s, iso in zip(specs, isolation)
        ]
        # Every thread started here (and every worker process its slot threads spawn) inherits
        # the policy of this block (see `warmslot.sched`).
        batch = app.sched_batch if app.sched_batch is not None else bool(process)
        # `sched_switched`: True when this server switched its threads and workers to SCHED_BATCH
        # (False when it was not asked to, or the starting thread ran another policy, which they
        # then inherit).
        with sched.batch_policy(batch) as self.sched_switched:
            self._core = _core.Core(settings, pipelines)
            self.host, self.port = self._core.start()
            self._stopped = False
            self._lock = threading.Lock()
            blocking = app.sqlite_path is not None or app.redis_url is not None  # stores that do I/O
            self.runtimes = [
                PipelineRuntime(self._core, i, s, app.debug, app.spin_us, blocking, iso)
                for i, (s, iso) in enumerate(zip(specs, isolation))
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
        """Blocks until every pipeline has its minimum of warm slots (or `stop` is set). Raises
        `StartupError` (one line per failing pipeline) when slots fail to warm up."""
        deadline = time.monotonic() + timeout
        settle: Optional[float] = None
        while not self._core.is_ready():
            if stop is not None and stop.is_set():
                return
            failures = {rt.spec.name: rt.errors[0] for rt in self.runtimes if rt.errors}
            if failures:
                # Give the other pipelines' first warm-up a moment to report too, so that every
                # failing pipeline is named at once.
                settle = settle if settle is not None else time.monotonic() + 1.0
                pending = [rt for rt in self.runtimes if not rt.errors and not self._warm(rt)]
                if not pending or time.monotonic() > settle:
                    raise StartupError(failures)
            if time.monotonic() > deadline:
                raise TimeoutError(f"pipelines not warm after {timeout}s")
            time.sleep(0.005)

    def _warm(self, rt: PipelineRuntime) -> bool:
        idx = self.runtimes.index(rt)
        loads = self._core.load()
        return loads[idx][2] >= rt.spec.min_slots

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
                # The new slot threads (and their workers) inherit this thread's policy.
                with sched.batch_policy(self.sched_switched):
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
