"""Calls the OpenAI REST API by hand with httpx, sync and async, as many scripts do."""

import asyncio
import os

import httpx

HEADERS = {"Authorization": f"Bearer {os.environ['OPENAI_API_KEY']}"}
PAYLOAD = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Ping"}]}

with httpx.Client(base_url="https://api.openai.com/v1", headers=HEADERS, timeout=30) as client:
    response = client.post("/chat/completions", json=PAYLOAD)
    response.raise_for_status()
    print("sync:", response.json()["choices"][0]["message"]["content"])

    models = client.get("/models").raise_for_status().json()
    print("models:", len(models["data"]))

    with client.stream("POST", "/chat/completions", json={**PAYLOAD, "stream": True}) as streamed:
        lines = [line for line in streamed.iter_lines() if line.startswith("data: ")]
    print("stream events:", len(lines))


async def main() -> None:
    async with httpx.AsyncClient(headers=HEADERS, timeout=30) as client:
        response = await client.post("https://api.openai.com/v1/chat/completions", json=PAYLOAD)
        response.raise_for_status()
        print("async:", response.json()["choices"][0]["message"]["content"])


asyncio.run(main())
