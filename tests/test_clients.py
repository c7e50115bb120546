"""requests and aiohttp, hooked in place, against the simulator over loopback: the same routing,
node choice, retries, streams, redaction and spans as the httpx family."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any, NamedTuple

import aiohttp
import openai
import pytest
import requests
from helpers import ANTHROPIC_KEY, GATEWAY_KEY, OPENAI_KEY, PROVIDER_KEYS, assert_no_provider_key, install_for
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import yibu_middleware
from yibu_middleware.hooks import HOOKS
from yibu_middleware.simulator import GatewaySimulator

CHAT_URL = "https://api.openai.com/v1/chat/completions"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**CHAT, "stream": True}
OPENAI = {"Authorization": f"Bearer {OPENAI_KEY}"}
CLIENTS = ["requests", "aiohttp"]


class Answer(NamedTuple):
    """What the app saw: status, headers (lower-cased), the body pieces it read, and the error
    reading them raised, if any."""

    status: int
    headers: dict[str, str]
    pieces: list[bytes]
    error: Exception | None

    @property
    def body(self) -> bytes:
        return b"".join(self.pieces)

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def events(self) -> list[str]:
        return [line for line in self.body.decode().splitlines() if line.startswith("data:")]


def post(
    client: str, url: str = CHAT_URL, body: Any = None, headers: dict[str, str] | None = None, **extra: Any
) -> Answer:
    """POST with the named client, reading the body chunk by chunk as it comes."""
    body = CHAT if body is None else body
    headers = OPENAI if headers is None else headers
    if client == "requests":
        return _post_requests(url, body, headers, **extra)
    return asyncio.run(_post_aiohttp(url, body, headers, **extra))


def _post_requests(url: str, body: Any, headers: dict[str, str], timeout: float = 10) -> Answer:
    pieces: list[bytes] = []
    with requests.post(url, json=body, headers=headers, stream=True, timeout=timeout) as response:
        try:
            for piece in response.iter_content(None):
                pieces.append(piece)
        except requests.RequestException as exc:
            return Answer(response.status_code, _lower(response.headers), pieces, exc)
    return Answer(response.status_code, _lower(response.headers), pieces, None)


async def _post_aiohttp(url: str, body: Any, headers: dict[str, str], timeout: float = 10) -> Answer:
    pieces: list[bytes] = []
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_read=timeout)) as session,
        session.post(url, json=body, headers=headers) as response,
    ):
        try:
            async for piece in response.content.iter_any():
                pieces.append(piece)
        except aiohttp.ClientError as exc:
            return Answer(response.status, _lower(response.headers), pieces, exc)
    return Answer(response.status, _lower(response.headers), pieces, None)


def _lower(headers: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def content_of(answer: Answer) -> str:
    """The text of a chat completion, streamed or not."""
    if not answer.events:
        return str(answer.json()["choices"][0]["message"]["content"])
    text = ""
    for event in answer.events:
        if event != "data: [DONE]":
            choices = json.loads(event.removeprefix("data:"))["choices"]
            text += (choices[0]["delta"].get("content") or "") if choices else ""
    return text


# --- routing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_routed_with_the_gateway_key_and_never_the_providers(gateway: GatewaySimulator, client: str) -> None:
    install_for(gateway)
    answer = post(client, CHAT_URL + "?trace=1")
    assert answer.status == 200 and "Hello from yibu simulator" in content_of(answer)
    anthropic = post(
        client,
        "https://api.anthropic.com/v1/messages",
        {"model": "claude-sonnet-5-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
        {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"},
    )
    assert anthropic.status == 200 and anthropic.json()["type"] == "message"
    first, second = gateway.records
    assert (first.path, first.query, first.key_header) == ("/v1/chat/completions", "trace=1", "authorization")
    assert (second.path, second.key_header) == ("/v1/messages", "x-api-key")
    assert {first.key, second.key} == {GATEWAY_KEY}
    assert_no_provider_key(gateway)


@pytest.mark.parametrize("client", CLIENTS)
def test_model_alias_rewrites_the_body(gateway: GatewaySimulator, client: str) -> None:
    install_for(gateway, model_aliases={"gpt-4": "gpt-5.2"})
    answer = post(client, body={"model": "gpt-4", "messages": [{"role": "user", "content": "é"}]})
    assert answer.json()["model"] == "gpt-5.2"
    (record,) = gateway.records
    assert record.model == "gpt-5.2" and record.body["messages"][0]["content"] == "é"


def test_requests_session_headers_get_and_response_url(gateway: GatewaySimulator) -> None:
    install_for(gateway)
    with requests.Session() as session:
        session.headers.update(OPENAI)
        response = session.get("https://api.openai.com/v1/models", timeout=10)
    assert response.status_code == 200 and response.json()["data"]
    assert response.url == "https://api.openai.com/v1/models"  # the app's URL, as with httpx
    (record,) = gateway.records
    assert record.method == "GET" and record.key == GATEWAY_KEY


async def test_every_aiohttp_way_of_sending_is_routed(gateway: GatewaySimulator) -> None:
    install_for(gateway)
    async with aiohttp.ClientSession(headers=OPENAI) as session:
        async with session.post(CHAT_URL, json=CHAT) as response:
            assert (await response.json())["object"] == "chat.completion"
        response = await session.post(CHAT_URL, json=CHAT)
        assert response.status == 200 and (await response.text()).startswith("{")
        response.release()
        async with session.request("POST", CHAT_URL, data=json.dumps(CHAT)) as response:
            assert response.status == 200
        async with session.get("https://api.openai.com/v1/models") as response:
            assert (await response.json())["data"]
    async with aiohttp.request("POST", CHAT_URL, json=CHAT, headers=OPENAI) as response:
        assert response.status == 200
        assert str(response.url) == CHAT_URL  # the app's URL
    assert len(gateway.records) == 5 and {r.key for r in gateway.records} == {GATEWAY_KEY}
    assert_no_provider_key(gateway)


@pytest.mark.parametrize("client", CLIENTS)
def test_unrouted_host_passes_untouched(gateway: GatewaySimulator, client: str) -> None:
    install_for(gateway)
    answer = post(client, f"{gateway.node('b').base_url}/chat/completions", headers={"Authorization": "Bearer x"})
    assert answer.status == 401  # sent as the app sent it: the key was not swapped
    (record,) = gateway.records
    assert record.node == "b" and record.key == "x"


# --- failover and giving up ---------------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("fault", [{"refuse": True}, {"error_rate": 1.0}], ids=["refused", "503"])
def test_fails_over_to_another_node(gateway: GatewaySimulator, client: str, fault: dict[str, Any]) -> None:
    gateway.set_faults("a", **fault)
    install_for(gateway, pin=gateway.node("a").base_url)  # every call tries "a" first
    answer = post(client)
    assert answer.status == 200 and "'a'" not in content_of(answer)
    assert [r.status for r in gateway.records if r.node == "a"] == ([] if "refuse" in fault else [503])
    assert gateway.records[-1].node != "a"


@pytest.mark.parametrize("client", CLIENTS)
def test_every_node_down_answers_503_in_the_providers_format(gateway: GatewaySimulator, client: str) -> None:
    for node in gateway.nodes:
        gateway.set_faults(node.name, refuse=True)
    install_for(gateway)
    answer = post(client)
    assert answer.status == 503 and answer.headers["x-should-retry"] == "false"
    message = answer.json()["error"]["message"]
    assert all(f"127.0.0.1:{node.port}: connection failed" in message for node in gateway.nodes)
    assert "Connection refused" in message or "Connect call failed" in message
    assert OPENAI_KEY not in message and GATEWAY_KEY not in message
    anthropic = post(
        client,
        "https://api.anthropic.com/v1/messages",
        {"model": "claude-sonnet-5-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
        {"x-api-key": ANTHROPIC_KEY},
    )
    assert anthropic.status == 503 and anthropic.json()["type"] == "error"  # Anthropic's own shape


def test_requests_give_up_is_a_normal_error_response(gateway: GatewaySimulator) -> None:
    for node in gateway.nodes:
        gateway.set_faults(node.name, refuse=True)
    install_for(gateway)
    response = requests.post(CHAT_URL, json=CHAT, headers=OPENAI, timeout=10)
    assert response.json()["error"]["code"] == "yibu_no_answer"
    with pytest.raises(requests.HTTPError) as caught:
        response.raise_for_status()
    assert caught.value.response is not None and caught.value.response.status_code == 503


async def test_aiohttp_give_up_is_a_normal_error_response(gateway: GatewaySimulator) -> None:
    for node in gateway.nodes:
        gateway.set_faults(node.name, refuse=True)
    install_for(gateway)
    async with aiohttp.ClientSession(headers=OPENAI) as session:
        async with session.post(CHAT_URL, json=CHAT) as response:
            assert isinstance(response, aiohttp.ClientResponse) and not response.ok
            assert (await response.json())["error"]["code"] == "yibu_no_answer"
            assert response.headers["x-should-retry"] == "false"
            with pytest.raises(aiohttp.ClientResponseError) as caught:
                response.raise_for_status()
            assert caught.value.status == 503
        response = await session.post(CHAT_URL, json=CHAT)
        assert (await response.content.read()).startswith(b'{"error"')
        response.release()
    async with aiohttp.ClientSession(headers=OPENAI, raise_for_status=True) as session:
        with pytest.raises(aiohttp.ClientResponseError):
            await session.post(CHAT_URL, json=CHAT)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_refused_request_is_handed_back_once_marked_not_to_retry(gateway: GatewaySimulator, client: str) -> None:
    body = {"error": {"message": "no quota", "type": "x", "code": "insufficient_user_quota"}}
    for node in gateway.nodes:
        gateway.set_faults(node.name, status_override=403, status_body=body)
    install_for(gateway)
    answer = post(client)
    assert answer.status == 403 and answer.headers["x-should-retry"] == "false"
    assert answer.json()["error"]["code"] == "insufficient_user_quota" and len(gateway.records) == 1


@pytest.mark.parametrize("client", CLIENTS)
def test_429_everywhere_is_handed_back_with_the_nodes_tried(gateway: GatewaySimulator, client: str) -> None:
    for node in gateway.nodes:
        gateway.set_faults(node.name, rate_limit_rate=1.0, retry_after=0.05)
    install_for(gateway)
    answer = post(client)
    assert answer.status == 429 and answer.headers["x-should-retry"] == "false"
    assert "yibu-middleware tried:" in answer.json()["error"]["message"]
    assert {r.node for r in gateway.records} == {"a", "b", "c"}  # another node each time, no waiting


@pytest.mark.parametrize("client", CLIENTS)
def test_a_call_over_its_deadline_raises_the_clients_timeout(gateway: GatewaySimulator, client: str) -> None:
    for node in gateway.nodes:
        gateway.set_faults(node.name, latency=2.0)
    install_for(gateway)
    expected = requests.Timeout if client == "requests" else aiohttp.ServerTimeoutError
    with pytest.raises(expected, match="timed out: no gateway node answered in time"):
        post(client, timeout=0.5)


def test_requests_one_shot_body_is_not_retried(gateway: GatewaySimulator) -> None:
    gateway.set_faults("a", latency=5.0)  # the body is sent, then the node keeps it: not to be sent again
    install_for(gateway, pin=gateway.node("a").base_url)

    def body() -> Iterator[bytes]:
        yield json.dumps(CHAT).encode()

    with pytest.raises(requests.Timeout, match="one-shot stream"):
        requests.post(CHAT_URL, data=body(), headers={**OPENAI, "content-type": "application/json"}, timeout=(5, 0.3))
    gateway.set_faults("a", latency=0.0)
    response = requests.post(CHAT_URL, data=body(), headers={**OPENAI, "content-type": "application/json"}, timeout=5)
    assert response.status_code == 200 and gateway.records[-1].key == GATEWAY_KEY  # forwarded as it is


# --- streams ----------------------------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_stream_passes_whole(gateway: GatewaySimulator, client: str) -> None:
    install_for(gateway)
    answer = post(client, body=STREAM)
    assert answer.error is None and answer.events[-1] == "data: [DONE]"
    assert content_of(answer).startswith("Hello from yibu simulator")
    (record,) = gateway.records
    assert record.stream and record.headers["accept-encoding"] == "identity"  # watched, so asked uncompressed


@pytest.mark.parametrize("client", CLIENTS)
def test_stream_passes_chunk_by_chunk_and_a_cut_after_content_raises(gateway: GatewaySimulator, client: str) -> None:
    """Cut after three events: the three arrive before the error, so nothing was held back,
    and the cut is an error naming the node, never a silently shorter answer."""
    gateway.set_faults("a", cut_stream_after=3)
    install_for(gateway, pin=gateway.node("a").base_url)
    answer = post(client, body=STREAM)
    assert answer.status == 200 and len(answer.events) == 3
    assert isinstance(answer.error, requests.exceptions.ChunkedEncodingError | aiohttp.ClientPayloadError)
    assert "broke after its first content" in str(answer.error)
    assert f"127.0.0.1:{gateway.node('a').port}" in str(answer.error)
    assert len(gateway.records) == 1  # not retried after content


@pytest.mark.parametrize("client", CLIENTS)
def test_stream_ending_without_its_final_event_raises(gateway: GatewaySimulator, client: str) -> None:
    gateway.set_faults("a", truncate_stream_after=3)
    install_for(gateway, pin=gateway.node("a").base_url)
    answer = post(client, body=STREAM)
    assert answer.error is not None and "ended before its final event" in str(answer.error)


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(
    "fault",
    [{"cut_stream_after": 1}, {"stream_error_after": 1}, {"truncate_stream_after": 1}],
    ids=["cut", "error-event", "no-content"],
)
def test_stream_failing_before_content_is_retried_invisibly(
    gateway: GatewaySimulator, client: str, fault: dict[str, int]
) -> None:
    gateway.set_faults("a", **fault)  # the role chunk only: no content yet
    install_for(gateway, pin=gateway.node("a").base_url)
    answer = post(client, body=STREAM)
    assert answer.error is None and answer.events[-1] == "data: [DONE]"
    assert content_of(answer).startswith("Hello from yibu simulator node") and "'a'" not in content_of(answer)
    assert gateway.records[0].node == "a" and len(gateway.records) == 2


@pytest.mark.parametrize("client", CLIENTS)
def test_stalled_stream_is_retried_after_first_token_timeout(gateway: GatewaySimulator, client: str) -> None:
    gateway.set_faults("a", stall_stream_after=1, stall_max=5.0)
    install_for(gateway, pin=gateway.node("a").base_url, stream={"first_token_timeout": 0.3})
    answer = post(client, body=STREAM)
    assert content_of(answer).startswith("Hello") and gateway.records[-1].node != "a"


def test_requests_stream_every_way_of_reading(gateway: GatewaySimulator) -> None:
    gateway.set_faults("a", cut_stream_after=1)  # each call is retried, so what was read is replayed
    install_for(gateway, pin=gateway.node("a").base_url)
    whole = []
    for read in ("iter_content", "iter_lines", "content", "raw"):
        with requests.post(CHAT_URL, json=STREAM, headers=OPENAI, stream=read != "content", timeout=10) as response:
            if read == "iter_content":
                body = b"".join(response.iter_content(7))
            elif read == "iter_lines":
                body = b"\n".join(response.iter_lines()) + b"\n"
            elif read == "content":
                body = response.content
            else:
                body = response.raw.read(5) + response.raw.read()
        whole.append(body.replace(b"\n\n", b"\n"))
    assert all(body.endswith(b"data: [DONE]\n") for body in whole)
    assert len({body.count(b"data:") for body in whole}) == 1


@pytest.mark.parametrize("read", ["iter_any", "iter_chunked", "readline", "lines", "read", "text", "readexactly"])
async def test_aiohttp_stream_every_way_of_reading(gateway: GatewaySimulator, read: str) -> None:
    gateway.set_faults("a", cut_stream_after=1)  # retried, so what was read before is replayed
    install_for(gateway, pin=gateway.node("a").base_url)
    async with (
        aiohttp.ClientSession(headers=OPENAI) as session,
        session.post(CHAT_URL, json=STREAM) as response,
    ):
        content = response.content
        if read == "iter_any":
            body = b"".join([piece async for piece in content.iter_any()])
        elif read == "iter_chunked":
            pieces = [piece async for piece in content.iter_chunked(7)]
            assert max(len(piece) for piece in pieces) <= 7
            body = b"".join(pieces)
        elif read == "readline":
            body = b""
            while line := await content.readline():
                body += line
        elif read == "lines":
            body = b"".join([line async for line in content])
        elif read == "read":
            body = await response.read()
        elif read == "text":
            body = (await response.text()).encode()
        else:
            body = await content.readexactly(5) + await content.read()
    assert body.endswith(b"data: [DONE]\n\n") and len(gateway.records) == 2
    text = content_of(Answer(200, {}, [body], None))
    assert text.startswith("Hello from yibu simulator node") and "'a'" not in text


# --- no double handling -----------------------------------------------------------------------


async def test_openai_aiohttp_client_is_handled_once(
    gateway: GatewaySimulator, caplog: pytest.LogCaptureFixture
) -> None:
    """openai's DefaultAioHttpClient is an httpx2 client sending over aiohttp: the httpx2-family hook
    routes the call, and the request it sends to the node passes our aiohttp middleware untouched."""
    gateway.set_faults("a", refuse=True)
    install_for(gateway, pin=gateway.node("a").base_url)
    caplog.set_level(logging.INFO, logger="yibu_middleware")
    async with openai.AsyncOpenAI(api_key=OPENAI_KEY, http_client=openai.DefaultAioHttpClient(), max_retries=0) as c:
        for _ in range(3):
            await c.chat.completions.create(**CHAT)  # type: ignore[call-overload]
        stream = await c.chat.completions.create(**STREAM)  # type: ignore[call-overload]
        assert [chunk async for chunk in stream]
    assert len(gateway.records) == 4  # one attempt each reached a node: handled once, never twice
    assert {r.key for r in gateway.records} == {GATEWAY_KEY} and "a" not in {r.node for r in gateway.records}
    assert_no_provider_key(gateway)
    lines = [r for r in caplog.records if "model=" in r.getMessage()]
    assert len(lines) == 4  # one log line per call


def test_requests_through_an_adapter_of_the_app_is_handled_once(gateway: GatewaySimulator) -> None:
    class Counting(requests.adapters.HTTPAdapter):
        sent = 0

        def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            Counting.sent += 1
            return super().send(request, *args, **kwargs)

    install_for(gateway)
    with requests.Session() as session:
        session.mount("https://", Counting())
        assert session.post(CHAT_URL, json=CHAT, headers=OPENAI, timeout=10).status_code == 200
    assert Counting.sent == 1 and len(gateway.records) == 1 and gateway.records[0].key == GATEWAY_KEY


# --- redaction and tracing --------------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_no_key_in_logs_at_debug(gateway: GatewaySimulator, client: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    gateway.set_faults("a", refuse=True)
    gateway.set_faults("b", cut_stream_after=3)
    install_for(gateway, pin=gateway.node("a").base_url, log="debug")
    post(client)
    post(client, body=STREAM)
    logging.getLogger("app").debug("the app logs its own headers: %s", OPENAI)
    for node in gateway.nodes:
        gateway.set_faults(node.name, refuse=True)
    post(client)
    text = caplog.text + "".join(str(record.args) for record in caplog.records)
    assert "connection failed" in text and "model=gpt-4o-mini" in text
    for key in (*PROVIDER_KEYS, GATEWAY_KEY):
        assert key not in text


_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """An in-memory exporter on the process's SDK tracer provider (test_tracing.py may have set
    it already: a provider can be set once per process)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    if not getattr(provider, "_yibu_clients_exporter", False):
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        provider._yibu_clients_exporter = True  # type: ignore[attr-defined]
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def genai(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.attributes and "gen_ai.operation.name" in s.attributes]


@pytest.mark.parametrize("client", CLIENTS)
def test_one_genai_span_per_call_with_attempts(
    gateway: GatewaySimulator, client: str, spans: InMemorySpanExporter
) -> None:
    gateway.set_faults("a", refuse=True)
    install_for(gateway, pin=gateway.node("a").base_url, model_aliases={"gpt-4": "gpt-5.2"})
    post(client, body={**CHAT, "model": "gpt-4"})
    (span,) = genai(spans)
    attributes = dict(span.attributes or {})
    assert span.name == "chat gpt-4" and attributes["yibu.request.model_sent"] == "gpt-5.2"
    assert attributes["gen_ai.response.model"] == "gpt-5.2" and attributes["gen_ai.usage.output_tokens"]
    served = gateway.records[-1]
    assert attributes["server.port"] == gateway.node(served.node).port
    attempts = [dict(e.attributes or {}) for e in span.events if e.name == "yibu.attempt"]
    assert [a["server.port"] for a in attempts] == [gateway.node("a").port, gateway.node(served.node).port]
    assert format(span.context.trace_id, "032x") in served.headers["traceparent"]
    text = repr([dict(span.attributes or {}), [dict(e.attributes or {}) for e in span.events]])
    assert all(key not in text for key in (*PROVIDER_KEYS, GATEWAY_KEY))


def test_requests_stream_span_ends_with_the_body(gateway: GatewaySimulator, spans: InMemorySpanExporter) -> None:
    install_for(gateway)
    body = {**STREAM, "stream_options": {"include_usage": True}}
    with requests.post(CHAT_URL, json=body, headers=OPENAI, stream=True, timeout=10) as response:
        assert genai(spans) == []  # headers are in, the span is still open
        lines = list(response.iter_lines())
    (span,) = genai(spans)
    attributes = dict(span.attributes or {})
    assert lines and attributes["gen_ai.usage.output_tokens"] and "gen_ai.response.time_to_first_chunk" in attributes
    with requests.post(CHAT_URL, json=STREAM, headers=OPENAI, stream=True, timeout=10) as response:
        next(response.iter_content(None))
    assert len(genai(spans)) == 2  # closed early: the span ended with it


async def test_aiohttp_stream_span_ends_with_the_body(gateway: GatewaySimulator, spans: InMemorySpanExporter) -> None:
    install_for(gateway)
    body = {**STREAM, "stream_options": {"include_usage": True}}
    async with aiohttp.ClientSession(headers=OPENAI) as session:
        async with session.post(CHAT_URL, json=body) as response:
            assert genai(spans) == []
            assert (await response.read()).endswith(b"data: [DONE]\n\n")
        (span,) = genai(spans)
        assert dict(span.attributes or {})["gen_ai.usage.output_tokens"]
        async with session.post(CHAT_URL, json=STREAM) as response:
            await response.content.readline()
        assert len(genai(spans)) == 2  # released early: the span ended with it
        async with session.post(CHAT_URL, json=CHAT) as response:
            await response.json()
        assert len(genai(spans)) == 3


# --- patching ---------------------------------------------------------------------------------


def test_install_wraps_once_and_uninstall_restores_exactly(gateway: GatewaySimulator) -> None:
    targets = [(requests.adapters.HTTPAdapter, "send"), (aiohttp.ClientSession, "_request")]
    originals = {(owner, name): owner.__dict__[name] for owner, name in targets}
    install_for(gateway)
    install_for(gateway)
    for (owner, name), original in originals.items():
        wrapper = owner.__dict__[name]
        assert wrapper is not original and wrapper.__wrapped__ is original  # wrapped once, not twice
    assert {hook.name for hook in HOOKS if hook.patched} >= {"requests", "aiohttp"}
    yibu_middleware.uninstall()
    for (owner, name), original in originals.items():
        assert owner.__dict__[name] is original
    assert not any(hook.patched for hook in HOOKS)
    answer = post("requests", f"{gateway.node('a').base_url}/chat/completions", headers={"Authorization": "Bearer x"})
    assert answer.status == 401  # not installed: nothing is routed or swapped


# --- hedging, through the shared code -----------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_hedge_first_answer_wins(gateway: GatewaySimulator, client: str) -> None:
    """As with httpx: once the p95 is known, a slow pinned node's call is hedged on another node,
    whose answer is the one handed back; the slow attempt is dropped."""
    install_for(gateway, pin=gateway.node("a").base_url, hedge={"enabled": True, "min_samples": 16})
    for _ in range(16):  # learn the p95 time to an answer
        assert "'a'" in content_of(post(client))
    gateway.set_faults("a", latency=1.0)
    answer = post(client)
    assert answer.status == 200 and answer.error is None
    assert "'a'" not in content_of(answer)  # the hedge on another node answered first
    assert [record.status for record in gateway.records if record.node != "a"] == [200]
