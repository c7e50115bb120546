"""An ASGI app served by uvicorn with several workers in test_fleet_processes.py.

Business code as written for production: each request to /ask makes one chat completion with
the openai SDK's async client and answers with its text. The middleware is on through the
environment only (YIBU_*), in every worker process.
"""

from __future__ import annotations

import json
from typing import Any

import openai

client = openai.AsyncOpenAI(max_retries=0)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    try:
        reply = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}], max_tokens=8
        )
        status, body = 200, {"text": reply.choices[0].message.content}
    except openai.APIError as exc:
        status, body = 502, {"error": type(exc).__name__}
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": payload})
