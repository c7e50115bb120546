"""Tests of the gateway simulator itself, over real sockets and with the real openai/anthropic SDKs."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from yibu_middleware.simulator import GatewaySimulator, NodeFaults, Record
from yibu_middleware.simulator.pytest_plugin import gateway_simulator  # noqa: F401  (the fixture under test)

KEY = "sk-gw-test"
CLAUDE = "claude-sim-test"  # not a real model name: the anthropic SDK warns about deprecated real ones
ROOT = Path(__file__).resolve().parents[1]
MESSAGES: Any = [{"role": "user", "content": "say hello to the gateway"}]
SDK_TIMEOUT = 30.0  # generous, but a stream that never ends fails the test instead of hanging it for 10 min


@pytest.fixture
def sim() -> Iterator[GatewaySimulator]:
    simulator = GatewaySimulator(accepted_keys={KEY})
    simulator.add_node("healthy")
    simulator.add_node("second")
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()


_clients: list[openai.OpenAI | anthropic.Anthropic] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Close the SDK clients a test made, so their pooled sockets do not leak into later tests."""
    yield
    while _clients:
        _clients.pop().close()


def oa(sim: GatewaySimulator, node: str = "healthy", key: str = KEY) -> openai.OpenAI:
    client = openai.OpenAI(base_url=sim.node(node).base_url, api_key=key, max_retries=0, timeout=SDK_TIMEOUT)
    _clients.append(client)
    return client


def an(sim: GatewaySimulator, node: str = "healthy", key: str = KEY) -> anthropic.Anthropic:
    client = anthropic.Anthropic(base_url=sim.node(node).origin, api_key=key, max_retries=0, timeout=SDK_TIMEOUT)
    _clients.append(client)
    return client


def only_record(sim: GatewaySimulator) -> Record:
    records = sim.records
    assert len(records) == 1, records
    return records[0]


# ---- endpoints via the SDKs ------------------------------------------------------------------------------


def test_openai_chat_plain(sim: GatewaySimulator) -> None:
    raw = oa(sim).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    completion = raw.parse()
    assert completion.model == "gpt-4o-mini"
    assert completion.id.startswith("chatcmpl-")
    assert completion.choices[0].message.content == "Hello from yibu simulator node 'healthy'."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 5
    assert completion.usage.total_tokens == 5 + completion.usage.completion_tokens
    assert raw.headers["x-yibu-sim-node"] == "healthy"
    assert raw.headers["x-request-id"].startswith("req_")

    record = only_record(sim)
    assert (record.node, record.method, record.path, record.query) == (
        "healthy",
        "POST",
        "/v1/chat/completions",
        "",
    )
    assert (record.model, record.key, record.key_header) == ("gpt-4o-mini", KEY, "authorization")
    assert record.stream is False and record.status == 200 and record.fault is None
    assert record.body["messages"] == MESSAGES
    assert record.headers["authorization"] == f"Bearer {KEY}"
    assert record.request_id == raw.headers["x-request-id"]


def test_openai_chat_stream_with_usage(sim: GatewaySimulator) -> None:
    stream = oa(sim, "second").chat.completions.create(
        model="gpt-5.2", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    content_chunks = [c for c in chunks if c.choices]
    assert (
        "".join(c.choices[0].delta.content or "" for c in content_chunks) == "Hello from yibu simulator node 'second'."
    )
    assert len(content_chunks) == 7  # the role-only chunk, then one per word
    assert content_chunks[0].choices[0].delta.role == "assistant"
    assert content_chunks[0].choices[0].delta.content == ""
    assert all(c.choices[0].delta.role is None for c in content_chunks[1:])
    assert content_chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in content_chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    record = only_record(sim)
    assert record.stream is True and record.node == "second" and record.model == "gpt-5.2"


def test_openai_embeddings_base64_default_and_float(sim: GatewaySimulator) -> None:
    client = oa(sim)
    default = client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta gamma"])
    floats = client.embeddings.create(model="text-embedding-3-small", input="alpha", encoding_format="float")
    assert [d.index for d in default.data] == [0, 1]
    assert len(default.data[0].embedding) == 8
    assert default.data[0].embedding == floats.data[0].embedding  # base64 decodes to the same vector
    assert default.data[0].embedding != default.data[1].embedding
    assert all(-1.0 <= x <= 1.0 for x in floats.data[0].embedding)
    assert default.usage.prompt_tokens == 3
    first, second = sim.records
    assert first.body["encoding_format"] == "base64"  # what the SDK sends unless told otherwise
    assert second.body["encoding_format"] == "float"
    assert first.path == "/v1/embeddings" and first.model == "text-embedding-3-small"


def test_embeddings_base64_wire_format(sim: GatewaySimulator) -> None:
    response = httpx.post(
        sim.node("healthy").base_url + "/embeddings",
        headers={"x-api-key": KEY},
        json={"model": "m", "input": "x", "encoding_format": "base64", "dimensions": 4},
    )
    encoded = response.json()["data"][0]["embedding"]
    assert isinstance(encoded, str)
    assert len(struct.unpack("<4f", base64.b64decode(encoded))) == 4


def test_openai_models(sim: GatewaySimulator) -> None:
    client = oa(sim)
    ids = [m.id for m in client.models.list()]
    assert ids == ["gpt-5.2", "gpt-4o-mini", "claude-sonnet-4-5", "text-embedding-3-small"]
    assert client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    assert sim.records[0].method == "GET" and sim.records[0].path == "/v1/models"


def test_anthropic_messages_plain(sim: GatewaySimulator) -> None:
    raw = an(sim).messages.with_raw_response.create(model=CLAUDE, max_tokens=50, messages=MESSAGES, system="be brief")
    message = raw.parse()
    assert message.id.startswith("msg_")
    assert message.model == CLAUDE and message.role == "assistant"
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hello from yibu simulator node 'healthy'."
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 7 and message.usage.output_tokens == 6
    assert raw.headers["request-id"] == raw.headers["x-request-id"]
    record = only_record(sim)
    assert (record.path, record.model, record.key, record.stream) == ("/v1/messages", CLAUDE, KEY, False)


def test_anthropic_messages_stream(sim: GatewaySimulator) -> None:
    with an(sim).messages.stream(model=CLAUDE, max_tokens=50, messages=MESSAGES) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == "Hello from yibu simulator node 'healthy'."
    assert len(pieces) == 6
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 6
    assert only_record(sim).stream is True


def test_anthropic_stream_event_sequence(sim: GatewaySimulator) -> None:
    body = {"model": CLAUDE, "max_tokens": 5, "messages": MESSAGES, "stream": True}
    url = sim.node("healthy").base_url + "/messages"
    with httpx.stream("POST", url, headers={"x-api-key": KEY}, json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["transfer-encoding"] == "chunked"
        names = [line.split(": ", 1)[1] for line in response.iter_lines() if line.startswith("event: ")]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 6,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert only_record(sim).key_header == "x-api-key"


async def test_async_openai(sim: GatewaySimulator) -> None:
    base_url = sim.node("healthy").base_url
    async with openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0) as client:
        completion = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert completion.choices[0].message.content == "Hello from yibu simulator node 'healthy'."
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "Hello from yibu simulator node 'healthy'."
        embedding = await client.embeddings.create(model="text-embedding-3-small", input="hi")
        assert len(embedding.data[0].embedding) == 8
        results = await asyncio.gather(
            *(client.chat.completions.create(model=f"m{i}", messages=MESSAGES) for i in range(200))
        )
    assert sorted(r.model for r in results) == sorted(f"m{i}" for i in range(200))
    assert len(sim.records) == 203 and all(r.status == 200 for r in sim.records)


# ---- raw HTTP: keep-alive and request body framing -------------------------------------------------------


def _read_response(sock: socket.socket, buffer: bytes = b"") -> tuple[int, dict[str, str], bytes, bytes]:
    """Read one Content-Length response; returns status, headers, body and the leftover bytes."""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        assert data, "connection closed before the response head"
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    while len(rest) < length:
        data = sock.recv(65536)
        assert data, "connection closed inside the body"
        rest += data
    return int(lines[0].split(" ")[1]), headers, rest[:length], rest[length:]


def test_keep_alive_and_chunked_request_body(sim: GatewaySimulator) -> None:
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES}).encode()
    port = sim.node("healthy").port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: t\r\napi-key: "
            + KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body
        )
        status, headers, payload, rest = _read_response(sock)
        assert status == 200 and headers["connection"] == "keep-alive"
        assert json.loads(payload)["model"] == "gpt-4o-mini"
        # Same socket, second request, body in two chunks.
        half = len(body) // 2
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
            + KEY.encode()
            + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%b\r\n" % (half, body[:half])
            + b"%x\r\n%b\r\n0\r\n\r\n" % (len(body) - half, body[half:])
        )
        status, _, payload, _ = _read_response(sock, rest)
        assert status == 200
        assert json.loads(payload)["choices"][0]["message"]["content"].endswith("'healthy'.")
    first, second = sim.records
    assert (first.query, first.key_header) == ("x=1", "api-key")
    assert second.body == json.loads(body) and second.key_header == "authorization"


def test_sdk_reuses_one_connection(sim: GatewaySimulator) -> None:
    client = oa(sim)
    for _ in range(3):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    client.models.list()
    oa(sim).models.list()
    connections = [r.connection for r in sim.records]
    assert len(set(connections[:4])) == 1
    assert connections[4] != connections[0]


def test_keep_alive_after_streamed_response(sim: GatewaySimulator) -> None:
    # Read to the end of the chunked body (the openai SDK closes the response at [DONE], before the
    # terminating chunk is parsed, so httpcore drops that connection whatever the server does).
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    with httpx.Client(headers={"authorization": f"Bearer {KEY}"}) as client:
        url = sim.node("healthy").base_url + "/chat/completions"
        with client.stream("POST", url, json=body) as response:
            lines = list(response.iter_lines())
        assert lines[-2:] == ["data: [DONE]", ""]
        assert client.post(url, json={**body, "stream": False}).status_code == 200
    first, second = sim.records
    assert first.connection == second.connection


# ---- auth and errors -------------------------------------------------------------------------------------


def test_wrong_or_missing_key_is_401_in_provider_format(sim: GatewaySimulator) -> None:
    with pytest.raises(openai.AuthenticationError) as oa_error:
        oa(sim, key="sk-wrong").chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert oa_error.value.status_code == 401
    assert oa_error.value.code == "invalid_api_key"
    with pytest.raises(anthropic.AuthenticationError) as an_error:
        an(sim, key="sk-wrong").messages.create(model=CLAUDE, max_tokens=5, messages=MESSAGES)
    assert an_error.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Incorrect API key provided."},
    }
    missing = httpx.get(sim.node("healthy").base_url + "/models")
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "invalid_request_error"
    assert [(r.status, r.key) for r in sim.records] == [(401, "sk-wrong"), (401, "sk-wrong"), (401, None)]


def test_any_key_accepted_when_accepted_keys_is_none() -> None:
    with GatewaySimulator() as open_sim:
        node = open_sim.add_node("open")
        assert httpx.get(node.base_url + "/models").status_code == 200
        with openai.OpenAI(base_url=node.base_url, api_key="anything", max_retries=0) as client:
            assert client.models.list().data


def test_error_rate_one_gives_503_in_both_formats(sim: GatewaySimulator) -> None:
    sim.set_faults("healthy", error_rate=1.0)
    with pytest.raises(openai.InternalServerError) as oa_error:
        oa(sim).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert oa_error.value.status_code == 503
    assert isinstance(oa_error.value.body, dict) and oa_error.value.body["type"] == "server_error"
    with pytest.raises(anthropic.APIStatusError) as an_error:
        an(sim).messages.create(model=CLAUDE, max_tokens=5, messages=MESSAGES)
    assert an_error.value.status_code == 503
    assert isinstance(an_error.value.body, dict)
    assert an_error.value.body["error"]["type"] == "overloaded_error"
    assert [r.fault for r in sim.records] == ["error_rate", "error_rate"]
    # The other node is unaffected.
    assert oa(sim, "second").models.list().data


def test_rate_limit_429_with_retry_after(sim: GatewaySimulator) -> None:
    sim.set_faults("healthy", rate_limit_rate=1.0, retry_after=2.5)
    with pytest.raises(openai.RateLimitError) as error:
        oa(sim).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert error.value.response.headers["retry-after"] == "2.5"
    assert error.value.response.headers["retry-after-ms"] == "2500"
    with pytest.raises(anthropic.RateLimitError) as an_error:
        an(sim).messages.create(model=CLAUDE, max_tokens=5, messages=MESSAGES)
    assert isinstance(an_error.value.body, dict)
    assert an_error.value.body["error"]["type"] == "rate_limit_error"
    assert {(r.status, r.fault) for r in sim.records} == {(429, "rate_limit")}


def test_error_rate_is_seeded_and_reproducible() -> None:
    def statuses(seed: int) -> list[int]:
        with GatewaySimulator() as s:
            node = s.add_node("flaky", NodeFaults(error_rate=0.5, seed=seed))
            with httpx.Client() as client:
                return [client.get(node.base_url + "/models").status_code for _ in range(40)]

    first, again, other = statuses(1), statuses(1), statuses(2)
    assert first == again
    assert first != other
    assert 5 < first.count(503) < 35 and set(first) == {200, 503}


def test_direct_fault_mutation_applies_to_next_request(sim: GatewaySimulator) -> None:
    sim.node("healthy").faults.status_override = 500
    assert httpx.get(sim.node("healthy").base_url + "/models").status_code == 500
    sim.node("healthy").faults.status_override = None
    assert httpx.get(sim.node("healthy").base_url + "/models", headers={"x-api-key": KEY}).status_code == 200


def test_status_override(sim: GatewaySimulator) -> None:
    quota = {
        "error": {
            "message": "quota exhausted",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }
    sim.set_faults("healthy", status_override=403, status_body=quota)
    with pytest.raises(openai.PermissionDeniedError) as error:
        oa(sim, key="even-a-wrong-key").chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert error.value.body == quota["error"]
    sim.set_faults("healthy", status_override=400, status_body=None)
    with pytest.raises(anthropic.BadRequestError) as an_error:
        an(sim).messages.create(model=CLAUDE, max_tokens=5, messages=MESSAGES)
    assert isinstance(an_error.value.body, dict) and an_error.value.body["type"] == "error"
    assert [(r.status, r.fault) for r in sim.records] == [(403, "status_override"), (400, "status_override")]


def test_status_override_with_a_plain_text_body(sim: GatewaySimulator) -> None:
    sim.set_faults("healthy", status_override=502, status_text="Bad gateway, as a proxy page says it")
    answer = httpx.post(sim.node("healthy").base_url + "/chat/completions", json={"model": "m"})
    assert answer.status_code == 502 and answer.headers["content-type"] == "text/plain"
    assert answer.text == "Bad gateway, as a proxy page says it"
    with pytest.raises(ValueError, match="status_text"):
        NodeFaults(status_override=200, status_text="words", status_body={"a": 1}).validate()


def test_unknown_path_and_method(sim: GatewaySimulator) -> None:
    headers = {"authorization": f"Bearer {KEY}"}
    base = sim.node("healthy").base_url
    missing = httpx.post(base + "/nothing", headers=headers, json={})
    assert missing.status_code == 404 and "error" in missing.json()
    assert (
        httpx.post(base.removesuffix("/v1") + "/chat/completions", headers=headers, json={"model": "m"}).status_code
        == 404
    )  # only under /v1
    assert httpx.get(base + "/chat/completions", headers=headers).status_code == 405
    bad = httpx.post(base + "/chat/completions", headers=headers, content=b"{not json")
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    no_model = httpx.post(base + "/messages", headers=headers, json={"messages": []})
    assert no_model.status_code == 400 and no_model.json()["type"] == "error"


def test_latency(sim: GatewaySimulator) -> None:
    sim.set_faults("healthy", latency=0.3)
    started = time.monotonic()
    oa(sim).models.list()
    assert time.monotonic() - started >= 0.3
    record = only_record(sim)
    assert record.fault == "latency" and record.elapsed >= 0.3


# ---- connection faults ------------------------------------------------------------------------------------


def test_refuse_then_reopen_on_same_port(sim: GatewaySimulator) -> None:
    node = sim.node("healthy")
    port = node.port
    client = httpx.Client(headers={"authorization": f"Bearer {KEY}"})
    assert client.get(node.base_url + "/models").status_code == 200  # keep-alive connection now open

    sim.set_faults("healthy", refuse=True)
    assert node.port == port
    started = time.monotonic()
    with pytest.raises(httpx.ConnectError):
        client.get(node.base_url + "/models")  # the kept-alive connection was closed, a new one is refused
    with pytest.raises(httpx.ConnectError):
        httpx.get(node.base_url + "/models")
    assert time.monotonic() - started < 2.0

    sim.set_faults("healthy", refuse=False)
    assert node.port == port
    assert client.get(node.base_url + "/models").status_code == 200
    client.close()
    assert [r.status for r in sim.records] == [200, 200]


def test_node_added_refused_has_a_port() -> None:
    with GatewaySimulator() as s:
        down = s.add_node("down", NodeFaults(refuse=True))
        assert down.refusing and down.port > 0
        with (
            pytest.raises(openai.APIConnectionError),
            openai.OpenAI(base_url=down.base_url, api_key=KEY, max_retries=0) as client,
        ):
            client.models.list()
        s.set_faults("down", refuse=False)
        assert httpx.get(down.base_url + "/models").status_code == 200


def test_cut_stream_openai_raises(sim: GatewaySimulator) -> None:
    sim.set_faults("healthy", cut_stream_after=3)  # the role-only chunk, then two words
    stream = oa(sim).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    received: list[str] = []
    with pytest.raises((openai.APIConnectionError, httpx.RemoteProtocolError)):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert received == ["", "Hello", " from"]
    record = only_record(sim)
    assert record.fault == "cut_stream" and record.stream is True


def test_cut_stream_anthropic_raises(sim: GatewaySimulator) -> None:
    sim.set_faults("healthy", cut_stream_after=4)  # message_start, content_block_start, ping, one delta
    # anthropic 2.x runs on httpx2 and lets its protocol error through unwrapped.
    errors = (anthropic.APIConnectionError, httpx.RemoteProtocolError, httpx2.RemoteProtocolError)
    pieces: list[str] = []
    messages = an(sim).messages
    with pytest.raises(errors), messages.stream(model=CLAUDE, max_tokens=5, messages=MESSAGES) as stream:
        pieces.extend(stream.text_stream)
    assert pieces == ["Hello"]
    # Non-streaming requests are not cut.
    assert oa(sim).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices


CHAT_ERROR = {
    "error": {"message": "The server had an error while processing your request.", "type": "server_error", "code": None}
}
ANTHROPIC_ERROR = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def _sse_lines(client: httpx2.Client, url: str, body: dict[str, Any]) -> list[str]:
    """POST a streaming request and read the whole SSE body raw; any transport error propagates."""
    with client.stream("POST", url, json=body) as response:
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        return list(response.iter_lines())


def _data(lines: list[str]) -> list[str]:
    return [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]


def test_stream_error_chat_raw_ends_cleanly_and_keeps_the_connection(sim: GatewaySimulator) -> None:
    sim.set_faults("healthy", stream_error_after=1)
    url = sim.node("healthy").base_url + "/chat/completions"
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    with httpx2.Client(headers={"authorization": f"Bearer {KEY}"}) as client:
        data = _data(_sse_lines(client, url, body))  # no exception: the chunked body was terminated
        assert len(data) == 2
        assert json.loads(data[0])["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
        assert json.loads(data[1]) == CHAT_ERROR
        assert "[DONE]" not in data
        assert client.post(url, json={**body, "stream": False}).status_code == 200
    first, second = sim.records
    assert (first.status, first.fault, first.stream) == (200, "stream_error", True)
    assert second.fault is None and second.connection == first.connection  # the connection stayed usable


def test_stream_error_sdks_raise(sim: GatewaySimulator) -> None:
    sim.set_faults("healthy", stream_error_after=2)  # role chunk, "Hello", error
    received: list[str] = []
    with pytest.raises(openai.APIError) as oa_error:
        for chunk in oa(sim).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):
            received.append(chunk.choices[0].delta.content or "")
    assert received == ["", "Hello"]
    # A plain APIError (no status: the 200 was already sent), carrying the in-band error object.
    assert not isinstance(oa_error.value, openai.APIStatusError)
    assert oa_error.value.body == CHAT_ERROR["error"]
    assert oa_error.value.message == "The server had an error while processing your request."

    sim.set_faults("healthy", stream_error_after=4)  # message_start, content_block_start, ping, one delta
    pieces: list[str] = []
    messages = an(sim).messages
    with (
        pytest.raises(anthropic.APIStatusError) as an_error,
        messages.stream(model=CLAUDE, max_tokens=5, messages=MESSAGES) as stream,
    ):
        pieces.extend(stream.text_stream)
    assert pieces == ["Hello"]
    # anthropic maps by HTTP status, which is the stream's 200: not an OverloadedError subclass.
    assert an_error.value.status_code == 200
    assert an_error.value.body == ANTHROPIC_ERROR
    assert [r.fault for r in sim.records] == ["stream_error", "stream_error"]


def test_stream_error_messages_raw(sim: GatewaySimulator) -> None:
    sim.set_faults("healthy", stream_error_after=1)
    url = sim.node("healthy").base_url + "/messages"
    body = {"model": CLAUDE, "max_tokens": 5, "messages": MESSAGES, "stream": True}
    with httpx2.Client(headers={"x-api-key": KEY}) as client:
        lines = _sse_lines(client, url, body)
    assert [line for line in lines if line.startswith("event: ")] == ["event: message_start", "event: error"]
    assert json.loads(_data(lines)[-1]) == ANTHROPIC_ERROR
    assert only_record(sim).fault == "stream_error"


def test_truncate_stream_ends_cleanly_without_the_final_event(sim: GatewaySimulator) -> None:
    sim.set_faults("healthy", truncate_stream_after=3)
    base = sim.node("healthy").base_url
    chat = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    messages = {"model": CLAUDE, "max_tokens": 5, "messages": MESSAGES, "stream": True}
    with httpx2.Client(headers={"authorization": f"Bearer {KEY}"}) as client:
        chat_lines = _sse_lines(client, base + "/chat/completions", chat)
        message_lines = _sse_lines(client, base + "/messages", messages)
        # Larger than the stream: still never the final event.
        sim.set_faults("healthy", truncate_stream_after=1000)
        long_lines = _sse_lines(client, base + "/chat/completions", chat)
    data = _data(chat_lines)
    assert len(data) == 3 and "[DONE]" not in data
    assert "".join(json.loads(d)["choices"][0]["delta"]["content"] for d in data) == "Hello from"
    assert [line for line in message_lines if line.startswith("event: ")] == [
        "event: message_start",
        "event: content_block_start",
        "event: ping",
    ]
    assert not any("message_stop" in line for line in message_lines)
    assert "[DONE]" not in _data(long_lines) and len(_data(long_lines)) == 7
    assert [r.fault for r in sim.records] == ["truncate_stream"] * 3
    assert len({r.connection for r in sim.records}) == 1  # each body ended cleanly: one kept-alive connection


def test_truncate_stream_is_silent_for_the_sdks(sim: GatewaySimulator) -> None:
    sim.set_faults("healthy", truncate_stream_after=3)
    stream = oa(sim).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert [c.choices[0].delta.content for c in stream] == ["", "Hello", " from"]  # no exception
    with an(sim).messages.stream(model=CLAUDE, max_tokens=5, messages=MESSAGES) as an_stream:
        assert list(an_stream.text_stream) == []
        assert an_stream.get_final_message().stop_reason is None


def _raw_stream_request(port: int, path: str, body: dict[str, Any]) -> socket.socket:
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    return sock


def _recv_until_close(sock: socket.socket) -> bytes:
    received = b""
    while data := sock.recv(65536):
        received += data
    return received


@pytest.mark.parametrize("after", [0, 2])
def test_stall_stream_read_timeout_while_others_are_served(sim: GatewaySimulator, after: int) -> None:
    sim.set_faults("healthy", stall_stream_after=after)
    base = sim.node("healthy").base_url
    chat = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    received: list[str] = []
    timeout = httpx2.Timeout(10.0, read=0.5)
    with httpx2.Client(headers={"authorization": f"Bearer {KEY}"}, timeout=timeout) as client:
        started = time.monotonic()
        with pytest.raises(httpx2.ReadTimeout), client.stream("POST", base + "/chat/completions", json=chat) as resp:
            assert resp.status_code == 200  # the headers came; then the body stalls
            received.extend(line for line in resp.iter_lines() if line)
        assert time.monotonic() - started < 5
    assert len(received) == after
    assert "[DONE]" not in received

    # A stall held open (the client does not hang up; stall_max is 30 s) blocks neither its node nor the
    # other one: both answer well within a 5 s timeout.
    port = sim.node("healthy").port
    with _raw_stream_request(port, "/v1/chat/completions", chat) as stalled:
        assert stalled.recv(65536).startswith(b"HTTP/1.1 200 ")
        with httpx2.Client(headers={"authorization": f"Bearer {KEY}"}, timeout=5) as quick:
            assert quick.post(base + "/chat/completions", json={**chat, "stream": False}).status_code == 200
            assert quick.get(sim.node("second").base_url + "/models").status_code == 200
        sim.set_faults("healthy", stall_stream_after=None)
        assert "".join(
            c.choices[0].delta.content or ""
            for c in oa(sim).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        ).endswith("'healthy'.")
        started = time.monotonic()
        sim.stop()
        assert time.monotonic() - started < 5
        stalled.settimeout(5)
        _recv_until_close(stalled)  # the simulator closed the stalled connection (else socket.timeout)
    assert [r.fault for r in sim.records][:2] == ["stall_stream", "stall_stream"]


def test_stall_stream_gives_up_after_stall_max(sim: GatewaySimulator) -> None:
    sim.set_faults("healthy", stall_stream_after=1, stall_max=0.3)
    chat = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    with _raw_stream_request(sim.node("healthy").port, "/v1/chat/completions", chat) as sock:
        started = time.monotonic()
        received = _recv_until_close(sock)
        assert 0.2 < time.monotonic() - started < 5
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    assert body.count(b"data: ") == 1 and b'"role":"assistant"' in body
    assert not body.endswith(b"0\r\n\r\n")  # closed, not ended: the body is incomplete
    record = only_record(sim)
    assert (record.status, record.fault) == (200, "stall_stream")


def test_stall_stream_sdks_time_out(sim: GatewaySimulator) -> None:
    sim.set_faults("healthy", stall_stream_after=2)
    node = sim.node("healthy")
    with openai.OpenAI(base_url=node.base_url, api_key=KEY, max_retries=0, timeout=openai.Timeout(10, read=0.5)) as c:
        received: list[str] = []
        with pytest.raises(openai.APITimeoutError):
            for chunk in c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):
                received.append(chunk.choices[0].delta.content or "")
        assert received == ["", "Hello"]
    timeout = anthropic.Timeout(10, read=0.5)
    # anthropic 2.x lets httpx2's ReadTimeout through unwrapped mid-stream.
    with (
        anthropic.Anthropic(base_url=node.origin, api_key=KEY, max_retries=0, timeout=timeout) as a,
        pytest.raises((anthropic.APITimeoutError, httpx2.ReadTimeout)),
        a.messages.stream(model=CLAUDE, max_tokens=5, messages=MESSAGES) as stream,
    ):
        list(stream.text_stream)


def test_stream_faults_leave_plain_responses_alone(sim: GatewaySimulator) -> None:
    sim.set_faults("healthy", stream_error_after=0, truncate_stream_after=0, stall_stream_after=0)
    assert oa(sim).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices
    assert an(sim).messages.create(model=CLAUDE, max_tokens=5, messages=MESSAGES).content
    assert [r.fault for r in sim.records] == [None, None]
    # Several set: stall wins over error and truncate (order: cut, stall, error, truncate).
    assert sim.node("healthy").faults.stream_fault() == ("stall_stream_after", 0)
    with pytest.raises(ValueError, match="stall_stream_after"):
        sim.set_faults("healthy", stall_stream_after=-1)
    with pytest.raises(ValueError, match="stall_max"):
        sim.set_faults("healthy", stall_max=float("inf"))


def test_latency_jitter_is_drawn_from_the_seeded_generator() -> None:
    rng = random.Random(7)  # the node's draws per request: error/rate-limit, then the jitter
    expected = [0.01 + (rng.random(), rng.uniform(0.0, 0.3))[1] for _ in range(5)]
    assert max(expected) - min(expected) > 0.05  # the seed gives visibly different waits
    with GatewaySimulator() as s:
        node = s.add_node("jittery", NodeFaults(latency=0.01, latency_jitter=0.3, seed=7))
        with httpx.Client() as client:
            for _ in range(5):
                assert client.get(node.base_url + "/models").status_code == 200
        records = s.records
    assert {r.fault for r in records} == {"latency"}
    for record, wait in zip(records, expected, strict=True):
        assert wait <= record.elapsed < wait + 1.0


# ---- lifecycle, API misuse ---------------------------------------------------------------------------------


def test_lifecycle_and_api_misuse() -> None:
    s = GatewaySimulator()
    first = s.add_node("one", port=0)
    with pytest.raises(RuntimeError):
        _ = first.base_url  # no port before start
    with pytest.raises(ValueError, match="already exists"):
        s.add_node("one")
    with pytest.raises(ValueError, match="error_rate"):
        s.add_node("bad", NodeFaults(error_rate=2.0))
    s.start()
    assert [n.name for n in s.nodes] == ["one"] and s.node("one") is first
    with pytest.raises(KeyError):
        s.node("nope")
    with pytest.raises(TypeError, match="unknown fault field"):
        s.set_faults("one", latncy=1.0)
    assert httpx.get(first.base_url + "/models").status_code == 200
    assert len(s.records) == 1
    s.clear()
    assert s.records == []
    port = first.port
    s.stop()
    s.stop()  # idempotent
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/v1/models")


def test_pytest_plugin_fixture(gateway_simulator: GatewaySimulator) -> None:  # noqa: F811
    assert [n.name for n in gateway_simulator.nodes] == ["a", "b", "c"]
    assert gateway_simulator.accepted_keys is None
    for node in gateway_simulator.nodes:
        assert node.faults == NodeFaults()
        assert httpx.get(node.base_url + "/models").headers["x-yibu-sim-node"] == node.name


# ---- command line -----------------------------------------------------------------------------------------


def _cli_env() -> dict[str, str]:
    paths = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def test_cli_rejects_unknown_field() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "yibu_middleware.simulator", "--node", "a:latncy=1"],
        capture_output=True,
        text=True,
        timeout=30,
        env=_cli_env(),
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "unknown fault field 'latncy'" in result.stderr
    assert "latency" in result.stderr and "error_rate" in result.stderr


def test_cli_rejects_bad_value() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "yibu_middleware.simulator", "--node", "a:error_rate=lots"],
        capture_output=True,
        text=True,
        timeout=30,
        env=_cli_env(),
        cwd=ROOT,
    )
    assert result.returncode == 2 and "error_rate" in result.stderr


def test_cli_runs_logs_keys_masked_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "yibu_middleware.simulator",
            "--node",
            "healthy",
            "--node",
            "down:refuse,latency=0.1",
            "--key",
            KEY,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_cli_env(),
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().split() for _ in range(2)]
        assert [line[0] for line in lines] == ["healthy", "down"]
        assert lines[0][2] == "-" and lines[1][2:] == ["latency=0.1", "refuse"]
        base_url = lines[0][1]
        assert httpx.get(base_url + "/models", headers={"authorization": f"Bearer {KEY}"}).status_code == 200
        assert httpx.get(base_url + "/models", headers={"x-api-key": "sk-secret-wrong"}).status_code == 401
        with pytest.raises(httpx.ConnectError):
            httpx.get(lines[1][1] + "/models")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "healthy GET /v1/models" in stderr and "(accepted)" in stderr and "(rejected)" in stderr
    assert KEY not in stderr and "sk-secret-wrong" not in stderr


def test_cli_parses_the_stream_fault_fields() -> None:
    from yibu_middleware.simulator.__main__ import parse_node_spec

    name, faults = parse_node_spec("s:stall_stream_after=0,stall_max=2.5,latency_jitter=0.1,stream_error_after=3")
    assert name == "s"
    assert (faults.stall_stream_after, faults.stall_max, faults.latency_jitter) == (0, 2.5, 0.1)
    assert faults.stream_error_after == 3 and faults.truncate_stream_after is None
    assert parse_node_spec("t:truncate_stream_after=4")[1].truncate_stream_after == 4


def test_prompt_cache_reports_the_longest_remembered_prefix() -> None:
    from yibu_middleware.simulator.prompt_cache import PromptCache

    cache = PromptCache(size=4)
    first = [{"role": "user", "content": "one two three"}]
    longer = [*first, {"role": "assistant", "content": "four"}, {"role": "user", "content": "five six"}]
    assert cache.read("m", first) == (3, 0)  # never seen
    assert cache.read("m", longer) == (6, 3)  # its first message was
    assert cache.read("other-model", longer) == (6, 0)  # per model
    assert cache.read("m", longer, system="sys tem") == (8, 0)  # another start: nothing shared
    cache.read("m", [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}])
    assert cache.read("m", longer) == (6, 0)  # bounded: evicted, least recently used first
    assert PromptCache(size=0).read("m", first) == (3, 0)
