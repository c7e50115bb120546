"""The hooks, in process, with the real client libraries against the simulator over loopback."""

from __future__ import annotations

import asyncio

import anthropic
import httpx
import httpx2
import openai
import pytest
from helpers import ANTHROPIC_KEY, GATEWAY_KEY, OPENAI_KEY, assert_no_provider_key, install_for
from openai import DefaultAioHttpClient

import yibu_middleware
from yibu_middleware.hooks import HOOKS
from yibu_middleware.simulator import GatewaySimulator

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def chat(client: openai.OpenAI, **extra: object) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], **extra)


def test_openai_default_client_goes_to_gateway_with_gateway_key(gateway: GatewaySimulator) -> None:
    install_for(gateway)
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    reply = chat(client)
    assert "Hello from yibu simulator" in (reply.choices[0].message.content or "")
    vectors = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(vectors.data) == 2
    assert len(client.models.list().data) > 0
    records = gateway.records
    assert [r.path for r in records] == ["/v1/chat/completions", "/v1/embeddings", "/v1/models"]
    assert {r.key for r in records} == {GATEWAY_KEY}
    assert_no_provider_key(gateway)


def test_openai_async_concurrent_calls_spread_over_nodes(gateway: GatewaySimulator) -> None:
    install_for(gateway)

    async def main() -> list[str]:
        async with openai.AsyncOpenAI(api_key=OPENAI_KEY, max_retries=0) as client:
            replies = await asyncio.gather(*(client.chat.completions.create(**CHAT) for _ in range(12)))  # type: ignore[call-overload]
        return [reply.choices[0].message.content for reply in replies]

    assert len(asyncio.run(main())) == 12
    records = gateway.records
    assert len(records) == 12 and {r.key for r in records} == {GATEWAY_KEY}
    assert {r.node for r in records} == {"a", "b", "c"}  # concurrent calls spread over every node


def test_stream_passes_chunk_by_chunk(gateway: GatewaySimulator) -> None:
    """A stream cut after two events: the two arrive before the error, so nothing is buffered."""
    install_for(gateway, nodes=[gateway.node("a").base_url])
    gateway.set_faults("a", cut_stream_after=2)
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    received = []
    with pytest.raises((openai.APIError, httpx2.HTTPError)):
        for chunk in chat(client, stream=True):
            received.append(chunk)
    assert len(received) == 2


def test_stream_with_usage(gateway: GatewaySimulator) -> None:
    install_for(gateway)
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Hello from yibu simulator")


def test_model_alias_rewrites_body(gateway: GatewaySimulator) -> None:
    install_for(gateway, model_aliases={"gpt-4": "gpt-5.2"})
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    reply = client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "é"}])
    assert reply.model == "gpt-5.2"
    (record,) = gateway.records
    assert record.model == "gpt-5.2" and record.body["messages"][0]["content"] == "é"


def test_anthropic_sync_and_stream(gateway: GatewaySimulator) -> None:
    install_for(gateway)
    client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, max_retries=0)
    message = client.messages.create(
        model="claude-sonnet-5-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].type == "text"
    with client.messages.stream(
        model="claude-sonnet-5-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        assert "Hello" in "".join(stream.text_stream)
    records = gateway.records
    assert [r.path for r in records] == ["/v1/messages", "/v1/messages"]
    assert {r.key for r in records} == {GATEWAY_KEY}
    assert_no_provider_key(gateway)


def test_anthropic_async(gateway: GatewaySimulator) -> None:
    install_for(gateway)

    async def main() -> str:
        client = anthropic.AsyncAnthropic(api_key=ANTHROPIC_KEY, max_retries=0)
        message = await client.messages.create(
            model="claude-sonnet-5-5", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
        )
        return message.content[0].text  # type: ignore[union-attr]

    assert "Hello" in asyncio.run(main())
    assert [r.key for r in gateway.records] == [GATEWAY_KEY]


@pytest.mark.parametrize("library", [httpx, httpx2], ids=["httpx", "httpx2"])
def test_plain_clients_sync_and_async(gateway: GatewaySimulator, library: object) -> None:
    install_for(gateway)
    headers = {"Authorization": f"Bearer {OPENAI_KEY}"}
    with library.Client() as client:  # type: ignore[attr-defined]
        response = client.post("https://api.openai.com/v1/chat/completions?trace=1", json=CHAT, headers=headers)
        assert response.status_code == 200

    async def main() -> int:
        async with library.AsyncClient() as client:  # type: ignore[attr-defined]
            response = await client.post("https://api.openai.com/v1/chat/completions", json=CHAT, headers=headers)
            return int(response.status_code)

    assert asyncio.run(main()) == 200
    first, second = gateway.records
    assert first.query == "trace=1" and second.query == ""
    assert {first.key, second.key} == {GATEWAY_KEY}


def test_openai_given_a_legacy_httpx_client(gateway: GatewaySimulator) -> None:
    install_for(gateway)
    client = openai.OpenAI(api_key=OPENAI_KEY, http_client=httpx.Client(), max_retries=0)
    assert chat(client).choices[0].message.content
    assert [r.key for r in gateway.records] == [GATEWAY_KEY]


def test_openai_aiohttp_transport(gateway: GatewaySimulator) -> None:
    install_for(gateway)

    async def main() -> None:
        async with openai.AsyncOpenAI(api_key=OPENAI_KEY, http_client=DefaultAioHttpClient(), max_retries=0) as c:
            await asyncio.gather(*(c.chat.completions.create(**CHAT) for _ in range(3)))  # type: ignore[call-overload]
            stream = await c.chat.completions.create(**CHAT, stream=True)  # type: ignore[call-overload]
            assert [chunk async for chunk in stream]

    asyncio.run(main())
    assert len(gateway.records) == 4  # one request each: handled once, never twice
    assert {r.key for r in gateway.records} == {GATEWAY_KEY}


def test_unrouted_host_passes_untouched(gateway: GatewaySimulator) -> None:
    install_for(gateway)
    node = gateway.node("b")
    with httpx2.Client() as client:
        response = client.post(
            f"{node.base_url}/chat/completions",
            json=CHAT,
            headers={"Authorization": f"Bearer {GATEWAY_KEY}x"},
        )
    assert response.status_code == 401  # sent as the app sent it: the wrong key was not swapped
    (record,) = gateway.records
    assert record.node == "b" and record.key == GATEWAY_KEY + "x"


def test_without_gateway_key_callers_key_passes(gateway: GatewaySimulator) -> None:
    install_for(gateway, api_key=None, keys={"pass_through": True})  # asked for explicitly
    client = openai.OpenAI(api_key=GATEWAY_KEY, max_retries=0)  # an app that was given a gateway key
    chat(client)
    assert [r.key for r in gateway.records] == [GATEWAY_KEY]


def test_refused_node_fails_over_at_once(gateway: GatewaySimulator) -> None:
    gateway.set_faults("a", refuse=True)
    install_for(gateway)
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    for _ in range(6):
        chat(client)
    nodes = [r.node for r in gateway.records]
    assert len(nodes) == 6 and "a" not in nodes


def test_every_node_down_answers_once_with_each_node_named(gateway: GatewaySimulator) -> None:
    for node in gateway.nodes:
        gateway.set_faults(node.name, refuse=True)
    install_for(gateway)
    client = openai.OpenAI(api_key=OPENAI_KEY)  # the SDK's own retries left on
    with pytest.raises(openai.InternalServerError) as caught:
        chat(client)
    assert caught.value.status_code == 503
    assert caught.value.response.headers["x-should-retry"] == "false"
    message = str(caught.value)
    for node in gateway.nodes:
        assert f"127.0.0.1:{node.port}" in message
    assert OPENAI_KEY not in message and GATEWAY_KEY not in message
    assert HOOKS[1].patched  # httpx2 carried it


def test_install_is_idempotent_and_uninstall_restores_exactly(gateway: GatewaySimulator) -> None:
    originals = {
        (cls, name): cls.__dict__[name]
        for cls, name in [
            (httpx.HTTPTransport, "handle_request"),
            (httpx.AsyncHTTPTransport, "handle_async_request"),
            (httpx2.HTTPTransport, "handle_request"),
            (httpx2.AsyncHTTPTransport, "handle_async_request"),
        ]
    }
    install_for(gateway)
    install_for(gateway)
    for (cls, name), original in originals.items():
        wrapper = cls.__dict__[name]
        assert wrapper is not original and wrapper.__wrapped__ is original  # wrapped once, not twice
    yibu_middleware.uninstall()
    yibu_middleware.uninstall()
    for (cls, name), original in originals.items():
        assert cls.__dict__[name] is original
    assert not any(hook.patched for hook in HOOKS)


def test_reinstall_after_uninstall_routes_again(gateway: GatewaySimulator) -> None:
    install_for(gateway)
    yibu_middleware.uninstall()
    install_for(gateway)
    chat(openai.OpenAI(api_key=OPENAI_KEY, max_retries=0))
    assert [r.key for r in gateway.records] == [GATEWAY_KEY]


def test_isinstance_checks_still_hold(gateway: GatewaySimulator) -> None:
    install_for(gateway)
    client = openai.OpenAI(api_key=OPENAI_KEY)
    assert isinstance(client._client, httpx2.Client)
    assert type(httpx2.HTTPTransport()) is httpx2.HTTPTransport


@pytest.mark.parametrize("affinity", [False, True])
def test_slow_node_gets_less_traffic(gateway: GatewaySimulator, affinity: bool) -> None:
    # 200 ms: far above any pause a loaded machine puts on the other two nodes' answers (a
    # 50 ms one made a or b look as slow as c for the rest of the test, once in many runs).
    gateway.set_faults("c", latency=0.2)
    install_for(gateway, affinity={"enabled": affinity})
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    for number in range(30):  # with affinity: 30 conversations, each on its ring node unless that is slow
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"hi {number}"}])
    nodes = [r.node for r in gateway.records]
    assert len(nodes) == 30 and nodes.count("c") < nodes.count("a") and nodes.count("c") < nodes.count("b")


def test_sdk_sees_gateway_errors_as_usual(gateway: GatewaySimulator) -> None:
    gateway.set_faults(
        "a",
        status_override=403,
        status_body={"error": {"message": "no quota", "type": "x", "code": "insufficient_user_quota"}},
    )
    install_for(gateway, nodes=[gateway.node("a").base_url])
    with pytest.raises(openai.PermissionDeniedError):
        chat(openai.OpenAI(api_key=OPENAI_KEY, max_retries=0))


def test_x_api_key_and_azure_api_key_are_swapped_too(gateway: GatewaySimulator) -> None:
    install_for(gateway)
    with httpx2.Client() as client:
        client.post(
            "https://api.anthropic.com/v1/messages",
            json={"model": "claude-sonnet-5-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"},
        ).raise_for_status()
        client.post(
            "https://api.openai.com/v1/chat/completions", json=CHAT, headers={"api-key": OPENAI_KEY}
        ).raise_for_status()
    assert [(r.key_header, r.key) for r in gateway.records] == [("x-api-key", GATEWAY_KEY), ("api-key", GATEWAY_KEY)]
    assert_no_provider_key(gateway)


@pytest.mark.parametrize(
    ("sdk_read_timeout", "cut", "own"),
    [
        (None, False, {"connect": 5.0, "read": 600.0, "write": 600.0, "pool": 600.0}),
        (b"600", False, {"connect": 5.0, "read": 600.0, "write": 600.0, "pool": 600.0}),
        (b"2", True, {"connect": 5.0, "read": 600.0, "write": 600.0, "pool": 600.0}),
        (b"2", True, {"connect": 5.0, "read": 600.0, "write": None, "pool": 600.0}),  # None: no limit
        (b"2", True, {"connect": 1.0}),  # the ones missing get the deadline
    ],
)
def test_attempt_timeouts_cut_to_the_deadline_else_the_apps_own(
    gateway: GatewaySimulator, sdk_read_timeout: bytes | None, cut: bool, own: dict[str, float | None]
) -> None:
    """Each attempt's timeouts are cut to what is left of the call's deadline (here the SDK's
    read timeout); when nothing is cut, the app's own timeouts are sent as they are."""
    from yibu_middleware.core.plan import Send
    from yibu_middleware.hooks.httpx._sync.adapter import SyncHttpxAdapter
    from yibu_middleware.hooks.httpx.adapter import failure_kinds
    from yibu_middleware.pipeline.call import Call
    from yibu_middleware.runtime import current

    install_for(gateway)
    runtime = current()
    assert runtime is not None
    headers = {"authorization": f"Bearer {OPENAI_KEY}"}
    if sdk_read_timeout is not None:
        headers["x-stainless-read-timeout"] = sdk_read_timeout.decode()
    own = dict(own)
    request = httpx2.Request(
        "POST",
        "https://api.openai.com/v1/chat/completions",
        headers=headers,
        content=b"{}",
        extensions={"timeout": own},
    )
    route = runtime.routes.match("api.openai.com", 443, "/v1/chat/completions")
    assert route is not None
    adapter = SyncHttpxAdapter(httpx2, failure_kinds(httpx2), request, httpx2.HTTPTransport().handle_request)
    call = Call(runtime, route, adapter)
    action = call.plan.start()
    assert isinstance(action, Send)
    sent = adapter.request_for(call, action)
    call.abort()
    timeouts = sent.extensions["timeout"]
    if cut:
        assert sorted(timeouts) == ["connect", "pool", "read", "write"]
        assert all(value is not None and 0 < value <= 2.0 for value in timeouts.values())
        assert request.extensions["timeout"] == own  # the app's own are left as they were
    else:
        assert sent.extensions == request.extensions  # the app's own timeouts, as they were


def test_a_release_older_than_the_supported_one_stops_the_import_with_how_to_fix() -> None:
    """Supported versions are checked when the library is imported: here a requests hook that asks
    for a release newer than the one installed."""
    import importlib.metadata

    import requests as requests_module

    from yibu_middleware.errors import YibuError
    from yibu_middleware.hooks.base import installed_version, release
    from yibu_middleware.hooks.requests import RequestsHook

    assert release("2.32.3") == (2, 32, 3) and release("3.12.0rc1") == (3, 12, 0) and release("dev") == ()
    # Read from the module's __version__ (no metadata scan at start-up): the installed release.
    assert installed_version("requests") == requests_module.__version__ == importlib.metadata.version("requests")
    assert installed_version("no-such-distribution-here") is None
    hook = RequestsHook()
    hook.minimum = (99,)
    installed = importlib.metadata.version("requests")
    with pytest.raises(YibuError) as raised:
        hook.apply(requests_module)
    message = str(raised.value)
    assert f"requests 99 or newer, and {installed} is installed" in message
    assert "YIBU_HOOKS__REQUESTS__ENABLED=false" in message and not hook.patched
    hook.minimum = release(installed)
    hook.apply(requests_module)  # the oldest supported release itself is accepted
    assert hook.patched
    hook.unpatch()
