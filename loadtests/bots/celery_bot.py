"""FastAPI front of the Celery peer: each webhook enqueues a Celery task on
Redis and waits for its result (the classic "web app + task queue" design).

    CELERY_REDIS_URL=redis://127.0.0.1:6379/0 \
        uvicorn celery_bot:app --http httptools --loop uvloop --no-access-log

The endpoint is a plain ``def``: FastAPI runs it in its thread pool, and each
thread gets its own (thread-local) Celery result backend connection.
"""

from celery_tasks import support_task
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict

RESULT_TIMEOUT_S = 10.0

app = FastAPI()


class Event(BaseModel):
    model_config = ConfigDict(extra="allow")

    conversation: str
    user: str
    text: str


@app.post("/hooks/support")
def hook_support(event: Event) -> dict:
    result = support_task.delay(event.model_dump())
    try:
        return result.get(timeout=RESULT_TIMEOUT_S)
    except Exception as exc:  # timeout or task failure
        raise HTTPException(status_code=504, detail=str(exc)) from exc


@app.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}
