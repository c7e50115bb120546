"""Classify messages concurrently with Claude's async client."""

import asyncio

import anthropic


async def classify(client: anthropic.AsyncAnthropic, text: str) -> str:
    message = await client.messages.create(
        model="claude-sonnet-5-5",
        max_tokens=20,
        messages=[{"role": "user", "content": f"Positive or negative? {text}"}],
    )
    return message.content[0].text


async def main() -> None:
    client = anthropic.AsyncAnthropic()
    labels = await asyncio.gather(*(classify(client, f"review {n}") for n in range(5)))
    print("labels:", len(labels))
    async with client.messages.stream(
        model="claude-sonnet-5-5", max_tokens=50, messages=[{"role": "user", "content": "Hello"}]
    ) as stream:
        print("streamed:", "".join([text async for text in stream.text_stream]))


asyncio.run(main())
