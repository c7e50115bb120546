"""Routing that holds against every spelling of a provider's host (issue 14, items 6, 18, 19).

Every request below is sent by a real client to the simulator over loopback, under
``offline()``: a request that is not routed tries to leave loopback and fails here, at once,
instead of reaching a provider; the assertions then find nothing at the simulator.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import anthropic
import httpx
import httpx2
import openai
import pytest
import requests
from helpers import ANTHROPIC_KEY, GATEWAY_KEY, OPENAI_KEY, assert_no_provider_key, install_for
from offline import offline

from yibu_middleware.core import routes
from yibu_middleware.errors import ConfigError
from yibu_middleware.settings import load_settings
from yibu_middleware.simulator import GatewaySimulator

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
OPENAI_HEADERS = {"Authorization": f"Bearer {OPENAI_KEY}"}
# A JWT-shaped identity token (fake): it must never reach the gateway.
IDENTITY_JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YXBwIn0.c2lnbmF0dXJlLW5vdC1yZWFs"


@pytest.fixture(autouse=True)
def _offline() -> Iterator[list[str]]:
    with offline() as refused:
        yield refused


def send(client: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> int:
    """POST (or GET with no body) with the named client; the status, or -1 when it could not connect."""
    headers = OPENAI_HEADERS if headers is None else headers
    method = "GET" if body is None else "POST"
    try:
        if client == "openai":
            sdk = openai.OpenAI(api_key=OPENAI_KEY, base_url=url, max_retries=0)
            sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            return 200
        if client in ("httpx", "httpx2"):
            lib: Any = httpx if client == "httpx" else httpx2
            with lib.Client() as session:
                return int(session.request(method, url, json=body, headers=headers).status_code)
        if client == "httpx-async":

            async def go() -> int:
                async with httpx.AsyncClient() as session:
                    return int((await session.request(method, url, json=body, headers=headers)).status_code)

            return asyncio.run(go())
        if client == "requests":
            return requests.request(method, url, json=body, headers=headers, timeout=10).status_code
        if client == "aiohttp":

            async def go_aiohttp() -> int:
                async with (
                    aiohttp.ClientSession() as session,
                    session.request(method, url, json=body, headers=headers) as response,
                ):
                    await response.read()
                    return response.status

            return asyncio.run(go_aiohttp())
    except (openai.APIConnectionError, httpx.ConnectError, httpx2.ConnectError, requests.ConnectionError):
        return -1
    except aiohttp.ClientConnectionError:
        return -1
    except (httpx.InvalidURL, httpx2.InvalidURL, requests.exceptions.InvalidURL, aiohttp.InvalidURL):
        return -2  # the client refused the URL itself: nothing was sent anywhere
    raise AssertionError(client)


FULLWIDTH_API = "https://\uff41\uff50\uff49"  # "api" in fullwidth letters
CLIENTS = ["openai", "httpx", "httpx2", "httpx-async", "requests", "aiohttp"]


# --- item 6: hosts compared the way DNS compares them ------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(
    "base",
    [
        "https://api.openai.com./v1",  # the fully qualified name
        "https://API.OpenAI.COM/v1",
        "https://api.openai.com:443/v1",
        "https://API.OPENAI.COM.:443/v1",
    ],
    ids=["trailing-dot", "case", "default-port", "all-three"],
)
def test_every_spelling_of_a_provider_host_is_routed(gateway: GatewaySimulator, client: str, base: str) -> None:
    install_for(gateway)
    url = base if client == "openai" else base + "/chat/completions"
    assert send(client, url, CHAT) == 200
    (record,) = gateway.records
    assert record.path == "/v1/chat/completions" and record.key == GATEWAY_KEY
    assert_no_provider_key(gateway)


@pytest.mark.parametrize("client", ["httpx", "httpx2", "requests", "aiohttp"])
def test_a_unicode_spelling_that_encodes_to_a_routed_host_is_routed(gateway: GatewaySimulator, client: str) -> None:
    """Fullwidth letters map to ASCII under IDNA (UTS 46): a client that accepts the name (aiohttp)
    sends to api.openai.com, so it must be routed; the others refuse the URL outright."""
    install_for(gateway)
    status = send(client, FULLWIDTH_API + ".openai.com/v1/models")
    assert status in (200, -2)
    assert [record.key for record in gateway.records] == ([GATEWAY_KEY] if status == 200 else [])


def test_unicode_route_keys_match_their_encoded_and_decoded_forms(gateway: GatewaySimulator) -> None:
    install_for(gateway, routes={"bücher.example": "openai"})
    for url in ("https://bücher.example/v1/models", "https://xn--bcher-kva.example./v1/models"):
        assert send("httpx", url) == 200
        assert send("requests", url) == 200
    assert len(gateway.records) == 4


def test_route_table_compares_hosts_as_dns_does() -> None:
    table = routes.RouteTable(
        [routes.Route("api.openai.com", "openai", "/v1"), routes.Route("127.0.0.1", "openai", "/v1", 4010)]
    )
    for host in (
        "api.openai.com",
        "API.OPENAI.COM",
        "api.openai.com.",
        "\uff41\uff50\uff49.\uff4f\uff50\uff45\uff4e\uff41\uff49.\uff43\uff4f\uff4d",
    ):
        assert table.match(host, 443, "/v1/chat/completions") is not None, host
    assert table.match("api.openai.com", 8443, "/v1/models") is not None  # a host key: any port
    assert table.match("api.openai.com..", 443, "/v1/models") is None
    assert table.match("openai.com", 443, "/v1/models") is None
    assert table.match("127.0.0.1", 4010, "/v1/models") is not None
    assert table.match("127.0.0.1", 4011, "/v1/models") is None
    assert table.match("127.0.0.1", None, "/v1/models") is None


def test_canonical_host() -> None:
    assert routes.canonical_host("API.OpenAI.com.") == "api.openai.com"
    assert routes.canonical_host("Bücher.example") == "xn--bcher-kva.example"
    with pytest.raises(ValueError, match="not a valid host name"):
        routes.canonical_host("a\u200bb..c\u0000")


# --- item 19: route keys that could never match ---------------------------------------------------


def test_host_port_route_keys_route_that_port_only(gateway: GatewaySimulator) -> None:
    """A local OpenAI-compatible server (say 127.0.0.1:<port>) routed by host:port; the nodes, on
    the same host but other ports, are not. Nothing listens on the routed port: unrouted, the
    call would fail."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    install_for(gateway, routes={f"127.0.0.1:{port}": "openai"})
    for client in ("httpx", "requests", "aiohttp"):
        assert send(client, f"http://127.0.0.1:{port}/v1/chat/completions", CHAT) == 200, client
    assert [record.key for record in gateway.records] == [GATEWAY_KEY] * 3


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        ("https://api.x.com/v1", "'api.x.com'"),
        ("api.x.com/v1", "'api.x.com'"),
        ("http://127.0.0.1:4010/v1", "'127.0.0.1:4010'"),
        ("sk@api.x.com", "'api.x.com'"),
    ],
)
def test_url_route_keys_are_settings_errors_showing_the_right_form(key: str, shown: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"routes": {key: "openai"}})
    message = str(caught.value)
    assert "is a URL" in message and shown in message and "strip_prefix" in message


@pytest.mark.parametrize("key", ["api.x.com:99999", "api.x.com:http", "::1:80", ":443", "[::1"])
def test_bad_ports_and_hosts_in_route_keys_are_settings_errors(key: str) -> None:
    with pytest.raises(ConfigError, match="routes"):
        load_settings({"routes": {key: "openai"}})


def test_route_keys_are_normalised_and_removals_match_any_spelling() -> None:
    settings = load_settings(
        {"routes": {"API.DeepSeek.com.": "openai", "API.OPENAI.COM.": False, "[::1]:8000": "anthropic"}}
    )
    assert set(settings.routes) == {"api.anthropic.com", "api.deepseek.com", "[::1]:8000"}
    assert routes.parse_route_key("[::1]:8000") == ("::1", 8000)
    assert routes.parse_route_key("Bücher.Example:8443") == ("xn--bcher-kva.example", 8443)


def test_a_node_on_a_routed_host_port_is_refused(gateway: GatewaySimulator) -> None:
    node = gateway.nodes[0]
    with pytest.raises(ConfigError, match="requests would loop"):
        install_for(gateway, routes={f"127.0.0.1:{node.port}": "openai"})


# --- item 18: only what the gateway serves is routed ----------------------------------------------


def test_anthropic_workload_identity_exchange_never_reaches_the_gateway(
    gateway: GatewaySimulator, _offline: list[str]
) -> None:
    """The SDK's jwt-bearer exchange (POST api.anthropic.com/v1/oauth/token) is an identity call,
    not a model call: it goes where the app sent it (here: refused by the test's isolation)."""
    from anthropic.lib.credentials import WorkloadIdentityError, exchange_federation_assertion

    install_for(gateway)
    with pytest.raises(WorkloadIdentityError, match="Failed to reach token endpoint"):
        exchange_federation_assertion(
            assertion=IDENTITY_JWT, federation_rule_id="fdrl_test", organization_id="00000000-0000-0000-0000-0"
        )
    assert gateway.records == []
    assert "api.anthropic.com" in _offline  # it went for the provider, untouched


@pytest.mark.parametrize("client", ["httpx", "httpx2", "requests", "aiohttp"])
@pytest.mark.parametrize(
    "url",
    [
        "https://api.anthropic.com/v1/oauth/token",
        "https://api.openai.com/v1/organization/admin_api_keys",
        "https://api.openai.com/v2/chat/completions",
        "https://api.openai.com/",
    ],
)
def test_paths_outside_the_model_api_are_not_routed(gateway: GatewaySimulator, client: str, url: str) -> None:
    install_for(gateway)
    body = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": IDENTITY_JWT}
    assert send(client, url, body, {"x-api-key": ANTHROPIC_KEY}) == -1  # went for the provider: refused offline
    assert gateway.records == []


@pytest.mark.parametrize(
    "url",
    [
        "https://api.anthropic.com/v1/messages",
        "https://api.anthropic.com/v1/messages/count_tokens",
        "https://api.openai.com/v1/chat/completions",
        "https://api.openai.com/v1/embeddings",
    ],
)
def test_model_api_paths_are_routed(gateway: GatewaySimulator, url: str) -> None:
    install_for(gateway)
    body = {**CHAT, "max_tokens": 5, "input": "hi"}
    assert send("httpx", url, body, {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}) == 200
    assert len(gateway.records) == 1 and gateway.records[0].key == GATEWAY_KEY


def test_anthropic_sdk_messages_still_routed(gateway: GatewaySimulator) -> None:
    install_for(gateway)
    client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, max_retries=0)
    message = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.type == "message"
    assert client.messages.count_tokens(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}])
    assert [record.path for record in gateway.records] == ["/v1/messages", "/v1/messages/count_tokens"]


def test_route_paths_add_what_an_openai_compatible_host_serves(gateway: GatewaySimulator) -> None:
    install_for(gateway, routes={"api.deepseek.com": {"provider": "openai", "paths": ["/beta"]}})
    assert send("httpx", "https://api.deepseek.com/beta/completions", {"model": "deepseek-chat", "prompt": "x"}) != -1
    assert send("httpx", "https://api.deepseek.com/other", {"model": "deepseek-chat"}) == -1
    assert [record.path for record in gateway.records] == ["/v1/beta/completions"]


def test_route_paths_slash_routes_every_path(gateway: GatewaySimulator) -> None:
    install_for(gateway, routes={"api.deepseek.com": {"provider": "openai", "paths": ["/"]}})
    assert send("httpx", "https://api.deepseek.com/anything/at/all", {"model": "x"}) != -1
    assert len(gateway.records) == 1


@pytest.mark.parametrize("paths", [["beta"], ["/beta?x=1"], ["https://x/beta"]])
def test_bad_route_paths_are_settings_errors(paths: list[str]) -> None:
    with pytest.raises(ConfigError, match="is not a path"):
        load_settings({"routes": {"api.deepseek.com": {"provider": "openai", "paths": paths}}})


def test_routes_from_the_environment_are_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIBU_ROUTES", json.dumps({"API.Groq.com.": {"provider": "openai", "paths": ["/x"]}}))
    settings = load_settings()
    assert settings.routes["api.groq.com"].paths == ("/x",)


def test_route_answers_are_remembered_within_bounds() -> None:
    """An app whose paths hold ids, or that sends to many hosts, does not grow the table."""
    table = routes.RouteTable([routes.Route("api.openai.com", "openai", "/v1")])
    for index in range(5000):
        assert table.match("api.openai.com", 443, f"/v1/files/file-{index}") is not None
        assert table.match(f"host-{index}.example", 443, "/v1/files") is None
        assert table.match(f"API.OPENAI.COM{'.' * (index % 2)}", 443, "/v1/models") is not None
    served = table._hosts["api.openai.com"].any_port
    assert served is not None and len(served.seen) <= 1024
    assert len(table._others) <= 1024 and len(table._lookup) <= 1 + 256


def test_a_provider_path_left_unrouted_is_logged_once(
    gateway: GatewaySimulator, caplog: pytest.LogCaptureFixture
) -> None:
    """No provider path goes around the gateway without a word: a warning, once per path, naming
    the setting that would route it (and never the rest of the path, which may hold ids)."""
    import logging

    install_for(gateway)
    with caplog.at_level(logging.WARNING, "yibu_middleware"):
        for secret_id in ("org-aaa111", "org-bbb222"):
            assert send("httpx", f"https://api.openai.com/v1/skills/{secret_id}", {"x": 1}) == -1
    lines = [record.getMessage() for record in caplog.records if "not routed" in record.getMessage()]
    assert len(lines) == 1
    assert "api.openai.com/v1/skills" in lines[0] and "routes.api.openai.com.paths = ['/skills']" in lines[0]
    assert "org-" not in lines[0] and "egress.block_unrouted_providers" in lines[0]
