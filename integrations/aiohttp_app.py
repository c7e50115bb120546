"""Calls Anthropic's Messages API by hand with aiohttp, concurrently, and reads one reply as a stream."""

import asyncio
import json
import os

import aiohttp

URL = "https://api.anthropic.com/v1/messages"
HEADERS = {"x-api-key": os.environ["ANTHROPIC_API_KEY"], "anthropic-version": "2023-06-01"}


async def ask(session: aiohttp.ClientSession, question: str) -> str:
    payload = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": question}]}
    async with session.post(URL, headers=HEADERS, json=payload) as response:
        response.raise_for_status()
        message = await response.json()
    return message["content"][0]["text"]


async def main() -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        answers = await asyncio.gather(*(ask(session, f"Give me fact #{n} about owls.") for n in range(3)))
        print("answers:", len(answers), answers[0])

        payload = {
            "model": "claude-sonnet-4-5",
            "max_tokens": 100,
            "stream": True,
            "messages": [{"role": "user", "content": "One sentence about tea."}],
        }
        pieces = []
        async with session.post(URL, headers=HEADERS, json=payload) as response:
            response.raise_for_status()
            async for raw in response.content:
                line = raw.decode().strip()
                if not line.startswith("data: "):
                    continue
                event = json.loads(line.removeprefix("data: "))
                if event["type"] == "content_block_delta":
                    pieces.append(event["delta"]["text"])
        print("streamed:", "".join(pieces))


asyncio.run(main())
