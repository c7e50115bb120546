"""An async app that uses the openai SDK's aiohttp transport for throughput."""

import asyncio

from openai import AsyncOpenAI, DefaultAioHttpClient


async def main() -> None:
    async with AsyncOpenAI(http_client=DefaultAioHttpClient()) as client:
        replies = await asyncio.gather(
            *(
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"#{n}"}])
                for n in range(5)
            )
        )
        print("replies:", len(replies))
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Stream please"}], stream=True
        )
        print("streamed:", "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]))


asyncio.run(main())
