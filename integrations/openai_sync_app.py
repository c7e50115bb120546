"""A small support-desk helper: answers a question, streams a reply, embeds FAQ entries.

Plain openai SDK usage; the key comes from OPENAI_API_KEY.
"""

from openai import OpenAI

client = OpenAI()

answer = client.chat.completions.create(
    model="gpt-4o-mini",
    messages=[
        {"role": "system", "content": "You are a helpful support agent."},
        {"role": "user", "content": "How do I reset my password?"},
    ],
)
print("answer:", answer.choices[0].message.content)

stream = client.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "Write a one-line greeting."}],
    stream=True,
    stream_options={"include_usage": True},
)
pieces = []
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
    if chunk.usage:
        print("stream usage:", chunk.usage.total_tokens, "tokens")
print("streamed:", "".join(pieces))

faq = ["Resetting a password", "Changing the billing address", "Closing an account"]
vectors = client.embeddings.create(model="text-embedding-3-small", input=faq)
print("embeddings:", len(vectors.data), "vectors of", len(vectors.data[0].embedding), "dims")
