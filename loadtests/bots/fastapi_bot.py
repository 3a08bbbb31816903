"""FastAPI support bot, served by uvicorn (bench.py runs it with one worker per server core).

    uvicorn fastapi_bot:app --http httptools --loop uvloop --no-access-log --workers 2

Idiomatic FastAPI: the event is a pydantic model, the reply a ``response_model``. JSON: FastAPI
reads the body with Starlette's ``Request.json()`` (stdlib ``json``) and validates it with
pydantic; the reply is validated and serialized straight to JSON by pydantic-core (Rust).
Conversation state lives in each worker process (``botlogic.STATES``).
"""

from botlogic import support
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict

app = FastAPI()


class Event(BaseModel):
    """The support event; fields other than these three are kept but not used."""

    model_config = ConfigDict(extra="allow")

    conversation: str
    user: str
    text: str


class Reply(BaseModel):
    """The bot's reply."""

    reply: str
    turn: int


@app.post("/hooks/support", response_model=Reply)
async def hook_support(event: Event) -> dict:
    """Runs the shared bot on the event."""
    return support({"conversation": event.conversation, "text": event.text})


@app.get("/healthz")
async def healthz() -> dict:
    """Always ready once the app is up."""
    return {"status": "ok"}
