"""Calls the OpenAI REST API by hand with requests, as countless scripts do; one call streamed."""

import json
import os

import requests

URL = "https://api.openai.com/v1/chat/completions"
HEADERS = {"Authorization": f"Bearer {os.environ['OPENAI_API_KEY']}"}

response = requests.post(
    URL,
    headers=HEADERS,
    json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Suggest a name for a cat."}]},
    timeout=30,
)
response.raise_for_status()
print("answer:", response.json()["choices"][0]["message"]["content"])

with requests.Session() as session:
    session.headers.update(HEADERS)
    models = session.get("https://api.openai.com/v1/models", timeout=30)
    models.raise_for_status()
    print("models:", len(models.json()["data"]))

pieces = []
with requests.post(
    URL,
    headers=HEADERS,
    json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi"}], "stream": True},
    stream=True,
    timeout=30,
) as streamed:
    streamed.raise_for_status()
    for line in streamed.iter_lines(decode_unicode=True):
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line.removeprefix("data: "))
        if chunk["choices"]:
            pieces.append(chunk["choices"][0]["delta"].get("content") or "")
print("streamed:", "".join(pieces))
