"""Keys and prompts never leave by a side door: a node's redirect, the app's proxy, a node echoing
the key. Every client library the middleware hooks, against small hostile servers on loopback
(``sidedoor_servers``), with the real clients and SDKs."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import anthropic
import httpx
import httpx2
import openai
import pytest
import requests
from helpers import ANTHROPIC_KEY, GATEWAY_KEY, OPENAI_KEY, PROVIDER_KEYS, install_for
from sidedoor_servers import (
    RecordingProxy,
    Scripted,
    Seen,
    answering,
    echoing_401,
    elsewhere,
    redirecting,
    self_signed,
    serving,
)

import yibu_middleware
from yibu_middleware.simulator import GatewaySimulator

CHAT_URL = "https://api.openai.com/v1/chat/completions"
MESSAGES_URL = "https://api.anthropic.com/v1/messages"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "the secret prompt"}]}
MESSAGE = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 10,
    "messages": [{"role": "user", "content": "the secret prompt"}],
}
ALL_KEYS = (*PROVIDER_KEYS, GATEWAY_KEY)


class Outcome(NamedTuple):
    """What the app saw: the status it got (0: an exception instead) and the error text, if any."""

    status: int
    text: str  # the body, or the exception's text


def install(*nodes: Scripted, **settings: Any) -> None:
    yibu_middleware.install({"nodes": [node.base_url for node in nodes], "api_key": GATEWAY_KEY, **settings})


# --- every client, one POST each ----------------------------------------------------------------


def _httpx_sync(lib: Any, url: str, body: Any, headers: dict[str, str], **client: Any) -> Outcome:
    with lib.Client(follow_redirects=True, **client) as session:
        response = session.post(url, json=body, headers=headers)
        return Outcome(response.status_code, response.text)


async def _httpx_async(lib: Any, url: str, body: Any, headers: dict[str, str], **client: Any) -> Outcome:
    async with lib.AsyncClient(follow_redirects=True, **client) as session:
        response = await session.post(url, json=body, headers=headers)
        return Outcome(response.status_code, response.text)


def _requests(url: str, body: Any, headers: dict[str, str], **options: Any) -> Outcome:
    response = requests.post(url, json=body, headers=headers, timeout=10, **options)  # follows redirects by default
    return Outcome(response.status_code, response.text)


async def _aiohttp(url: str, body: Any, headers: dict[str, str], **session: Any) -> Outcome:
    async with aiohttp.ClientSession(**session) as client, client.post(url, json=body, headers=headers) as response:
        return Outcome(response.status, await response.text())  # allow_redirects defaults to True


def _sdk_error(exc: Exception) -> Outcome:
    status = getattr(exc, "status_code", 0)
    return Outcome(status, str(exc))


def _openai(**client: Any) -> Outcome:
    try:
        answer = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0, **client).chat.completions.create(**CHAT)  # type: ignore[call-overload]
    except openai.APIError as exc:
        return _sdk_error(exc)
    return Outcome(200, answer.choices[0].message.content or "")


async def _openai_async(**client: Any) -> Outcome:
    async with openai.AsyncOpenAI(api_key=OPENAI_KEY, max_retries=0, **client) as sdk:
        try:
            answer = await sdk.chat.completions.create(**CHAT)  # type: ignore[call-overload]
        except openai.APIError as exc:
            return _sdk_error(exc)
    return Outcome(200, answer.choices[0].message.content or "")


def _anthropic(**client: Any) -> Outcome:
    try:
        answer = anthropic.Anthropic(api_key=ANTHROPIC_KEY, max_retries=0, **client).messages.create(**MESSAGE)  # type: ignore[call-overload]
    except anthropic.APIError as exc:
        return _sdk_error(exc)
    return Outcome(200, str(answer.content))


async def _anthropic_async(**client: Any) -> Outcome:
    async with anthropic.AsyncAnthropic(api_key=ANTHROPIC_KEY, max_retries=0, **client) as sdk:
        try:
            answer = await sdk.messages.create(**MESSAGE)  # type: ignore[call-overload]
        except anthropic.APIError as exc:
            return _sdk_error(exc)
    return Outcome(200, str(answer.content))


BEARER = {"Authorization": f"Bearer {OPENAI_KEY}"}
AZURE = {"api-key": OPENAI_KEY}  # a credential header httpx keeps on a redirect to another host
ANTHROPIC = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}

# Every client the middleware hooks, as an app would call it: name -> a call giving its Outcome.
CLIENTS: dict[str, Callable[[], Outcome]] = {
    "httpx": lambda: _httpx_sync(httpx, CHAT_URL, CHAT, AZURE),
    "httpx-async": lambda: asyncio.run(_httpx_async(httpx, CHAT_URL, CHAT, AZURE)),
    "httpx2": lambda: _httpx_sync(httpx2, MESSAGES_URL, MESSAGE, ANTHROPIC),
    "httpx2-async": lambda: asyncio.run(_httpx_async(httpx2, MESSAGES_URL, MESSAGE, ANTHROPIC)),
    "openai": _openai,
    "openai-async": lambda: asyncio.run(_openai_async()),
    "openai-aiohttp": lambda: asyncio.run(_openai_async(http_client=openai.DefaultAioHttpClient())),
    "anthropic": _anthropic,
    "anthropic-async": lambda: asyncio.run(_anthropic_async()),
    "anthropic-aiohttp": lambda: asyncio.run(_anthropic_async(http_client=anthropic.DefaultAioHttpClient())),
    "requests": lambda: _requests(MESSAGES_URL, MESSAGE, ANTHROPIC),
    "requests-bearer": lambda: _requests(CHAT_URL, CHAT, BEARER),
    "aiohttp": lambda: asyncio.run(_aiohttp(MESSAGES_URL, MESSAGE, ANTHROPIC)),
    "aiohttp-bearer": lambda: asyncio.run(_aiohttp(CHAT_URL, CHAT, BEARER)),
}


def assert_only_the_gateway_key(seen: list[Seen]) -> None:
    for request in seen:
        for key in PROVIDER_KEYS:
            assert key not in request.text(), f"a provider key reached a node: {request.path}"


# --- item 1: a node's redirect is never followed ------------------------------------------------


@pytest.mark.parametrize("status", [307, 308, 302])
@pytest.mark.parametrize("client", list(CLIENTS))
def test_a_redirecting_node_is_a_failed_attempt_never_followed(client: str, status: int) -> None:
    target = elsewhere()
    with target:
        node = redirecting(target.origin, status)
        with serving(node):
            install(node)
            outcome = CLIENTS[client]()
    assert target.seen == [], f"{client} followed a node's {status} off the gateway"
    assert node.seen, "the node was not tried"
    assert_only_the_gateway_key(node.seen)
    # The app gets the gateway's failure, naming the redirect that was not followed.
    assert outcome.status == 503, outcome
    assert f"{status} redirect to {target.origin}" in outcome.text and "not followed" in outcome.text


@pytest.mark.parametrize("client", ["httpx", "openai", "requests", "aiohttp-bearer", "openai-aiohttp"])
def test_a_redirecting_node_gives_way_to_the_next_node(client: str) -> None:
    """Another node answers: the call succeeds there, and the redirect is one of the nodes tried."""
    target = elsewhere()
    good = Scripted(answering())
    with target, good:
        node = redirecting(target.origin)
        with serving(node):
            install(node, good, pin=node.base_url)  # the redirecting node first
            outcome = CLIENTS[client]()
    assert target.seen == []
    assert outcome.status == 200 and "from the gateway" in outcome.text
    assert len(node.seen) == 1 and len(good.seen) == 1
    assert_only_the_gateway_key([*node.seen, *good.seen])


# --- item 4: a node echoing the key -------------------------------------------------------------


@pytest.mark.parametrize("client", list(CLIENTS))
def test_a_key_echoed_in_a_401_is_masked_in_what_the_app_gets(client: str) -> None:
    node = echoing_401()
    with node:
        install(node)
        outcome = CLIENTS[client]()
    assert outcome.status == 401, outcome
    for key in ALL_KEYS:
        assert key not in outcome.text, f"{client} handed the app a key the node echoed"
    assert "Incorrect API key provided" in outcome.text


@pytest.mark.parametrize("client", ["httpx", "requests", "aiohttp-bearer"])
def test_a_masked_error_body_stays_valid_json(client: str) -> None:
    node = echoing_401()
    with node:
        install(node)
        outcome = CLIENTS[client]()
    document = json.loads(outcome.text)
    assert document["error"]["code"] == "invalid_api_key"
    message = document["error"]["message"]
    assert GATEWAY_KEY not in message and GATEWAY_KEY[:6] not in message  # masked as in the logs


# --- item 14: a one-shot body refused at connect goes to the next node ----------------------------


def _generator() -> Iterator[bytes]:
    """A request body that can be read once only, as an upload or a generator is."""
    yield b'{"model": "gpt-4o-mini", '
    yield b'"messages": [{"role": "user", "content": "the secret prompt"}]}'


def _one_shot(client: str) -> tuple[int, str]:
    headers = {**BEARER, "content-type": "application/json"}
    if client == "requests":
        response = requests.post(CHAT_URL, data=_generator(), headers=headers, timeout=10)
        return response.status_code, response.text
    if client == "aiohttp":

        async def upload() -> AsyncIterator[bytes]:
            for piece in _generator():
                yield piece

        async def send() -> tuple[int, str]:
            async with (
                aiohttp.ClientSession() as session,
                session.post(CHAT_URL, data=upload(), headers=headers) as response,
            ):
                return response.status, await response.text()

        return asyncio.run(send())
    lib = httpx if client == "httpx" else httpx2
    with lib.Client() as session:
        answer = session.post(CHAT_URL, content=_generator(), headers=headers)
        return answer.status_code, answer.text


@pytest.mark.parametrize("client", ["requests", "httpx", "httpx2", "aiohttp"])
def test_a_one_shot_body_refused_at_connect_goes_to_the_next_node(gateway: GatewaySimulator, client: str) -> None:
    gateway.set_faults("a", refuse=True)  # nothing is sent to it: the generator is still whole
    install_for(gateway, pin=gateway.node("a").base_url)
    status, text = _one_shot(client)
    assert status == 200, text
    (record,) = gateway.records
    assert record.node != "a" and record.key == GATEWAY_KEY
    assert record.body["messages"][0]["content"] == "the secret prompt"  # the whole body, once


@pytest.mark.parametrize("client", ["requests", "httpx", "httpx2", "aiohttp"])
def test_a_one_shot_body_a_node_read_is_never_sent_again(gateway: GatewaySimulator, client: str) -> None:
    gateway.set_faults("a", status_override=503)  # the body was sent, and read: it cannot be replayed
    install_for(gateway, pin=gateway.node("a").base_url)
    status, text = _one_shot(client)
    assert status == 503 and "overloaded" in text  # the node's own answer, handed back
    assert [record.node for record in gateway.records] == ["a"]


# --- item 14: a deadline that runs out raises the client's own timeout error ------------------------


def _slow_everywhere(gateway: GatewaySimulator) -> None:
    for node in gateway.nodes:
        gateway.set_faults(node.name, latency=3.0)
    install_for(gateway)


def _timeout_of(client: str) -> BaseException:
    """The exception ``client`` raises for a call with a 0.5 s timeout that no node answers in time."""
    body, headers = CHAT, BEARER
    try:
        if client == "httpx":
            with httpx.Client(timeout=0.5) as session:
                session.post(CHAT_URL, json=body, headers=headers)
        elif client == "httpx2-async":

            async def call() -> None:
                async with httpx2.AsyncClient(timeout=0.5) as session:
                    await session.post(CHAT_URL, json=body, headers=headers)

            asyncio.run(call())
        elif client == "openai":
            openai.OpenAI(api_key=OPENAI_KEY, timeout=0.5, max_retries=0).chat.completions.create(**CHAT)  # type: ignore[call-overload]
        elif client == "anthropic-async":

            async def call() -> None:
                sdk = anthropic.AsyncAnthropic(api_key=ANTHROPIC_KEY, timeout=0.5, max_retries=0)
                await sdk.messages.create(**MESSAGE)  # type: ignore[call-overload]

            asyncio.run(call())
        elif client == "openai-aiohttp":

            async def call() -> None:
                http_client = openai.DefaultAioHttpClient(timeout=0.5)
                sdk = openai.AsyncOpenAI(api_key=OPENAI_KEY, max_retries=0, http_client=http_client)
                await sdk.chat.completions.create(**CHAT)  # type: ignore[call-overload]

            asyncio.run(call())
        elif client == "requests":
            requests.post(CHAT_URL, json=body, headers=headers, timeout=0.5)
        elif client == "aiohttp":

            async def call() -> None:
                async with (
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_read=0.5)) as session,
                    session.post(CHAT_URL, json=body, headers=headers) as response,
                ):
                    await response.read()

            asyncio.run(call())
    except BaseException as exc:
        return exc
    raise AssertionError(f"{client} got an answer")


# The exception each client raises for a request that runs out of time without the middleware.
OWN_TIMEOUT: dict[str, type[BaseException] | tuple[type[BaseException], ...]] = {
    "httpx": httpx.ReadTimeout,
    "httpx2-async": httpx2.ReadTimeout,
    "openai": openai.APITimeoutError,
    "anthropic-async": anthropic.APITimeoutError,
    "openai-aiohttp": openai.APITimeoutError,
    "requests": requests.Timeout,
    "aiohttp": (aiohttp.ServerTimeoutError, TimeoutError),
}


@pytest.mark.parametrize("client", list(OWN_TIMEOUT))
def test_a_deadline_that_runs_out_raises_the_clients_own_timeout(gateway: GatewaySimulator, client: str) -> None:
    _slow_everywhere(gateway)
    error = _timeout_of(client)
    assert isinstance(error, OWN_TIMEOUT[client]), repr(error)
    # Ours (the SDKs raise theirs from it) names the nodes tried, with no key in it.
    ours = error.__cause__ if isinstance(error, (openai.APIError, anthropic.APIError)) else error
    text = str(ours)
    assert "timed out" in text and any(f"127.0.0.1:{node.port}: " in text for node in gateway.nodes), text
    for key in ALL_KEYS:
        assert key not in text


# --- item 2: the proxy for a node is the environment's decision for the node's URL ----------------

PROXY_CLIENTS = ["openai", "openai-aiohttp", "httpx", "httpx-async", "requests", "aiohttp"]


def _via(client: str, **extra: Any) -> Outcome:
    """One chat call with ``client``, which takes its proxy from the environment (aiohttp only
    with trust_env=True), or from ``extra`` (the app's explicit proxy in code)."""
    if client == "openai":
        return _openai(**extra)
    if client == "openai-aiohttp":
        return asyncio.run(_openai_async(http_client=openai.DefaultAioHttpClient()))
    if client == "httpx":
        return _httpx_sync(httpx, CHAT_URL, CHAT, BEARER, **extra)
    if client == "httpx-async":
        return asyncio.run(_httpx_async(httpx, CHAT_URL, CHAT, BEARER, **extra))
    if client == "requests":
        return _requests(CHAT_URL, CHAT, BEARER, **extra)
    return asyncio.run(_aiohttp(CHAT_URL, CHAT, BEARER, trust_env=True, **extra))


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingProxy]:
    with RecordingProxy() as recording:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            monkeypatch.setenv(name, recording.url)
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        yield recording


@pytest.mark.parametrize("client", PROXY_CLIENTS)
def test_no_proxy_covering_the_node_keeps_the_call_off_the_proxy(
    gateway: GatewaySimulator, proxy: RecordingProxy, monkeypatch: pytest.MonkeyPatch, client: str
) -> None:
    """HTTPS_PROXY is the provider host's proxy; NO_PROXY covers the node: the node is reached directly."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    install_for(gateway)
    outcome = _via(client)
    assert outcome.status == 200, outcome
    assert proxy.everything == b"", f"{client} sent the call to the proxy: {proxy.everything[:200]!r}"
    assert [record.key for record in gateway.records] == [GATEWAY_KEY]


@pytest.mark.parametrize("client", PROXY_CLIENTS)
def test_a_node_not_in_no_proxy_goes_through_the_environments_proxy(
    gateway: GatewaySimulator, proxy: RecordingProxy, client: str
) -> None:
    """The environment's decision for the node's URL: through the proxy (an http:// node, so in
    clear text: only the node's URL and the gateway key, never the provider host or its key)."""
    install_for(gateway)
    outcome = _via(client)
    assert outcome.status == 200, outcome
    seen = proxy.everything
    assert b"127.0.0.1:" in seen and b"api.openai.com" not in seen
    for key in PROVIDER_KEYS:
        assert key.encode() not in seen


@pytest.mark.parametrize("client", ["httpx", "requests", "aiohttp"])
def test_an_explicit_proxy_is_kept_for_the_node_unless_no_proxy_covers_it(
    gateway: GatewaySimulator, monkeypatch: pytest.MonkeyPatch, client: str
) -> None:
    """A proxy given in code was the app's choice for its API traffic: the node's too, unless
    the environment's NO_PROXY says the node is reached directly."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    install_for(gateway)
    with RecordingProxy() as explicit:
        options: dict[str, Any] = {
            "httpx": {"proxy": explicit.url},
            "requests": {"proxies": {"http": explicit.url, "https": explicit.url}},
            "aiohttp": {"proxy": explicit.url},
        }[client]
        assert _via(client, **options).status == 200
        assert b"127.0.0.1:" in explicit.everything  # kept for the node
        explicit.received.clear()
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        assert _via(client, **options).status == 200
        assert explicit.everything == b""  # NO_PROXY covers the node: reached directly
    assert [record.key for record in gateway.records] == [GATEWAY_KEY, GATEWAY_KEY]


def _via_tls(client: str, ca: Path) -> Outcome:
    """As ``_via``, with the test's certificate authority trusted (the environment's proxy)."""
    context = ssl.create_default_context(cafile=str(ca))
    if client == "openai":
        return _openai(http_client=openai.DefaultHttpxClient(verify=context))
    if client == "openai-aiohttp":
        return asyncio.run(_openai_async(http_client=openai.DefaultAioHttpClient(verify=context)))
    if client == "httpx":
        return _httpx_sync(httpx, CHAT_URL, CHAT, BEARER, verify=context)
    if client == "httpx-async":
        return asyncio.run(_httpx_async(httpx, CHAT_URL, CHAT, BEARER, verify=context))
    if client == "requests":
        return _requests(CHAT_URL, CHAT, BEARER, verify=str(ca))

    async def with_aiohttp() -> Outcome:
        return await _aiohttp(CHAT_URL, CHAT, BEARER, trust_env=True, connector=aiohttp.TCPConnector(ssl=context))

    return asyncio.run(with_aiohttp())


@pytest.mark.parametrize("client", PROXY_CLIENTS)
def test_a_clear_text_proxy_never_sees_a_key_for_an_https_node(
    proxy: RecordingProxy, tmp_path: Path, client: str
) -> None:
    """An https node through the environment's http:// proxy is tunnelled (CONNECT): the proxy
    carries the node's TLS, and sees its host and port, never a header or the prompt."""
    context, ca = self_signed(tmp_path)
    node = Scripted(answering(), tls=context)
    with node:
        install(node)
        outcome = _via_tls(client, ca)
    assert outcome.status == 200 and "from the gateway" in outcome.text, outcome
    assert [seen.headers.get("authorization") for seen in node.seen] == [f"Bearer {GATEWAY_KEY}"]
    (tunnel,) = proxy.received
    assert tunnel.startswith(f"CONNECT 127.0.0.1:{node.port} ".encode()), tunnel[:100]
    for secret in (*ALL_KEYS, "the secret prompt", "api.openai.com"):
        assert secret.encode() not in tunnel, f"{client}: the proxy saw {secret!r}"


@pytest.mark.parametrize("client", ["httpx", "requests", "aiohttp-bearer"])
def test_a_redirect_with_a_malformed_location_is_a_failed_attempt_too(client: str) -> None:
    node = Scripted(lambda seen: (308, [("location", "http://[::1/v1" + "x" * 300)], b""))
    with node:
        install(node)
        outcome = CLIENTS[client]()
    assert outcome.status == 503 and "308 redirect" in outcome.text and "not followed" in outcome.text
