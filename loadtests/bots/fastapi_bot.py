"""FastAPI support bot, served by uvicorn (1 worker).

uvicorn fastapi_bot:app --http httptools --loop uvloop --no-access-log
"""

from botlogic import support
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict

app = FastAPI()


class Event(BaseModel):
    model_config = ConfigDict(extra="allow")

    conversation: str
    user: str
    text: str


class Reply(BaseModel):
    reply: str
    turn: int


@app.post("/hooks/support", response_model=Reply)
async def hook_support(event: Event) -> dict:
    return support({"conversation": event.conversation, "text": event.text})


@app.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}
