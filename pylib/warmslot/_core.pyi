"""Type stubs for the private extension module `warmslot._core` (Rust, PyO3).

`Any` is left only where a value is a JSON document (events, states), and in the dicts of
`Core.pool()` and `Core.stats()` (their keys are listed there)."""

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Dict, List, Literal, Optional, Sequence, Tuple, Union

if TYPE_CHECKING:
    from .slots import AsyncSlot

__version__: str

#: `runner(execution_id, key, event, state, headers, received_at, remaining)` returns
#: `(True, reply, state_or_None)` (JSON bytes) or `(False, error_code, message)`.
Runner = Callable[
    [str, Optional[str], Any, Optional[bytes], Callable[[], Dict[str, str]], float, Optional[float]],
    Tuple[bool, Union[bytes, str], Optional[Union[bytes, str]]],
]

#: A key or delivery-id function: called on the raw body, returns the key (or None: no key).
BodyFn = Callable[[bytes], Optional[str]]

class SignatureSettings:
    """A webhook signature check. `scheme`: "hex" (`header: <prefix><hex>`), "slack", "stripe" or
    "standard"; `tolerance`: seconds a signed timestamp may be off (not "hex")."""

    def __init__(self, *, secret: bytes, scheme: str, header: str, prefix: str, tolerance: float) -> None: ...

class PipelineSettings:
    """One pipeline's settings; every argument is required (optional values are passed as None).

    `key`: "none", "field" (`key_field`) or "callable" (`key_fn`); `missing_key`: "unkeyed" or
    "reject"; `isolation`: "thread" or "process" (`worker_cmd`); `dedupe`: "headers", "field"
    (`dedupe_field`), "callable" (`dedupe_fn`) or "off". Seconds are floats. `events`: the event
    types that run (None: all); `events_from`: "header:<name>" or "field:<dotted.path>", or None
    to read the type where the signature's provider puts it (GitHub, Slack, Stripe, Standard)."""

    def __init__(
        self,
        *,
        name: str,
        key: str,
        key_field: Optional[str],
        key_fn: Optional[BodyFn],
        missing_key: str,
        min_slots: int,
        max_slots: int,
        timeout: Optional[float],
        max_body_bytes: int,
        queue_size: int,
        max_batch: int,
        isolation: str,
        worker_cmd: Optional[Sequence[str]],
        concurrency: int,
        max_executions: Optional[int],
        max_memory_mb: Optional[int],
        signature: Optional[SignatureSettings],
        reply_async: bool,
        dedupe: str,
        dedupe_field: Optional[str],
        dedupe_fn: Optional[BodyFn],
        dedupe_window: float,
        retries: int,
        retry_backoff: float,
        events: Optional[Sequence[str]],
        events_from: Optional[str],
    ) -> None: ...
    @property
    def name(self) -> str: ...

class AppSettings:
    """The app's settings; every argument is required (optional values are passed as None).

    `store`: "memory", "sqlite" (`sqlite_path`) or "redis" (`redis_url`); `sqlite_synchronous`:
    "normal" or "full"; `spin_us` in microseconds, timeouts and `records_ttl` in seconds."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        max_records: int,
        io_threads: int,
        max_connections: int,
        spin_us: int,
        admin_token: Optional[str],
        max_header_bytes: int,
        header_timeout: float,
        body_timeout: float,
        max_record_bytes: int,
        max_keys: int,
        max_state_bytes: int,
        records_ttl: float,
        store: str,
        sqlite_path: Optional[str],
        sqlite_synchronous: str,
        redis_url: Optional[str],
    ) -> None: ...

class WarmupReason:
    """Why a slot warmed up; `value` is the metric label ("ahead", "demand", "replace")."""

    AHEAD: ClassVar["WarmupReason"]
    DEMAND: ClassVar["WarmupReason"]
    REPLACE: ClassVar["WarmupReason"]
    @property
    def value(self) -> str: ...
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...
    def __int__(self) -> int: ...

class SlotReport:
    """What `Core.run_process_slot` reports about its slot; `value`: "warm", "warmup_failed",
    "crashed" or "recycled"."""

    WARM: ClassVar["SlotReport"]
    WARMUP_FAILED: ClassVar["SlotReport"]
    CRASHED: ClassVar["SlotReport"]
    RECYCLED: ClassVar["SlotReport"]
    @property
    def value(self) -> str: ...
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...
    def __int__(self) -> int: ...

class Core:
    """The engine: HTTP ingress, per-pipeline intake (ring + per-key lanes), slot pools."""

    def __init__(self, app: AppSettings, pipelines: Sequence[PipelineSettings]) -> None:
        """Opens the state store and builds the pipelines (a pipeline's index is its place in
        `pipelines`). Raises ValueError (a bad configuration) or OSError (a store that cannot be
        opened)."""
    def start(self) -> Tuple[str, int]:
        """Binds and starts serving; returns the (host, port) bound. Raises OSError (port in use)."""
    def run_thread_slot(
        self,
        pipeline: int,
        slot: int,
        runner: Union[Runner, "AsyncSlot"],
        reason: WarmupReason,
        warmup_s: float,
        is_async: bool = False,
    ) -> Literal["retired", "stopped"]:
        """Runs a warm thread slot (GIL released) until it retires or the server stops. `runner`: a
        sync pipeline's `Runner`; with `is_async`, the slot's `warmslot.slots.AsyncSlot`."""
    def run_process_slot(
        self, pipeline: int, slot: int, reason: WarmupReason, report: Callable[[SlotReport, str], None]
    ) -> None:
        """Runs a process slot (spawns and replaces its worker) until it retires or the server stops."""
    def mark_cold(self, pipeline: int, slot: int) -> None: ...
    def keep_at_most(self, pipeline: int, keep: Optional[int] = None) -> None: ...
    def pool(self, pipeline: int) -> Dict[str, Any]:
        """warm, busy, waiting, retire_pending, cold_starts, cpu_us, worker_rss_bytes (int);
        idle_slot_seconds, warmup_s (float); last_error (str or None); warmups, crashes, recycles
        (dicts of counts by reason)."""
    def is_ready(self) -> bool: ...
    def shutdown(self, drain: float) -> None: ...
    def metrics_text(self) -> str: ...
    def state(self, pipeline: int, key: str) -> Optional[bytes]:
        """The committed state of `key` (JSON bytes), read without a lease; None when it has none."""
    def execution(self, id: str) -> Optional[str]:
        """The execution record as JSON text, or None."""
    def stats(self) -> List[Dict[str, Any]]:
        """Per pipeline: name, ring_depth, ring_capacity, inflight, slots_warm, slots_busy,
        requests (counts by outcome), latency (per phase: count, mean_us, p50_us, p95_us, p99_us,
        max_us)."""
    def load(self) -> List[Tuple[int, int, int, int, int, int, int, int]]:
        """Per pipeline: (waiting, inflight, slots_warm, slots_busy, arrivals, executions_ran, run_us_sum,
        cpu_us_sum); cpu_us_sum is 0 where CPU time is not measured."""
    def set_prediction(
        self, pipeline: int, target_slots: int, forecast_rps: float, phase: Optional[str] = None
    ) -> None: ...
    def set_predictor_phases(self, pipeline: int, phases: List[str]) -> None: ...

def hmac_sha256_hex(secret: bytes, parts: List[bytes]) -> str: ...
def loads(data: bytes) -> Any:
    """Parses JSON with the server's own parser (the ingress's grammar and limits)."""

def decode_batch(
    payload: bytes,
) -> List[Tuple[int, str, Optional[str], Any, Optional[bytes], Callable[[], Dict[str, str]], float, Optional[float]]]:
    """A batch frame's events: (index, execution_id, key, event, state JSON bytes or None,
    headers (call it for the dict), received_at, remaining)."""

def encode_result(index: int, kind: int, a: bytes = b"", b: Optional[bytes] = None) -> bytes: ...
def refresh_logging() -> None:
    """Re-reads the levels of the Python loggers that Rust records go to (cached per logger)."""
