"""Every client the middleware serves, behind one small interface, for the behaviour suite.

Each ``Client`` is built from the real library (httpx and httpx2 sync and async, the openai
and anthropic SDKs on their default and aiohttp transports, requests, aiohttp, and the
composition transport ``yibu_middleware.Transport()`` / ``AsyncTransport()``) and does what an
app does: send one chat completion, or one streamed, to the provider's URL with the provider's
key, and report what the app saw (``Seen``). ``start`` turns the middleware on the way that
client is meant to get it: ``install()`` for a hooked client, a transport of ours handed to the
client for composition.

A client lives for one test: the library's client (session, pool, SDK object) is made once at
``start`` and reused by every call, as an app's is; async clients run every call on one event
loop (``asyncio.Runner``), so their connections and the transport's state survive between
calls.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import anthropic
import httpx
import httpx2
import openai
import requests
from helpers import ANTHROPIC_KEY, GATEWAY_KEY, OPENAI_KEY, install_for

import yibu_middleware
from yibu_middleware.simulator import GatewaySimulator

Provider = Literal["openai", "anthropic"]

CHAT_URL = "https://api.openai.com/v1/chat/completions"
MESSAGES_URL = "https://api.anthropic.com/v1/messages"
MESSAGES: Any = [{"role": "user", "content": "hi"}]
MODELS: dict[Provider, str] = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-5-5"}
PATHS: dict[Provider, str] = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
TIMEOUT = 10.0  # the clients' timeout unless a test sets one: generous, no other behaviour waits on it


@dataclass
class Seen:
    """What the app saw of one call."""

    status: int
    """The HTTP status the app got; 0 when the call raised with no status (a transport error)."""
    text: str = ""
    """The answer's text (a stream's pieces joined), or the error body / the error's text."""
    pieces: list[str] = field(default_factory=list)
    """A stream's content pieces, in the order the app read them."""
    error: BaseException | None = None
    """What the call (or reading its stream) raised, if anything."""
    body: Any = None
    """An error answer's JSON body, as the app could read it (None when it was not JSON)."""
    headers: dict[str, str] = field(default_factory=dict)
    """An error answer's headers, names lower-cased (what an SDK's error carries in ``response``)."""

    @property
    def error_text(self) -> str:
        """The error's text with its causes: an SDK wraps the transport's error, which names the node."""
        parts, error, seen = [], self.error, set()
        while error is not None and id(error) not in seen:
            seen.add(id(error))
            parts.append(f"{type(error).__name__}: {error}")
            error = error.__cause__ or error.__context__
        return " <- ".join(parts)


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def content_of(provider: Provider, answer: Any) -> str:
    """The text of a (non-streamed) chat answer's JSON."""
    if provider == "openai":
        return str(answer["choices"][0]["message"]["content"])
    return "".join(block.get("text", "") for block in answer["content"])


def pieces_of(provider: Provider, lines: Iterable[str]) -> Iterable[str]:
    """The content pieces of a stream, from its SSE lines as a plain client reads them."""
    for line in lines:
        if not line.startswith("data:") or line.strip() == "data: [DONE]":
            continue
        event = json.loads(line.removeprefix("data:"))
        if provider == "openai":
            if event.get("choices") and event["choices"][0]["delta"].get("content"):
                yield event["choices"][0]["delta"]["content"]
        elif event.get("type") == "content_block_delta":
            yield event["delta"].get("text", "")


def request_for(provider: Provider, *, stream: bool = False) -> tuple[str, dict[str, Any], dict[str, str]]:
    """URL, JSON body and headers of a plain client's call, as an app written for the provider sends it."""
    body: dict[str, Any] = {"model": MODELS[provider], "messages": MESSAGES}
    if provider == "openai":
        headers = {"Authorization": f"Bearer {OPENAI_KEY}"}
        url = CHAT_URL
    else:
        headers = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}
        body["max_tokens"] = 50
        url = MESSAGES_URL
    if stream:
        body["stream"] = True
    return url, body, headers


class Client:
    """One kind of client. Subclasses say how it sends; ``start`` turns the middleware on for it."""

    sdk = False  # an SDK raises its own errors for error answers; a plain client hands back the response
    composed = False  # gets a transport of ours instead of ``install()``
    sdk_traces = False  # the SDK makes its own GenAI span (the anthropic SDK's built-in tracing)

    def __init__(self, name: str, provider: Provider) -> None:
        self.name = name
        self.provider = provider

    def __repr__(self) -> str:
        return self.name

    def start(
        self,
        gateway: GatewaySimulator,
        *,
        sdk_retries: int = 0,
        app_headers: dict[str, str] | None = None,
        timeout: float = TIMEOUT,
        **settings: Any,
    ) -> Client:
        """Turn the middleware on with ``settings`` (as for ``install_for``) and make the client.
        ``sdk_retries``: the SDK's own ``max_retries`` (an SDK's default is 2; 0 keeps a test short).
        ``app_headers``: headers the app adds to every request (an SDK's ``default_headers``).
        ``timeout``: the client's read timeout (an SDK's ``timeout``), which is the call's deadline."""
        self.gateway = gateway
        self.timeout = timeout
        self.sdk_retries = sdk_retries
        self.app_headers = app_headers or {}
        if self.composed:
            self.settings = {"nodes": [node.base_url for node in gateway.nodes], "api_key": GATEWAY_KEY, **settings}
        else:
            install_for(gateway, **settings)
        self.open()
        return self

    def request(self, *, stream: bool = False) -> tuple[str, dict[str, Any], dict[str, str]]:
        """URL, JSON body and headers of a plain client's call, the app's own headers added."""
        url, body, headers = request_for(self.provider, stream=stream)
        return url, body, {**headers, **self.app_headers}

    @property
    def model(self) -> str:
        return MODELS[self.provider]

    @property
    def path(self) -> str:
        """The path the gateway should receive this client's calls on."""
        return PATHS[self.provider]

    def open(self) -> None:
        """Make the library's client (after the middleware is on)."""

    def chat(self) -> Seen:
        raise NotImplementedError

    def stream(self) -> Seen:
        raise NotImplementedError

    def close(self) -> None:
        pass


class AsyncClient(Client):
    """An async client: every call runs on one event loop kept for the client's life."""

    _runner: asyncio.Runner | None = None

    def _run(self, make: Callable[[], Any]) -> Any:
        if self._runner is None:
            self._runner = asyncio.Runner()
        return self._runner.run(make())

    def open(self) -> None:
        self._run(self.aopen)

    def chat(self) -> Seen:
        return self._run(self.achat)  # type: ignore[no-any-return]

    def stream(self) -> Seen:
        return self._run(self.astream)  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._runner is not None:
            self._runner.run(self.aclose())
            self._runner.close()
            self._runner = None

    async def aopen(self) -> None:
        pass

    async def achat(self) -> Seen:
        raise NotImplementedError

    async def astream(self) -> Seen:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


# --- plain HTTP clients ---------------------------------------------------------------------------


def _lower(headers: Any) -> dict[str, str]:
    return {str(name).lower(): str(value) for name, value in headers.items()}


def _plain_answer(provider: Provider, status: int, text: str, headers: Any) -> Seen:
    if status == 200:
        return Seen(status, content_of(provider, json.loads(text)))
    return Seen(status, text, body=_json_or_none(text), headers=_lower(headers))


class HttpxClient(Client):
    """httpx or httpx2's ``Client``, hooked (``library``: the module) or over a given transport."""

    def __init__(self, name: str, provider: Provider, library: Any, transport: Callable[[Client], Any] | None = None):
        super().__init__(name, provider)
        self.library, self.transport = library, transport
        self.composed = transport is not None

    def open(self) -> None:
        extra: dict[str, Any] = {"transport": self.transport(self)} if self.transport else {}
        self.http = self.library.Client(timeout=self.timeout, **extra)

    def chat(self) -> Seen:
        url, body, headers = self.request()
        try:
            response = self.http.post(url, json=body, headers=headers)
        except self.library.HTTPError as exc:
            return Seen(0, str(exc), error=exc)
        return _plain_answer(self.provider, response.status_code, response.text, response.headers)

    def stream(self) -> Seen:
        url, body, headers = self.request(stream=True)
        with self.http.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                return _plain_answer(self.provider, response.status_code, response.read().decode(), response.headers)
            seen = Seen(200)
            try:
                seen.pieces.extend(pieces_of(self.provider, response.iter_lines()))
            except self.library.HTTPError as exc:
                seen.error = exc
        seen.text = "".join(seen.pieces)
        return seen

    def close(self) -> None:
        self.http.close()


class AsyncHttpxClient(AsyncClient):
    """httpx or httpx2's ``AsyncClient``, hooked."""

    def __init__(self, name: str, provider: Provider, library: Any) -> None:
        super().__init__(name, provider)
        self.library = library

    async def aopen(self) -> None:
        self.http = self.library.AsyncClient(timeout=self.timeout)

    async def achat(self) -> Seen:
        url, body, headers = self.request()
        try:
            response = await self.http.post(url, json=body, headers=headers)
        except self.library.HTTPError as exc:
            return Seen(0, str(exc), error=exc)
        return _plain_answer(self.provider, response.status_code, response.text, response.headers)

    async def astream(self) -> Seen:
        url, body, headers = self.request(stream=True)
        async with self.http.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                return _plain_answer(
                    self.provider, response.status_code, (await response.aread()).decode(), response.headers
                )
            seen = Seen(200)
            try:
                async for line in response.aiter_lines():
                    seen.pieces.extend(pieces_of(self.provider, [line]))
            except self.library.HTTPError as exc:
                seen.error = exc
        seen.text = "".join(seen.pieces)
        return seen

    async def aclose(self) -> None:
        await self.http.aclose()


class RequestsClient(Client):
    """A ``requests.Session``, hooked; a stream read with ``iter_lines``."""

    def open(self) -> None:
        self.session = requests.Session()

    def chat(self) -> Seen:
        url, body, headers = self.request()
        try:
            response = self.session.post(url, json=body, headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:
            return Seen(0, str(exc), error=exc)
        return _plain_answer(self.provider, response.status_code, response.text, response.headers)

    def stream(self) -> Seen:
        url, body, headers = self.request(stream=True)
        with self.session.post(url, json=body, headers=headers, timeout=self.timeout, stream=True) as response:
            if response.status_code != 200:
                return _plain_answer(self.provider, response.status_code, response.text, response.headers)
            seen = Seen(200)
            try:
                for line in response.iter_lines():
                    seen.pieces.extend(pieces_of(self.provider, [line.decode()]))
            except requests.RequestException as exc:
                seen.error = exc
        seen.text = "".join(seen.pieces)
        return seen

    def close(self) -> None:
        self.session.close()


class AiohttpClient(AsyncClient):
    """An ``aiohttp.ClientSession``, hooked; a stream read line by line (``async for``)."""

    async def aopen(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT, sock_read=self.timeout))

    async def achat(self) -> Seen:
        url, body, headers = self.request()
        try:
            async with self.session.post(url, json=body, headers=headers) as response:
                return _plain_answer(self.provider, response.status, await response.text(), response.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:  # aiohttp's time limits raise TimeoutErrors
            return Seen(0, str(exc), error=exc)

    async def astream(self) -> Seen:
        url, body, headers = self.request(stream=True)
        async with self.session.post(url, json=body, headers=headers) as response:
            if response.status != 200:
                return _plain_answer(self.provider, response.status, await response.text(), response.headers)
            seen = Seen(200)
            try:
                async for line in response.content:
                    seen.pieces.extend(pieces_of(self.provider, [line.decode()]))
            except aiohttp.ClientError as exc:
                seen.error = exc
        seen.text = "".join(seen.pieces)
        return seen

    async def aclose(self) -> None:
        await self.session.close()


# --- the SDKs -------------------------------------------------------------------------------------


def _sdk_error(exc: openai.APIError | anthropic.APIError) -> Seen:
    """An SDK's error: its status and the whole body of the answer it raised for (the SDKs keep
    only a part of it in ``exc.body``, and not the same part)."""
    response = getattr(exc, "response", None)
    if response is None:
        return Seen(0, str(exc), error=exc)
    return Seen(
        response.status_code, str(exc), error=exc, body=_json_or_none(response.text), headers=_lower(response.headers)
    )


def _openai_piece(chunk: Any) -> str:
    return (chunk.choices[0].delta.content or "") if chunk.choices else ""


def _anthropic_piece(event: Any) -> str:
    return event.delta.text if event.type == "content_block_delta" else ""


class OpenAIClient(Client):
    """``openai.OpenAI``: its default client (httpx2), or one over a transport of ours."""

    sdk = True

    def __init__(self, name: str, transport: Callable[[Client], Any] | None = None) -> None:
        super().__init__(name, "openai")
        self.transport = transport
        self.composed = transport is not None

    def open(self) -> None:
        extra: dict[str, Any] = {"http_client": httpx2.Client(transport=self.transport(self))} if self.transport else {}
        self.sdk_client = openai.OpenAI(
            api_key=OPENAI_KEY,
            max_retries=self.sdk_retries,
            timeout=self.timeout,
            default_headers=self.app_headers,
            **extra,
        )

    def chat(self) -> Seen:
        try:
            answer = self.sdk_client.chat.completions.create(model=self.model, messages=MESSAGES)
        except openai.APIError as exc:
            return _sdk_error(exc)
        return Seen(200, answer.choices[0].message.content or "")

    def stream(self) -> Seen:
        try:
            stream = self.sdk_client.chat.completions.create(model=self.model, messages=MESSAGES, stream=True)
        except openai.APIError as exc:
            return _sdk_error(exc)
        seen = Seen(200)
        try:
            for chunk in stream:
                if piece := _openai_piece(chunk):
                    seen.pieces.append(piece)
        except (openai.APIError, httpx2.HTTPError) as exc:  # a transport error mid-stream passes through
            seen.error = exc
        seen.text = "".join(seen.pieces)
        return seen

    def close(self) -> None:
        self.sdk_client.close()


class AsyncOpenAIClient(AsyncClient):
    """``openai.AsyncOpenAI``: its default client (httpx2) or its aiohttp one (``DefaultAioHttpClient``)."""

    sdk = True

    def __init__(self, name: str, http_client: Callable[[], Any] | None = None) -> None:
        super().__init__(name, "openai")
        self.http_client = http_client

    async def aopen(self) -> None:
        extra: dict[str, Any] = {"http_client": self.http_client()} if self.http_client else {}
        self.sdk_client = openai.AsyncOpenAI(
            api_key=OPENAI_KEY,
            max_retries=self.sdk_retries,
            timeout=self.timeout,
            default_headers=self.app_headers,
            **extra,
        )

    async def achat(self) -> Seen:
        try:
            answer = await self.sdk_client.chat.completions.create(model=self.model, messages=MESSAGES)
        except openai.APIError as exc:
            return _sdk_error(exc)
        return Seen(200, answer.choices[0].message.content or "")

    async def astream(self) -> Seen:
        try:
            stream = await self.sdk_client.chat.completions.create(model=self.model, messages=MESSAGES, stream=True)
        except openai.APIError as exc:
            return _sdk_error(exc)
        seen = Seen(200)
        try:
            async for chunk in stream:
                if piece := _openai_piece(chunk):
                    seen.pieces.append(piece)
        except (openai.APIError, httpx2.HTTPError) as exc:
            seen.error = exc
        seen.text = "".join(seen.pieces)
        return seen

    async def aclose(self) -> None:
        await self.sdk_client.close()


class AnthropicClient(Client):
    """``anthropic.Anthropic`` on its default client (httpx2)."""

    sdk = sdk_traces = True

    def __init__(self, name: str) -> None:
        super().__init__(name, "anthropic")

    def open(self) -> None:
        self.sdk_client = anthropic.Anthropic(
            api_key=ANTHROPIC_KEY, max_retries=self.sdk_retries, timeout=self.timeout, default_headers=self.app_headers
        )

    def chat(self) -> Seen:
        try:
            message = self.sdk_client.messages.create(model=self.model, max_tokens=50, messages=MESSAGES)
        except anthropic.APIError as exc:
            return _sdk_error(exc)
        return Seen(200, "".join(getattr(block, "text", "") for block in message.content))

    def stream(self) -> Seen:
        try:
            stream = self.sdk_client.messages.create(model=self.model, max_tokens=50, messages=MESSAGES, stream=True)
        except anthropic.APIError as exc:
            return _sdk_error(exc)
        seen = Seen(200)
        try:
            for event in stream:
                if piece := _anthropic_piece(event):
                    seen.pieces.append(piece)
        except (anthropic.APIError, httpx2.HTTPError) as exc:
            seen.error = exc
        seen.text = "".join(seen.pieces)
        return seen

    def close(self) -> None:
        self.sdk_client.close()


class AsyncAnthropicClient(AsyncClient):
    """``anthropic.AsyncAnthropic``: default client (httpx2), its aiohttp one, or over ``AsyncTransport``."""

    sdk = sdk_traces = True

    def __init__(
        self,
        name: str,
        http_client: Callable[[], Any] | None = None,
        transport: Callable[[Client], Any] | None = None,
    ) -> None:
        super().__init__(name, "anthropic")
        self.http_client, self.transport = http_client, transport
        self.composed = transport is not None

    async def aopen(self) -> None:
        extra: dict[str, Any] = {}
        if self.http_client:
            extra["http_client"] = self.http_client()
        elif self.transport:
            extra["http_client"] = httpx2.AsyncClient(transport=self.transport(self))
        self.sdk_client = anthropic.AsyncAnthropic(
            api_key=ANTHROPIC_KEY,
            max_retries=self.sdk_retries,
            timeout=self.timeout,
            default_headers=self.app_headers,
            **extra,
        )

    async def achat(self) -> Seen:
        try:
            message = await self.sdk_client.messages.create(model=self.model, max_tokens=50, messages=MESSAGES)
        except anthropic.APIError as exc:
            return _sdk_error(exc)
        return Seen(200, "".join(getattr(block, "text", "") for block in message.content))

    async def astream(self) -> Seen:
        try:
            stream = await self.sdk_client.messages.create(
                model=self.model, max_tokens=50, messages=MESSAGES, stream=True
            )
        except anthropic.APIError as exc:
            return _sdk_error(exc)
        seen = Seen(200)
        try:
            async for event in stream:
                if piece := _anthropic_piece(event):
                    seen.pieces.append(piece)
        except (anthropic.APIError, httpx2.HTTPError) as exc:
            seen.error = exc
        seen.text = "".join(seen.pieces)
        return seen

    async def aclose(self) -> None:
        await self.sdk_client.close()


# --- the list -------------------------------------------------------------------------------------


def _sync_transport(library: Literal["httpx2", "httpx"]) -> Callable[[Client], Any]:
    return lambda client: yibu_middleware.Transport(client.settings, library=library)


def _async_transport(client: Client) -> Any:
    return yibu_middleware.AsyncTransport(client.settings)


def all_clients() -> list[Client]:
    """A fresh instance of every client kind (the plain ones alternate between the two providers'
    formats, so every behaviour is seen in both)."""
    return [
        HttpxClient("httpx", "openai", httpx),
        AsyncHttpxClient("httpx-async", "openai", httpx),
        HttpxClient("httpx2", "anthropic", httpx2),
        AsyncHttpxClient("httpx2-async", "anthropic", httpx2),
        OpenAIClient("openai"),
        AsyncOpenAIClient("openai-async"),
        AsyncOpenAIClient("openai-aiohttp", http_client=openai.DefaultAioHttpClient),
        AnthropicClient("anthropic"),
        AsyncAnthropicClient("anthropic-async"),
        AsyncAnthropicClient("anthropic-aiohttp", http_client=anthropic.DefaultAioHttpClient),
        RequestsClient("requests", "openai"),
        AiohttpClient("aiohttp", "anthropic"),
        OpenAIClient("transport-openai", transport=_sync_transport("httpx2")),
        AsyncAnthropicClient("transport-anthropic-async", transport=_async_transport),
        HttpxClient("transport-httpx", "openai", httpx, transport=_sync_transport("httpx")),
    ]


CLIENT_NAMES = [client.name for client in all_clients()]


def make(name: str) -> Client:
    (client,) = [client for client in all_clients() if client.name == name]
    return client
