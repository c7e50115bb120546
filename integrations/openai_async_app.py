"""Summarise a batch of tickets concurrently, as a web app's worker pool would."""

import asyncio

from openai import AsyncOpenAI

TICKETS = [f"Ticket {n}: the export button does nothing on page {n}." for n in range(20)]


async def summarise(client: AsyncOpenAI, ticket: str) -> str:
    response = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": f"Summarise in five words: {ticket}"}],
    )
    return response.choices[0].message.content or ""


async def main() -> None:
    async with AsyncOpenAI() as client:
        summaries = await asyncio.gather(*(summarise(client, ticket) for ticket in TICKETS))
        print("summaries:", len(summaries))
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hi"}], stream=True
        )
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
        print("streamed:", text)


asyncio.run(main())
