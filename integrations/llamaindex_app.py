"""A LlamaIndex app on OpenAI: completes, chats, streams, and completes async; the key comes from OPENAI_API_KEY."""

import asyncio

from llama_index.core.llms import ChatMessage
from llama_index.llms.openai import OpenAI

llm = OpenAI(model="gpt-4o-mini", temperature=0)

print("completion:", llm.complete("Write a tagline for a bakery.").text)

reply = llm.chat(
    [
        ChatMessage(role="system", content="You answer in one sentence."),
        ChatMessage(role="user", content="What is a sourdough starter?"),
    ]
)
print("chat:", reply.message.content)

print("streamed:", "".join(chunk.delta or "" for chunk in llm.stream_complete("Say hi")))


async def main() -> None:
    answers = await asyncio.gather(*(llm.acomplete(f"Name bread #{n}.") for n in range(3)))
    print("async:", len(answers), answers[0].text)


asyncio.run(main())
