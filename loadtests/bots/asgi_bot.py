"""Hand-written ASGI support bot (no framework), for uvicorn and granian; JSON with orjson.

    uvicorn asgi_bot:app --http httptools --loop uvloop --no-access-log --workers 2
    granian --interface asgi --workers 2 asgi_bot:app

Routes: ``POST /hooks/support`` (JSON event -> JSON reply) and ``GET /healthz``.
Conversation state lives in each worker process (``botlogic.STATES``).
"""

import orjson
from botlogic import support

_JSON_HEADERS = [(b"content-type", b"application/json")]
_HEALTH = b'{"status":"ok"}'
_dumps = orjson.dumps
_loads = orjson.loads


async def _send(send, status, body):
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": _JSON_HEADERS + [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive):
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while message.get("more_body", False):
        message = await receive()
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    method = scope["method"]
    if method == "POST" and path == "/hooks/support":
        body = await _read_body(receive)
        try:
            event = _loads(body)
            reply = support(event)
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            await _send(send, 400, _dumps({"error": {"code": "bad_request", "message": str(exc)}}))
            return
        await _send(send, 200, _dumps(reply))
    elif path == "/healthz":
        await _send(send, 200, _HEALTH)
    else:
        await _send(send, 404, b'{"error":{"code":"not_found"}}')
