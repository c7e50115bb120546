"""LiteLLM with an OpenAI model, sync and async, one call streamed; the key comes from OPENAI_API_KEY."""

import asyncio

import litellm

MESSAGES = [{"role": "user", "content": "Name three rivers in Europe."}]

response = litellm.completion(model="gpt-4o-mini", messages=MESSAGES)
print("sync:", response.choices[0].message.content)

stream = litellm.completion(model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hi"}], stream=True)
print("streamed:", "".join(chunk.choices[0].delta.content or "" for chunk in stream))


async def main() -> None:
    replies = await asyncio.gather(*(litellm.acompletion(model="gpt-4o-mini", messages=MESSAGES) for _ in range(3)))
    print("async:", len(replies), replies[0].choices[0].message.content)
    stream = await litellm.acompletion(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], stream=True)
    print("async streamed:", "".join([chunk.choices[0].delta.content or "" async for chunk in stream]))


asyncio.run(main())
