"""What a run is given: the run's context, one system's description, and the plan of each run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .processes import ProcessGroup


@dataclass
class Ctx:
    logdir: str
    tools: dict
    pg: ProcessGroup
    server_prefix: list = field(default_factory=list)  # ["taskset", "-c", "1"] with --pin
    client_prefix: list = field(default_factory=list)  # ["taskset", "-c", "0"] with --pin


@dataclass(frozen=True)
class SystemSpec:
    """One system of the benchmark. ``start(ctx, spec, port, workers)`` starts its processes."""

    name: str
    kind: str  # warmslot | uvicorn | granian | celery | nginx
    label: str
    start: Callable
    target: str = ""  # ASGI app for uvicorn/granian
    env: tuple = ()  # extra environment, (name, value) pairs
    multi_worker: bool = True  # runs `workers` processes (else one, whatever --workers says)
    split_state: bool = False  # in-process state, so split across worker processes


@dataclass
class Plan:
    """What each run does; from the command line."""

    duration: float
    warmup: float
    fractions: list
    slo_us: float
    open_connections: int
    sample_every: int
    start_timeout: float
