"""A hostile or broken gateway node must not hurt the app (issue 14, items 9 to 12).

Real clients (the openai SDK on httpx2, requests, aiohttp, httpx) against small hostile
servers on loopback (``hostile_servers.py``) and the project's gateway simulator. No test
asserts a duration: each asserts what the app got and what the nodes saw.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from helpers import GATEWAY_KEY, OPENAI_KEY
from hostile_servers import HostileNode, Reply, ok, rate_limited

import yibu_middleware
from yibu_middleware.simulator import GatewaySimulator


def install(nodes: list[str], **overrides: Any) -> None:
    settings: dict[str, Any] = {"nodes": nodes, "api_key": GATEWAY_KEY}
    settings.update(overrides)
    yibu_middleware.install(settings)


def chat(client: openai.OpenAI) -> str | None:
    answer = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    return answer.choices[0].message.content


async def achat(client: openai.AsyncOpenAI) -> str | None:
    answer = await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    return answer.choices[0].message.content


def once_then_ok(first: Reply) -> Any:
    """A script: ``first`` for the first request, a plain success after."""
    replies = iter([first])
    return lambda seen: next(replies, None) or ok()


# --- item 9: holds learnt from the gateway ----------------------------------------------------------


@pytest.mark.parametrize("client", ["openai", "openai-async", "requests", "aiohttp", "httpx"])
def test_a_429_with_a_huge_retry_after_holds_its_node_only(gateway: GatewaySimulator, client: str) -> None:
    """Node A asks to wait 100,000 s: later calls go to healthy node B, not into a days-long queue."""
    with HostileNode(lambda seen: rate_limited([("retry-after", "100000")])) as hostile:
        healthy = gateway.nodes[0].base_url
        install([hostile.base_url, healthy], pin=hostile.base_url, limits={"max_concurrent": 4, "queue_timeout": 5})
        for _ in range(4):  # the first: A said 429, B answered; then B only, A is not asked while it holds
            status, body = post_chat(client)
            assert status == 200, body[:300]
        assert len(hostile.seen) == 1


@pytest.mark.parametrize(
    "headers",
    [
        [("retry-after", "100000")],
        [("retry-after-ms", "900000000")],
        [("retry-after", "1e308")],
    ],
    ids=["days", "ms-huge", "absurd"],
)
def test_a_hold_has_a_ceiling(headers: list[tuple[str, str]]) -> None:
    """The only node asks to wait for days: the hold lasts limits.max_hold_seconds at most."""
    with HostileNode(once_then_ok(rate_limited(headers))) as hostile:
        install(
            [hostile.base_url],
            limits={"max_concurrent": 4, "queue_timeout": 5, "max_hold_seconds": 0.3},
        )
        client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
        with pytest.raises(openai.RateLimitError):
            chat(client)  # longer than retry.max_retry_after: handed back, as before
        assert chat(client) == "hello"  # held 0.3 s, not days
        assert len(hostile.seen) == 2


@pytest.mark.parametrize(
    "headers",
    [
        # An epoch (as some gateways send) long past: no hold at all.
        [("x-ratelimit-remaining-requests", "0"), ("x-ratelimit-reset-requests", "1733356800")],
        [("x-ratelimit-remaining-requests", "0"), ("x-ratelimit-reset-requests", "1733356800000")],
        [("x-ratelimit-remaining-tokens", "0"), ("x-ratelimit-reset-tokens", "1733356800")],
        # Garbage, and numbers that are not numbers.
        [("x-ratelimit-remaining-requests", "0"), ("x-ratelimit-reset-requests", "nan")],
        [("x-ratelimit-remaining-requests", "nan"), ("x-ratelimit-reset-requests", "1s")],
        [("x-ratelimit-remaining-requests", "0"), ("x-ratelimit-reset-requests", "-5")],
        [("x-ratelimit-remaining-requests", "0"), ("x-ratelimit-reset-requests", "inf")],
        [("x-ratelimit-remaining-requests", "-1"), ("x-ratelimit-limit-requests", "inf")],
        [("anthropic-ratelimit-requests-remaining", "0"), ("anthropic-ratelimit-requests-reset", "yesterday")],
    ],
    ids=["epoch", "epoch-ms", "epoch-tokens", "nan", "nan-left", "negative", "inf", "inf-limit", "garbage-date"],
)
def test_budget_headers_that_are_dates_or_garbage_do_not_hold(headers: list[tuple[str, str]]) -> None:
    with HostileNode(lambda seen: ok(headers)) as hostile:
        install([hostile.base_url], limits={"max_concurrent": 4, "queue_timeout": 5})
        client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
        for _ in range(3):
            assert chat(client) == "hello"
        assert len(hostile.seen) == 3


@pytest.mark.parametrize("client", ["openai", "requests", "aiohttp", "httpx"])
@pytest.mark.parametrize("limits", [{}, {"max_concurrent": 4, "queue_timeout": 5}], ids=["no-limits", "limits"])
@pytest.mark.parametrize(
    "headers",
    [[("retry-after-ms", "nan")], [("retry-after", "nan")], [("retry-after", "-inf")], [("retry-after-ms", "x")]],
    ids=["ms-nan", "nan", "-inf", "garbage"],
)
def test_a_429_whose_hint_is_not_a_number_is_retried_not_raised(
    headers: list[tuple[str, str]], limits: dict[str, Any], client: str
) -> None:
    """No bare ValueError: the hint is ignored and the usual back-off applies."""
    with HostileNode(once_then_ok(rate_limited(headers))) as hostile:
        install([hostile.base_url], limits=limits)
        status, body = post_chat(client)
        assert status == 200, body[:300]
        assert len(hostile.seen) == 2


@pytest.mark.parametrize(
    "headers",
    [[("retry-after-ms", "nan")], [("retry-after", "nan")], [("retry-after", "-inf")], [("retry-after-ms", "x")]],
    ids=["ms-nan", "nan", "-inf", "garbage"],
)
async def test_a_429_whose_hint_is_not_a_number_does_not_hang(headers: list[tuple[str, str]]) -> None:
    """Async: no hang; the test fails after 10 s rather than waiting forever."""
    with HostileNode(once_then_ok(rate_limited(headers))) as hostile:
        install([hostile.base_url], limits={"max_concurrent": 4, "queue_timeout": 5})
        async with openai.AsyncOpenAI(api_key=OPENAI_KEY, max_retries=0) as client:
            assert await asyncio.wait_for(achat(client), 10) == "hello"
            assert await asyncio.wait_for(achat(client), 10) == "hello"
        assert len(hostile.seen) == 3


async def test_an_epoch_reset_does_not_stop_async_calls() -> None:
    headers = [("x-ratelimit-remaining-requests", "0"), ("x-ratelimit-reset-requests", "1733356800")]
    with HostileNode(lambda seen: ok(headers)) as hostile:
        install([hostile.base_url], limits={"max_concurrent": 4, "queue_timeout": 5})
        async with openai.AsyncOpenAI(api_key=OPENAI_KEY, max_retries=0) as client:
            for _ in range(3):
                assert await asyncio.wait_for(achat(client), 10) == "hello"


# --- item 10: what a stream holds before its first content ------------------------------------------

STREAM_BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True}
CHAT_URL = "https://api.openai.com/v1/chat/completions"
AUTH = {"Authorization": f"Bearer {OPENAI_KEY}"}
CLIENTS = ["openai", "openai-async", "requests", "aiohttp", "httpx"]


def stream_text(client: str) -> str:
    """A streamed chat completion's text, read by the named client as an app would read it."""
    if client == "openai":
        with openai.OpenAI(api_key=OPENAI_KEY, max_retries=0) as sdk:
            return "".join(
                chunk.choices[0].delta.content or ""
                for chunk in sdk.chat.completions.create(**STREAM_BODY)  # type: ignore[call-overload]
                if chunk.choices
            )
    if client == "openai-async":

        async def read() -> str:
            async with openai.AsyncOpenAI(api_key=OPENAI_KEY, max_retries=0) as sdk:
                stream = await sdk.chat.completions.create(**STREAM_BODY)  # type: ignore[call-overload]
                return "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])

        return asyncio.run(read())
    if client == "requests":
        import requests

        with requests.post(CHAT_URL, json=STREAM_BODY, headers=AUTH, stream=True, timeout=30) as response:
            response.raise_for_status()
            return text_of(b"\n".join(response.iter_lines()))
    if client == "aiohttp":
        import aiohttp

        async def read_aiohttp() -> str:
            async with aiohttp.ClientSession() as session, session.post(CHAT_URL, json=STREAM_BODY, headers=AUTH) as r:
                r.raise_for_status()
                return text_of(await r.read())

        return asyncio.run(read_aiohttp())
    import httpx

    with httpx.Client(timeout=30) as plain, plain.stream("POST", CHAT_URL, json=STREAM_BODY, headers=AUTH) as r:
        r.raise_for_status()
        return text_of(r.read())


def text_of(body: bytes) -> str:
    import json

    text = ""
    for line in body.decode().splitlines():
        if line.startswith("data:") and line != "data: [DONE]":
            choices = json.loads(line[5:])["choices"]
            text += (choices[0]["delta"].get("content") or "") if choices else ""
    return text


EMPTY_CHUNK = b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{}}]}\n\n'
GIVE_UP_AT = 64 * 1024 * 1024  # the hostile node ends its stream here (the test would otherwise hang)


def no_content(kind: str) -> Iterator[bytes]:
    """A stream that never reaches content, up to GIVE_UP_AT bytes: keep-alives, events with no
    content, or one endless event in 16 KiB chunks."""
    sent = 0
    if kind == "one-event":
        yield b'data: {"choices":[{"index":0,"delta":{"content":"'
    chunk = {
        "keep-alive": b": keep-alive\n\n" * 1000,
        "empty-events": EMPTY_CHUNK * 200,
        "one-event": b"a" * 16 * 1024,
    }[kind]
    while sent < GIVE_UP_AT:
        yield chunk
        sent += len(chunk)


@pytest.mark.parametrize("kind", ["keep-alive", "empty-events", "one-event"])
@pytest.mark.parametrize("client", CLIENTS)
def test_a_stream_with_no_content_is_cut_by_the_cap_and_the_next_node_answers(
    gateway: GatewaySimulator, client: str, kind: str
) -> None:
    """What is held before a stream's first content is capped: past it the node is given up
    (a failed attempt) and the next node answers; the hostile node is not read to its end."""
    stream = Reply(200, [("Content-Type", "text/event-stream")], ())
    with HostileNode(lambda seen: Reply(stream.status, stream.headers, no_content(kind))) as hostile:
        install([hostile.base_url, gateway.nodes[0].base_url], pin=hostile.base_url)
        assert stream_text(client)  # the simulator's answer
        assert len(hostile.seen) == 1
        # 1 MiB held, plus what the kernel's socket buffers took before the client stopped reading.
        assert hostile.sent < GIVE_UP_AT // 4


# --- item 11: error bodies and events a client must not choke on -----------------------------------

CHAT_BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
DEEP = b'{"error": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # the decoder recurses once per bracket


def post_chat(client: str) -> tuple[int, bytes]:
    """A chat completion by the named client: the status and body the app got (an SDK's error
    included: any other exception, a RecursionError above all, fails the test)."""
    if client in ("openai", "openai-async"):
        try:
            if client == "openai":
                with openai.OpenAI(api_key=OPENAI_KEY, max_retries=0) as sdk:
                    sdk.chat.completions.create(**CHAT_BODY)  # type: ignore[call-overload]
            else:

                async def create() -> None:
                    async with openai.AsyncOpenAI(api_key=OPENAI_KEY, max_retries=0) as sdk:
                        await sdk.chat.completions.create(**CHAT_BODY)  # type: ignore[call-overload]

                asyncio.run(asyncio.wait_for(create(), 30))  # a hang fails the test
        except openai.APIStatusError as exc:
            return exc.status_code, exc.response.content
        return 200, b""
    if client == "requests":
        import requests

        response = requests.post(CHAT_URL, json=CHAT_BODY, headers=AUTH, timeout=30)
        return response.status_code, response.content
    if client == "aiohttp":
        import aiohttp

        async def read_aiohttp() -> tuple[int, bytes]:
            async with aiohttp.ClientSession() as session, session.post(CHAT_URL, json=CHAT_BODY, headers=AUTH) as r:
                return r.status, await r.read()

        return asyncio.run(asyncio.wait_for(read_aiohttp(), 30))
    import httpx

    response = httpx.post(CHAT_URL, json=CHAT_BODY, headers=AUTH, timeout=30)
    return response.status_code, response.content


@pytest.mark.parametrize("status", [400, 429, 503])
@pytest.mark.parametrize("client", CLIENTS)
def test_a_deeply_nested_error_body_gives_the_usual_http_error(client: str, status: int) -> None:
    with HostileNode(lambda seen: Reply(status, [("Content-Type", "application/json")], DEEP)) as hostile:
        install([hostile.base_url], retry={"max_attempts": 1})
        got, body = post_chat(client)
        assert got == status and body.startswith(b'{"error": [[[')


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("where", ["chat-chunk", "error-event"])
def test_a_deeply_nested_stream_event_before_content_fails_that_node_only(
    gateway: GatewaySimulator, client: str, where: str
) -> None:
    event = b"data: " + DEEP + b"\n\n"
    if where == "error-event":
        event = b"event: error\n" + event
    reply = Reply(200, [("Content-Type", "text/event-stream")], (event,))
    with HostileNode(lambda seen: Reply(reply.status, reply.headers, iter([event]))) as hostile:
        install([hostile.base_url, gateway.nodes[0].base_url], pin=hostile.base_url)
        assert stream_text(client)  # the next node's answer
        assert len(hostile.seen) == 1


def gzip_bomb(size: int) -> bytes:
    """An error body of ``size`` bytes once inflated, a thousandth of that on the wire."""
    import zlib

    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    head = b'{"error": {"message": "'
    parts = [packer.compress(head)]
    block = b"a" * (1024 * 1024)
    parts += [packer.compress(block) for _ in range(size // len(block))]
    parts.append(packer.compress(b'"}}') + packer.flush())
    return b"".join(parts)


BOMB = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return gzip_bomb(BOMB)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("client", CLIENTS)
def test_a_compressed_error_body_is_not_inflated_whole(client: str, encoding: str, bomb: bytes) -> None:
    """A 64 MiB error body in 64 KiB of gzip: at most 1 MiB of it is inflated and handed back."""
    import tracemalloc
    import zlib

    body = bomb
    if encoding == "deflate":  # zlib-wrapped, as HTTP's "deflate" says
        body = zlib.compress(zlib.decompress(bomb, 16 + zlib.MAX_WBITS), 9)
    with HostileNode(
        lambda seen: Reply(400, [("Content-Type", "application/json"), ("Content-Encoding", encoding)], body)
    ) as hostile:
        install([hostile.base_url])
        tracemalloc.start()
        try:
            status, got = post_chat(client)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert status == 400
        assert got.startswith(b'{"error": {"message": "aaa') and len(got) <= 1024 * 1024 + 4096
        assert peak < BOMB // 4, f"{peak} bytes allocated at the peak"


# --- item 12: waits under trio ----------------------------------------------------------------------


def trio_chats(count: int) -> list[str | None]:
    """``count`` chat completions at once with AsyncOpenAI under trio (not asyncio)."""
    import trio

    answers: list[str | None] = []

    async def main() -> None:
        async with openai.AsyncOpenAI(api_key=OPENAI_KEY, max_retries=0) as client:

            async def one() -> None:
                answers.append(await achat(client))

            with trio.fail_after(20):  # a hang fails the test rather than stopping it
                async with trio.open_nursery() as nursery:
                    for _ in range(count):
                        nursery.start_soon(one)

    trio.run(main)
    return answers


def test_trio_calls_wait_for_max_concurrent(gateway: GatewaySimulator) -> None:
    for node in ("a", "b", "c"):
        gateway.set_faults(node, latency=0.05)
    install([node.base_url for node in gateway.nodes], limits={"max_concurrent": 1})
    assert len(trio_chats(4)) == 4  # three of them waited for the one slot
    assert len(gateway.records) == 4


def test_trio_calls_wait_for_a_held_gateway() -> None:
    with HostileNode(once_then_ok(rate_limited([("retry-after", "0.2")]))) as hostile:
        install([hostile.base_url], limits={"max_concurrent": 4})
        assert trio_chats(1) == ["hello"]  # the retry waited for retry-after
        assert trio_chats(2) == ["hello", "hello"]
        assert len(hostile.seen) == 4


def test_trio_retry_back_off() -> None:
    failed = Reply(503, [("Content-Type", "application/json")], b'{"error": {"message": "busy"}}')
    with HostileNode(once_then_ok(failed)) as hostile:
        install([hostile.base_url])  # one node: the retry comes after a jittered pause
        assert trio_chats(1) == ["hello"]
        assert len(hostile.seen) == 2


def test_trio_hedged_calls(gateway: GatewaySimulator) -> None:
    a, b = gateway.nodes[0], gateway.nodes[1]
    install([a.base_url, b.base_url], pin=a.base_url, hedge={"enabled": True, "min_samples": 2})
    assert len(trio_chats(1) + trio_chats(1)) == 2  # two answers to learn the p95 from
    gateway.set_faults(a.name, latency=30)  # the pinned node turns slow: the hedge on b answers
    answers = trio_chats(1)
    assert len(answers) == 1 and answers[0]
    assert len(gateway.records_for(b.name)) == 1


def test_trio_async_anthropic_waits_for_max_concurrent(gateway: GatewaySimulator) -> None:
    import anthropic
    import trio
    from helpers import ANTHROPIC_KEY

    install([node.base_url for node in gateway.nodes], limits={"max_concurrent": 1})
    texts: list[str] = []

    async def main() -> None:
        async with anthropic.AsyncAnthropic(api_key=ANTHROPIC_KEY, max_retries=0) as client:

            async def one() -> None:
                message = await client.messages.create(
                    model="claude-sonnet-4-5", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
                )
                texts.append(message.content[0].text)  # type: ignore[union-attr]

            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    for _ in range(3):
                        nursery.start_soon(one)

    trio.run(main)
    assert len(texts) == 3 and all(texts)
