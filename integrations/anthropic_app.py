"""Draft and stream replies with Claude; the key comes from ANTHROPIC_API_KEY."""

import anthropic

client = anthropic.Anthropic()

message = client.messages.create(
    model="claude-sonnet-5-5",
    max_tokens=200,
    messages=[{"role": "user", "content": "Draft a polite reply to a late-delivery complaint."}],
)
print("reply:", message.content[0].text)
print("usage:", message.usage.input_tokens, "in,", message.usage.output_tokens, "out")

with client.messages.stream(
    model="claude-sonnet-5-5",
    max_tokens=200,
    messages=[{"role": "user", "content": "One sentence about tea."}],
) as stream:
    text = "".join(stream.text_stream)
print("streamed:", text)
