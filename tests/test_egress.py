"""The egress guard (``egress.block_unrouted_providers``): provider traffic that does not go
through the gateway is refused before any name lookup or connect.

Every test runs under ``offline()``: anything the guard lets through is refused by the test's
own isolation hook instead (a different error, which fails the test), so nothing here can
reach the internet.
"""

from __future__ import annotations

import http.client
import logging
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import openai
import pytest
from helpers import GATEWAY_KEY, OPENAI_KEY, install_for
from offline import WouldReachInternet, offline

import yibu_middleware
from yibu_middleware import egress
from yibu_middleware.errors import ConfigError
from yibu_middleware.settings import load_settings
from yibu_middleware.simulator import GatewaySimulator

GUARD = {"egress": {"block_unrouted_providers": True}}


@pytest.fixture(autouse=True)
def _offline() -> Iterator[list[str]]:
    with offline() as refused:
        yield refused


def assert_refused_by_guard(error: BaseException, host: str) -> None:
    """``error`` is, or was caused by, the guard's refusal naming ``host`` and the setting."""
    seen: BaseException | None = error
    while seen is not None and not isinstance(seen, egress.EgressBlocked):
        seen = seen.__cause__ or seen.__context__ or getattr(seen, "reason", None)
    assert isinstance(seen, egress.EgressBlocked), repr(error)
    assert isinstance(seen, PermissionError)
    assert host in str(seen) and "egress.block_unrouted_providers" in str(seen)


def test_a_raw_socket_to_a_provider_is_refused_before_dns_or_connect(
    gateway: GatewaySimulator, _offline: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    install_for(gateway, **GUARD)
    with caplog.at_level(logging.WARNING, "yibu_middleware"):
        with pytest.raises(egress.EgressBlocked) as caught:
            for family, kind, proto, _, address in socket.getaddrinfo("api.openai.com", 443):
                with socket.socket(family, kind, proto) as raw:
                    raw.connect(address)
        assert_refused_by_guard(caught.value, "api.openai.com")
        with pytest.raises(egress.EgressBlocked):
            socket.getaddrinfo("API.Anthropic.COM.", 443)  # any spelling
        with pytest.raises(egress.EgressBlocked):
            socket.create_connection(("generativelanguage.googleapis.com", 443))
    assert _offline == []  # refused by the guard, before the test's isolation saw any lookup
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any("api.openai.com" in line and "egress guard" in line for line in warnings)


def test_unhooked_clients_are_refused(gateway: GatewaySimulator) -> None:
    install_for(gateway, **GUARD)
    connection = http.client.HTTPSConnection("api.anthropic.com", timeout=5)
    with pytest.raises(egress.EgressBlocked) as caught:
        connection.request("POST", "/v1/messages", body=b"{}", headers={"x-api-key": "sk-ant-fake"})
    assert_refused_by_guard(caught.value, "api.anthropic.com")
    with pytest.raises(urllib.error.URLError) as wrapped:
        urllib.request.urlopen("https://api.openai.com/v1/models", timeout=5)
    assert_refused_by_guard(wrapped.value, "api.openai.com")


def test_the_openai_realtime_websocket_is_refused(gateway: GatewaySimulator) -> None:
    """The SDK's Realtime API is a websocket, which no hooked HTTP client carries."""
    pytest.importorskip("websockets")
    install_for(gateway, **GUARD)
    client = openai.OpenAI(api_key=OPENAI_KEY)
    with pytest.raises(OSError) as caught, client.realtime.connect(model="gpt-realtime"):
        pass
    assert_refused_by_guard(caught.value, "api.openai.com")


async def test_the_async_openai_realtime_websocket_is_refused(gateway: GatewaySimulator) -> None:
    pytest.importorskip("websockets")
    install_for(gateway, **GUARD)
    client = openai.AsyncOpenAI(api_key=OPENAI_KEY)
    with pytest.raises(OSError) as caught:
        async with client.realtime.connect(model="gpt-realtime"):
            pass
    assert_refused_by_guard(caught.value, "api.openai.com")


def test_an_unrouted_path_on_a_routed_host_is_refused(gateway: GatewaySimulator) -> None:
    """Anthropic's workload-identity exchange is not routed (item 18); with the guard on it does
    not go to the provider either, and the gateway saw nothing."""
    from anthropic.lib.credentials import WorkloadIdentityError, exchange_federation_assertion

    install_for(gateway, **GUARD)
    with pytest.raises(WorkloadIdentityError) as caught:
        exchange_federation_assertion(assertion="eyJ.fake.jwt", federation_rule_id="fdrl_x", organization_id="0")
    assert_refused_by_guard(caught.value, "api.anthropic.com")
    assert gateway.records == []


@pytest.mark.parametrize("client", ["httpx", "httpx2", "requests", "aiohttp"])
def test_an_unrouted_path_is_refused_with_every_client(gateway: GatewaySimulator, client: str) -> None:
    """Sync and async name lookups alike (aiohttp and httpx's async transports look names up
    in a worker thread): the refusal reaches the app as the client's connection error."""
    import asyncio

    import aiohttp
    import httpx
    import httpx2
    import requests

    install_for(gateway, **GUARD)
    url, body = "https://api.anthropic.com/v1/oauth/token", {"assertion": "eyJ.fake.jwt"}

    async def with_aiohttp() -> None:
        async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
            await response.read()

    async def with_httpx2() -> None:
        async with httpx2.AsyncClient() as session:
            await session.post(url, json=body)

    # Each client wraps the refusal in its own error: the chain is searched for it below.
    with pytest.raises(Exception) as caught:
        if client == "httpx":
            httpx.post(url, json=body)
        elif client == "httpx2":
            asyncio.run(with_httpx2())
        elif client == "requests":
            requests.post(url, json=body, timeout=5)
        else:
            asyncio.run(with_aiohttp())
    assert_refused_by_guard(caught.value, "api.anthropic.com")
    assert gateway.records == []


@pytest.mark.parametrize("base", ["https://api.openai.com/v1", "https://api.openai.com./v1"])
def test_routed_calls_still_go_to_the_nodes(gateway: GatewaySimulator, base: str) -> None:
    install_for(gateway, egress={"block_unrouted_providers": True, "extra_hosts": ["127.0.0.1", "localhost"]})
    client = openai.OpenAI(api_key=OPENAI_KEY, base_url=base, max_retries=0)
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content
    assert [record.key for record in gateway.records] == [GATEWAY_KEY]


def test_routed_and_extra_hosts_are_guarded(gateway: GatewaySimulator) -> None:
    install_for(
        gateway,
        routes={"llm.internal.example": "openai"},
        egress={"block_unrouted_providers": True, "extra_hosts": ["Models.Example.AI."]},
    )
    for host in ("llm.internal.example", "models.example.ai", "openrouter.ai", "api.mistral.ai"):
        with pytest.raises(egress.EgressBlocked, match=host.replace(".", r"\.")):
            socket.getaddrinfo(host, 443)


def test_off_by_default_and_a_no_op_after_uninstall(gateway: GatewaySimulator) -> None:
    install_for(gateway)
    assert not egress.active()
    with pytest.raises(WouldReachInternet):  # the guard let it pass; the test's isolation stopped it
        socket.getaddrinfo("api.openai.com", 443)
    install_for(gateway, **GUARD)
    assert egress.active()
    yibu_middleware.uninstall()
    assert not egress.active()
    with pytest.raises(WouldReachInternet):
        socket.getaddrinfo("api.openai.com", 443)
    install_for(gateway, **GUARD)
    install_for(gateway)  # settings without the guard switch it off
    with pytest.raises(WouldReachInternet):
        socket.getaddrinfo("api.openai.com", 443)


def test_egress_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIBU_EGRESS__BLOCK_UNROUTED_PROVIDERS", "true")
    monkeypatch.setenv("YIBU_EGRESS__EXTRA_HOSTS", "a.example, B.Example.")
    settings = load_settings()
    assert settings.egress.block_unrouted_providers
    assert settings.egress.extra_hosts == ["a.example", "b.example"]


@pytest.mark.parametrize("host", ["https://a.example/v1", "a.example:443"])
def test_extra_hosts_are_host_names(host: str) -> None:
    with pytest.raises(ConfigError, match=r"egress\.extra_hosts"):
        load_settings({"egress": {"extra_hosts": [host]}})


def test_guarded_hosts_never_include_a_node() -> None:
    hosts = egress.guarded_hosts(["api.openai.com", "gw.example"], ["x.example"], ["gw.example"])
    assert {"api.openai.com", "api.anthropic.com", "x.example"} <= hosts
    assert "gw.example" not in hosts
