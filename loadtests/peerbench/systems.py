"""The systems of the benchmark, by name, and what the report notes about each."""

from __future__ import annotations

from .context import SystemSpec
from .launchers import start_celery, start_granian, start_nginx, start_uvicorn, start_warmslot


def _specs() -> dict:
    specs = [
        SystemSpec(
            "warmslot-thread",
            "warmslot",
            "warmslot, thread slots (1 process: I/O, scheduler and slot threads)",
            start_warmslot,
            multi_worker=False,
        ),
        SystemSpec(
            "warmslot-process",
            "warmslot",
            "warmslot, process slots (one slot process per worker)",
            start_warmslot,
            env=(("WARMSLOT_ISOLATION", "process"),),
        ),
        SystemSpec(
            "warmslot-process-other",
            "warmslot",
            "warmslot, process slots under the default scheduling policy (sched_batch=False)",
            start_warmslot,
            env=(("WARMSLOT_ISOLATION", "process"), ("WARMSLOT_SCHED_BATCH", "0")),
        ),
        SystemSpec(
            "warmslot-spin0",
            "warmslot",
            "warmslot, thread slots, spin_us=0 (idle threads park at once)",
            start_warmslot,
            env=(("WARMSLOT_SPIN_US", "0"),),
            multi_worker=False,
        ),
        SystemSpec(
            "uvicorn",
            "uvicorn",
            "plain ASGI on uvicorn (httptools, uvloop, orjson)",
            start_uvicorn,
            target="asgi_bot:app",
            split_state=True,
        ),
        SystemSpec(
            "granian",
            "granian",
            "plain ASGI on granian (orjson)",
            start_granian,
            target="asgi_bot:app",
            split_state=True,
        ),
        SystemSpec(
            "granian-rt2",
            "granian",
            "plain ASGI on granian, --runtime-threads 2 (orjson)",
            start_granian,
            target="asgi_bot:app",
            env=(("--runtime-threads", "2"),),
            split_state=True,
        ),
        SystemSpec(
            "fastapi",
            "uvicorn",
            "FastAPI on uvicorn (pydantic in, pydantic-core JSON out)",
            start_uvicorn,
            target="fastapi_bot:app",
            split_state=True,
        ),
        SystemSpec(
            "celery",
            "celery",
            "FastAPI front (128 threads) + Celery solo worker + Redis",
            start_celery,
            target="celery_bot:app",
            multi_worker=False,
        ),
        SystemSpec("nginx", "nginx", "nginx, static body, no bot logic (the HTTP ceiling)", start_nginx),
    ]
    return {s.name: s for s in specs}


SYSTEMS = _specs()
ALL_SYSTEMS = list(SYSTEMS)


def system_notes(spec: SystemSpec, workers: int) -> list:
    notes = []
    if spec.split_state and workers > 1:
        notes.append(
            f"conversation state is split across its {workers} worker processes (each keeps its own "
            "botlogic.STATES): a conversation's turn counts only the events that reached that worker"
        )
    if spec.name == "celery":
        notes.append("one Celery worker process (--pool=solo) holds all conversation state; JSON via kombu (stdlib)")
    if spec.name == "nginx":
        notes.append("answers a static body: the HTTP stack alone, for scale")
    if spec.kind == "warmslot":
        notes.append("conversation state kept by warmslot (one store for the whole server)")
    return notes
