"""Client-side limits and policy, end to end: real SDKs and clients, real sockets, the simulator.

Limits are checked under real concurrency (threads and asyncio tasks together) by what the
gateway saw: how many calls overlapped there, and in what order they arrived. Policy is
checked by what the caller gets (the SDK's usual typed exception, with a message naming
the rule, its setting and what was sent) and by what the gateway got (nothing).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
from typing import Any

import aiohttp
import anthropic
import httpx2
import openai
import pytest
import requests
from helpers import ANTHROPIC_KEY, OPENAI_KEY, install_for

from yibu_middleware.simulator import GatewaySimulator

MESSAGES = [{"role": "user", "content": "hi"}]
OPENAI_URL = "https://api.openai.com/v1/chat/completions"


def png_part(size: int) -> dict[str, Any]:
    data = base64.b64encode(b"\x89PNG" + b"\0" * (size - 4)).decode()
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}


def most_at_once(simulator: GatewaySimulator) -> int:
    """The largest number of calls the gateway was serving at the same moment."""
    edges = sorted(
        [(record.started, 1) for record in simulator.records]
        + [(record.started + record.elapsed, -1) for record in simulator.records]
    )
    busy = peak = 0
    for _, step in edges:
        busy += step
        peak = max(peak, busy)
    return peak


# --- policy -------------------------------------------------------------------------------------


def test_denied_model_is_a_permission_error_and_nothing_is_sent(gateway: GatewaySimulator) -> None:
    install_for(gateway, policy={"allowed_models": ["gpt-4o*"]}, model_aliases={"old": "gpt-3.5-turbo"})
    client = openai.OpenAI(api_key=OPENAI_KEY)  # default retries: a refusal must not be retried
    with pytest.raises(openai.PermissionDeniedError) as raised:
        client.chat.completions.create(model="old", messages=MESSAGES)  # type: ignore[arg-type]
    message = str(raised.value)
    assert "gpt-3.5-turbo" in message and "policy.allowed_models" in message and "allowed models" in message
    assert gateway.records == []
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert len(gateway.records) == 1


def test_refusal_says_do_not_retry(gateway: GatewaySimulator) -> None:
    install_for(gateway, policy={"denied_modalities": ["image"]})
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": [png_part(100)]}]}
    with httpx2.Client() as client:
        response = client.post(OPENAI_URL, json=body, headers={"Authorization": f"Bearer {OPENAI_KEY}"})
    assert response.status_code == 403 and response.headers["x-should-retry"] == "false"
    error = response.json()["error"]
    assert error["code"] == "modality_not_allowed" and "policy.denied_modalities" in error["message"]
    assert gateway.records == []


def test_anthropic_image_format_and_size_are_bad_requests_in_anthropic_shape(gateway: GatewaySimulator) -> None:
    install_for(gateway, policy={"max_media_bytes": 1000})
    client = anthropic.Anthropic(api_key=ANTHROPIC_KEY)
    gif = {"type": "image", "source": {"type": "base64", "media_type": "image/gif", "data": "R0lGODlh" * 10}}
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(model="claude-sonnet-4", max_tokens=10, messages=[{"role": "user", "content": [gif]}])  # type: ignore[list-item]
    assert (
        raised.value.status_code == 400 and "gif" in str(raised.value) and "policy.image_formats" in str(raised.value)
    )
    assert raised.value.body["type"] == "error"  # type: ignore[index]
    big = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 4000}}
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(model="claude-sonnet-4", max_tokens=10, messages=[{"role": "user", "content": [big]}])  # type: ignore[list-item]
    assert "policy.max_media_bytes" in str(raised.value) and "3000" in str(raised.value).replace(",", "")
    assert gateway.records == []


def test_async_openai_denied_modality(gateway: GatewaySimulator) -> None:
    install_for(gateway, policy={"denied_modalities": ["audio"]})
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg" * 20, "format": "wav"}}

    async def main() -> None:
        client = openai.AsyncOpenAI(api_key=OPENAI_KEY)
        with pytest.raises(openai.PermissionDeniedError, match="audio"):
            await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": [audio]}])  # type: ignore[list-item]
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]

    asyncio.run(main())
    assert len(gateway.records) == 1


def test_requests_and_aiohttp_get_the_same_refusal(gateway: GatewaySimulator) -> None:
    install_for(gateway, policy={"allowed_models": ["gpt-4o"]})
    body = {"model": "gpt-5", "messages": MESSAGES}
    headers = {"Authorization": f"Bearer {OPENAI_KEY}"}
    response = requests.post(OPENAI_URL, json=body, headers=headers, timeout=10)
    assert response.status_code == 403 and response.headers["x-should-retry"] == "false"
    assert "policy.allowed_models" in response.json()["error"]["message"]

    async def with_aiohttp() -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as session, session.post(OPENAI_URL, json=body, headers=headers) as reply:
            return reply.status, await reply.json()

    status, document = asyncio.run(with_aiohttp())
    assert status == 403 and "gpt-5" in document["error"]["message"]
    assert gateway.records == []


def test_gateway_quota_refusal_is_not_retried_and_is_explained(
    gateway: GatewaySimulator, caplog: pytest.LogCaptureFixture
) -> None:
    quota = {
        "error": {"message": "user quota is not enough", "type": "new_api_error", "code": "insufficient_user_quota"}
    }
    for node in gateway.nodes:
        gateway.set_faults(node.name, status_override=403, status_body=quota)
    install_for(gateway)
    caplog.set_level(logging.WARNING, logger="yibu_middleware")
    with pytest.raises(openai.PermissionDeniedError) as raised:
        openai.OpenAI(api_key=OPENAI_KEY).chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert len(gateway.records) == 1  # neither we nor the SDK retried it
    assert "insufficient_user_quota" in str(raised.value)
    assert any(
        "quota" in record.getMessage() and "insufficient_user_quota" in record.getMessage() for record in caplog.records
    )


# --- limits -------------------------------------------------------------------------------------


def test_max_concurrent_holds_for_threads_and_tasks_together(gateway: GatewaySimulator) -> None:
    for node in gateway.nodes:
        gateway.set_faults(node.name, latency=0.05)
    install_for(gateway, limits={"max_concurrent": 3})
    failures: list[BaseException] = []

    def from_thread() -> None:
        client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
        for _ in range(4):
            try:
                client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
            except BaseException as exc:  # reported below
                failures.append(exc)

    async def from_tasks() -> None:
        client = openai.AsyncOpenAI(api_key=OPENAI_KEY, max_retries=0)
        await asyncio.gather(
            *(client.chat.completions.create(model="gpt-4o", messages=MESSAGES) for _ in range(12))  # type: ignore[arg-type]
        )

    threads = [threading.Thread(target=from_thread) for _ in range(3)]
    for thread in threads:
        thread.start()
    asyncio.run(from_tasks())
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(gateway.records) == 24 and all(record.status == 200 for record in gateway.records)
    assert most_at_once(gateway) == 3  # the pool was used to the full, never beyond


def test_queue_timeout_is_a_rate_limit_error_naming_the_limit(gateway: GatewaySimulator) -> None:
    """Two calls at once through a pool of one: the second waits 0.2 s of the first's 1 s."""
    for node in gateway.nodes:
        gateway.set_faults(node.name, latency=1.0)
    install_for(gateway, limits={"max_concurrent": 1, "queue_timeout": 0.2})

    async def main() -> list[Any]:
        client = openai.AsyncOpenAI(api_key=OPENAI_KEY)  # default retries: the 429 says not to retry
        calls = [client.chat.completions.create(model="gpt-4o", messages=MESSAGES) for _ in range(2)]  # type: ignore[arg-type]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(main())
    (error,) = [result for result in results if isinstance(result, BaseException)]
    assert isinstance(error, openai.RateLimitError)
    assert "limits.max_concurrent" in str(error) and "limits.queue_timeout" in str(error)
    assert error.response.headers["x-should-retry"] == "false"
    assert len(gateway.records) == 1  # the call that had the slot, only


def test_tokens_per_minute_counts_the_usage_a_stream_reports(gateway: GatewaySimulator) -> None:
    """The first call reserves its estimate (max_tokens 150); once its stream is read, only the
    usage the gateway reported counts. The second fits only because of that correction; the
    third does not fit even so, and times out naming the limit."""
    install_for(gateway, limits={"tokens_per_minute": 200, "queue_timeout": 0.3})
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    stream = client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=150, stream=True, stream_options={"include_usage": True}
    )  # type: ignore[call-overload]
    usage = [chunk.usage for chunk in stream if chunk.usage][-1]
    assert usage.total_tokens < 40
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=120)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=190)  # type: ignore[arg-type]
    assert "limits.tokens_per_minute" in str(raised.value)
    assert len(gateway.records) == 2


def test_a_429_from_the_gateway_holds_back_the_next_calls(gateway: GatewaySimulator) -> None:
    for node in gateway.nodes:
        gateway.set_faults(node.name, rate_limit_rate=1.0, retry_after=5.0)
    install_for(gateway, limits={"max_concurrent": 100, "queue_timeout": 0.2}, retry={"max_retry_after": 1})
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    sent = len(gateway.records)
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert len(gateway.records) == sent  # held back here: the gateway asked for 5 s
    assert "retry-after" in str(raised.value) or "gateway" in str(raised.value)


def test_per_model_limit_does_not_hold_other_models(gateway: GatewaySimulator) -> None:
    for node in gateway.nodes:
        gateway.set_faults(node.name, latency=0.3)
    install_for(gateway, limits={"per_model": {"gpt-4o": {"max_concurrent": 1}}, "queue_timeout": 5})

    async def main() -> list[str]:
        client = openai.AsyncOpenAI(api_key=OPENAI_KEY, max_retries=0)
        calls = [
            client.chat.completions.create(model=model, messages=MESSAGES) for model in ("gpt-4o", "gpt-4o", "mini")
        ]  # type: ignore[arg-type]
        await asyncio.gather(*calls)
        return [record.model or "" for record in sorted(gateway.records, key=lambda record: record.started)]

    order = asyncio.run(main())
    assert order.index("mini") < 2  # not queued behind the second gpt-4o call
    assert sorted(order) == ["gpt-4o", "gpt-4o", "mini"]


def test_requests_and_aiohttp_share_the_pool(gateway: GatewaySimulator) -> None:
    for node in gateway.nodes:
        gateway.set_faults(node.name, latency=0.05)
    install_for(gateway, limits={"max_concurrent": 2})
    body = json.dumps({"model": "gpt-4o", "messages": MESSAGES})
    headers = {"Authorization": f"Bearer {OPENAI_KEY}", "Content-Type": "application/json"}

    def with_requests() -> None:
        for _ in range(4):
            assert requests.post(OPENAI_URL, data=body, headers=headers, timeout=10).status_code == 200

    async def with_aiohttp() -> None:
        async with aiohttp.ClientSession() as session:

            async def one() -> None:
                async with session.post(OPENAI_URL, data=body, headers=headers) as reply:
                    assert reply.status == 200
                    await reply.read()

            await asyncio.gather(*(one() for _ in range(6)))

    threads = [threading.Thread(target=with_requests) for _ in range(2)]
    for thread in threads:
        thread.start()
    asyncio.run(with_aiohttp())
    for thread in threads:
        thread.join()
    assert len(gateway.records) == 14 and most_at_once(gateway) == 2


# --- the same limits through each plain client --------------------------------------------------


def post_with(client: str, body: dict[str, Any]) -> tuple[int, str]:
    """One POST to OpenAI's chat API with a plain client, body read to its end (a stream too)."""
    headers = {"Authorization": f"Bearer {OPENAI_KEY}"}
    if client == "requests":
        with requests.post(OPENAI_URL, json=body, headers=headers, timeout=10, stream=True) as reply:
            return reply.status_code, "".join(line.decode() + "\n" for line in reply.iter_lines())
    if client == "httpx2":
        with httpx2.Client(timeout=10) as session, session.stream("POST", OPENAI_URL, json=body, headers=headers) as r:
            return r.status_code, "".join(r.iter_text())

    async def with_aiohttp() -> tuple[int, str]:
        async with aiohttp.ClientSession() as session, session.post(OPENAI_URL, json=body, headers=headers) as reply:
            text = b"".join([chunk async for chunk in reply.content.iter_any()]).decode()
            return reply.status, text

    return asyncio.run(with_aiohttp())


@pytest.mark.parametrize("client", ["requests", "aiohttp", "httpx2"])
def test_each_client_counts_streamed_usage_and_times_out_in_the_queue(gateway: GatewaySimulator, client: str) -> None:
    install_for(gateway, limits={"tokens_per_minute": 200, "queue_timeout": 0.3})
    streamed = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 150, "stream": True}
    status, text = post_with(client, {**streamed, "stream_options": {"include_usage": True}})
    assert status == 200 and '"usage"' in text and text.rstrip().endswith("data: [DONE]")
    status, _ = post_with(client, {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 120})
    assert status == 200  # fits only because the stream's usage replaced its estimate
    status, text = post_with(client, {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 190})
    error = json.loads(text)["error"]
    assert status == 429 and error["code"] == "client_rate_limited" and "limits.tokens_per_minute" in error["message"]
    assert len(gateway.records) == 2
