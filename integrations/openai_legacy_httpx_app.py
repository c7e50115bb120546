"""An app that hands the openai SDK its own (legacy) httpx client, e.g. to set timeouts."""

import httpx
from openai import OpenAI

client = OpenAI(http_client=httpx.Client(timeout=httpx.Timeout(20.0, connect=5.0)))

reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
print("answer:", reply.choices[0].message.content)

stream = client.chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "Count to three"}], stream=True
)
print("streamed:", "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices))
