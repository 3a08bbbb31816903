"""FastAPI front of the Celery peer: each webhook enqueues a Celery task on Redis and waits for
its result (the classic "web app + task queue" design).

    CELERY_REDIS_URL=redis://127.0.0.1:6379/0 \
        uvicorn celery_bot:app --http httptools --loop uvloop --no-access-log

Celery's client (``delay`` + ``AsyncResult.get``) blocks, so the endpoint is a plain ``def``:
FastAPI runs it in anyio's thread pool, which the lifespan below widens from 40 to
``CELERY_FRONT_THREADS`` (default 128) threads, so that 64 connections never wait for a thread.
Each thread gets its own (thread-local) Celery result-backend connection. JSON: the task
messages use Celery's JSON serializer (stdlib ``json`` via kombu); the reply is serialized by
pydantic-core (``response_model``).
"""

import os
from contextlib import asynccontextmanager

import anyio.to_thread
from celery_tasks import support_task
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict

RESULT_TIMEOUT_S = 10.0
FRONT_THREADS = int(os.environ.get("CELERY_FRONT_THREADS", "128"))


@asynccontextmanager
async def lifespan(app: FastAPI):
    """Widens the thread pool that runs the blocking endpoint."""
    anyio.to_thread.current_default_thread_limiter().total_tokens = FRONT_THREADS
    yield


app = FastAPI(lifespan=lifespan)


class Event(BaseModel):
    """The support event; fields other than these three are kept and passed to the task."""

    model_config = ConfigDict(extra="allow")

    conversation: str
    user: str
    text: str


class Reply(BaseModel):
    """The bot's reply."""

    reply: str
    turn: int


@app.post("/hooks/support", response_model=Reply)
def hook_support(event: Event) -> dict:
    """Enqueues the event as a Celery task and waits for its result."""
    result = support_task.delay(event.model_dump())
    try:
        return result.get(timeout=RESULT_TIMEOUT_S)
    except Exception as exc:  # timeout or task failure
        raise HTTPException(status_code=504, detail=str(exc)) from exc


@app.get("/healthz")
def healthz() -> dict:
    """Always ready once the app is up (the bench also checks a real event's reply)."""
    return {"status": "ok"}
