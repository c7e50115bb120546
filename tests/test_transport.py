"""Composition: ``yibu_middleware.Transport()`` handed to a client explicitly, with nothing patched."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
from helpers import ANTHROPIC_KEY, GATEWAY_KEY, OPENAI_KEY, assert_no_provider_key

import yibu_middleware
from yibu_middleware.simulator import GatewaySimulator

MESSAGES: Any = [{"role": "user", "content": "hi"}]


def settings_for(gateway: GatewaySimulator, **overrides: Any) -> dict[str, Any]:
    return {"nodes": [node.base_url for node in gateway.nodes], "api_key": GATEWAY_KEY, **overrides}


def unpatched() -> bool:
    """No hook is applied: the transports' methods are the libraries' own functions."""
    methods = [
        httpx2.HTTPTransport.handle_request,
        httpx2.AsyncHTTPTransport.handle_async_request,
        httpx.HTTPTransport.handle_request,
    ]
    return all(inspect.isfunction(method) for method in methods)


def test_the_openai_sdk_through_the_transport_reaches_the_gateway_with_its_key(gateway: GatewaySimulator) -> None:
    transport = yibu_middleware.Transport(settings_for(gateway))
    with httpx2.Client(transport=transport) as http:
        client = openai.OpenAI(api_key=OPENAI_KEY, http_client=http, max_retries=0)
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert "Hello from yibu simulator" in (answer.choices[0].message.content or "")
    (record,) = gateway.records
    assert record.key == GATEWAY_KEY and record.path == "/v1/chat/completions"
    assert_no_provider_key(gateway)
    assert unpatched()


def test_the_async_transport_fails_over_like_a_hooked_client(gateway: GatewaySimulator) -> None:
    gateway.set_faults("a", status_override=503)
    transport = yibu_middleware.AsyncTransport(settings_for(gateway, pin=gateway.node("a").base_url))

    async def main() -> str:
        async with httpx2.AsyncClient(transport=transport) as http:
            client = anthropic.AsyncAnthropic(api_key=ANTHROPIC_KEY, http_client=http, max_retries=0)
            message = await client.messages.create(model="claude-sonnet-5-5", max_tokens=5, messages=MESSAGES)
            return message.type

    assert asyncio.run(main()) == "message"
    assert [(record.node, record.status) for record in gateway.records][-1][1] == 200
    assert gateway.records[0].node == "a" and gateway.records[-1].node != "a"
    assert_no_provider_key(gateway)
    assert unpatched()


def test_an_httpx_client_and_an_unrouted_host(gateway: GatewaySimulator) -> None:
    transport = yibu_middleware.Transport(settings_for(gateway), library="httpx")
    with httpx.Client(transport=transport) as client:
        answer = client.post(
            "https://api.openai.com/v1/chat/completions",
            json={"model": "m", "messages": MESSAGES},
            headers={"authorization": f"Bearer {OPENAI_KEY}"},
        )
        assert answer.status_code == 200
        # A host that is not routed goes where the app sends it (here: a node, by its own URL).
        direct = client.get(gateway.node("b").base_url + "/models", headers={"authorization": f"Bearer {GATEWAY_KEY}"})
    assert direct.status_code == 200
    assert [record.node for record in gateway.records][-1] == "b"
    assert_no_provider_key(gateway)


def test_settings_come_from_the_environment_without_yibu_enabled(
    gateway: GatewaySimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("YIBU_NODES", ",".join(node.base_url for node in gateway.nodes))
    monkeypatch.setenv("YIBU_API_KEY", GATEWAY_KEY)
    with httpx2.Client(transport=yibu_middleware.Transport()) as http:
        client = openai.OpenAI(api_key=OPENAI_KEY, http_client=http, max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert gateway.records[0].key == GATEWAY_KEY


def test_no_gateway_key_is_refused_when_the_transport_is_made(gateway: GatewaySimulator) -> None:
    with pytest.raises(yibu_middleware.ConfigError, match="gateway key"):
        yibu_middleware.Transport({"nodes": [gateway.node("a").base_url]})
