"""Type stubs for the private extension module `warmslot._core` (Rust, PyO3)."""

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

__version__: str

Runner = Callable[
    [str, Optional[str], Any, Any, Callable[[], Dict[str, str]], float, Optional[float]], Tuple[bool, Any, Any]
]

class Core:
    """The engine: HTTP ingress, per-pipeline intake (ring + per-key lanes), slot pools."""

    def __init__(
        self,
        app: Dict[str, Any],
        pipelines: List[Dict[str, Any]],
        key_fns: Sequence[Optional[Callable[[bytes], Optional[str]]]],
        dedupe_fns: Optional[Sequence[Optional[Callable[[bytes], Optional[str]]]]] = None,
    ) -> None: ...
    def start(self) -> Tuple[str, int]:
        """Binds and starts serving; returns the (host, port) bound. Raises OSError (port in use)."""
    def run_thread_slot(
        self, pipeline: int, slot: int, runner: Any, reason: str, warmup_s: float, is_async: bool = False
    ) -> str:
        """Runs a warm thread slot (GIL released) until it retires or the server stops. `runner`: a
        sync pipeline's `Runner`; with `is_async`, the slot's `warmslot.slots.AsyncSlot`."""
    def run_process_slot(self, pipeline: int, slot: int, reason: str, report: Callable[[str, str], None]) -> None:
        """Runs a process slot (spawns and replaces its worker) until it retires or the server stops."""
    def mark_cold(self, pipeline: int, slot: int) -> None: ...
    def keep_at_most(self, pipeline: int, keep: Optional[int] = None) -> None: ...
    def pool(self, pipeline: int) -> Dict[str, Any]: ...
    def is_ready(self) -> bool: ...
    def shutdown(self, drain: float) -> None: ...
    def metrics_text(self) -> str: ...
    def execution(self, id: str) -> Optional[str]:
        """The execution record as JSON text, or None."""
    def stats(self) -> List[Dict[str, Any]]: ...
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
