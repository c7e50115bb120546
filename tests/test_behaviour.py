"""One behaviour suite, run on every client the middleware serves (``clients.py``).

Each behaviour the README states is written once here and parametrised over every client:
httpx and httpx2 sync and async, the openai and anthropic SDKs on their default and aiohttp
transports, requests, aiohttp, and the composition transport. Real libraries, real HTTP over
loopback to the gateway simulator: routing and aliases, failover, giving up (503, 429, a gateway's
refusal, a deadline), streams (commit at the first content, a cut or truncation after it, a
stall), limits and policy, hedging, spans and trace context, and keys kept out of log records.

A combination that does not apply is skipped with its reason (none today); one that fails
because of a bug in the library is an ``xfail(strict=True)`` naming the bug, so that the fix
makes it fail until the mark is removed. A new client library is added in ``clients.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
import requests
from clients import CLIENT_NAMES, Client, Seen, make
from helpers import GATEWAY_KEY, PROVIDER_KEYS, assert_no_provider_key
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from yibu_middleware.simulator import GatewaySimulator

ALL_KEYS = (*PROVIDER_KEYS, GATEWAY_KEY)


def every_client(**marks: Any) -> list[Any]:
    """Every client name as a parameter; ``marks`` maps a name to the marks of that combination."""
    return [pytest.param(name, id=name, marks=marks.get(name.replace("-", "_"), ())) for name in CLIENT_NAMES]


@pytest.fixture
def client(request: pytest.FixtureRequest) -> Iterator[Client]:
    """The client named by the test's parameter; closed after the test (before the middleware is
    uninstalled by conftest's clean-up)."""
    made = make(request.param)
    yield made
    if hasattr(made, "gateway"):  # started
        made.close()


def node_address(gateway: GatewaySimulator, name: str) -> str:
    return f"127.0.0.1:{gateway.node(name).port}"


def served_by(seen: Seen) -> str:
    """The simulator's reply names its node (``... node 'b' ...``)."""
    return seen.text.split("node '", 1)[1].split("'", 1)[0] if "node '" in seen.text else "?"


def refusal(client: Client, seen: Seen) -> str:
    """The message of an error answer of ours: in the provider's format and marked not to retry
    (``x-should-retry: false``, which the SDKs obey). Fails when it is not."""
    assert seen.headers.get("x-should-retry") == "false", seen.headers
    body = seen.body
    assert isinstance(body, dict), f"not a JSON error body: {seen.text!r}"
    if client.provider == "anthropic":
        assert body.get("type") == "error", f"not Anthropic's error format: {body!r}"
    else:
        assert "type" not in body, f"not OpenAI's error format: {body!r}"
    return str(body["error"]["message"])


def assert_sdk_error(client: Client, seen: Seen, name: str) -> None:
    """An SDK raised its usual error class for the status (plain clients get the response itself)."""
    if client.sdk:
        assert isinstance(seen.error, getattr(openai if client.provider == "openai" else anthropic, name))
    else:
        assert seen.error is None


# --- routing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("client", every_client(), indirect=True)
def test_routed_with_the_gateway_key_and_never_the_providers(gateway: GatewaySimulator, client: Client) -> None:
    seen = client.start(gateway).chat()
    assert seen.status == 200 and "Hello from yibu simulator" in seen.text, seen
    streamed = client.stream()
    assert streamed.error is None and streamed.text.startswith("Hello from yibu simulator"), streamed
    assert [(record.path, record.key, record.stream) for record in gateway.records] == [
        (client.path, GATEWAY_KEY, False),
        (client.path, GATEWAY_KEY, True),
    ]
    assert_no_provider_key(gateway)


@pytest.mark.parametrize("client", every_client(), indirect=True)
def test_a_model_alias_is_sent_in_place_of_the_apps_model(gateway: GatewaySimulator, client: Client) -> None:
    seen = client.start(gateway, model_aliases={client.model: "gpt-5.2"}).chat()
    assert seen.status == 200, seen
    (record,) = gateway.records
    assert record.model == "gpt-5.2" and record.body["messages"] == [{"role": "user", "content": "hi"}]


# --- failover and giving up -----------------------------------------------------------------------


@pytest.mark.parametrize("client", every_client(), indirect=True)
@pytest.mark.parametrize("fault", [{"status_override": 503}, {"refuse": True}], ids=["503", "refused"])
def test_fails_over_off_a_failing_node(gateway: GatewaySimulator, client: Client, fault: dict[str, Any]) -> None:
    gateway.set_faults("a", **fault)
    seen = client.start(gateway, pin=gateway.node("a").base_url).chat()  # every call tries "a" first
    assert seen.status == 200 and served_by(seen) in {"b", "c"}, seen
    assert [record.status for record in gateway.records_for("a")] == ([503] if "status_override" in fault else [])
    assert len(gateway.records) == len(gateway.records_for("a")) + 1  # one more attempt, which answered
    assert_no_provider_key(gateway)


def _give_up_cases() -> list[Any]:
    cases = []
    for fault, id_ in (({"status_override": 503}, "503"), ({"refuse": True}, "refused")):
        for param in every_client():
            (name,) = param.values
            cases.append(pytest.param(name, fault, id=f"{id_}-{name}"))
    return cases


@pytest.mark.parametrize(("client", "fault"), _give_up_cases(), indirect=["client"])
def test_gives_up_with_a_503_in_the_providers_format_when_every_node_is_down(
    gateway: GatewaySimulator, client: Client, fault: dict[str, Any]
) -> None:
    """The README's "When an attempt fails": every node refused, or every node answered 503. The app
    gets a 503 in its provider's format naming each node tried, marked not to retry, so an SDK with
    its default retries raises its ``InternalServerError`` at once instead of retrying dead nodes."""
    for node in gateway.nodes:
        gateway.set_faults(node.name, **fault)
    client.start(gateway, sdk_retries=2)
    for seen in (client.chat(), client.stream()):
        assert seen.status == 503, seen
        message = refusal(client, seen)
        assert "yibu-middleware" in message
        assert all(node_address(gateway, node.name) in message for node in gateway.nodes), message
        assert_sdk_error(client, seen, "InternalServerError")
        for key in ALL_KEYS:
            assert key not in seen.text
    # one attempt per node and call: neither the library nor the SDK went round again
    assert len(gateway.records) == (6 if "status_override" in fault else 0)


@pytest.mark.parametrize("client", every_client(), indirect=True)
def test_a_gateway_refusal_is_handed_back_at_once_never_retried(gateway: GatewaySimulator, client: Client) -> None:
    """A quota answer means the same on every node: one attempt, handed back marked not to retry."""
    body = {"error": {"message": "no quota left", "type": "x", "code": "insufficient_user_quota"}}
    for node in gateway.nodes:
        gateway.set_faults(node.name, status_override=403, status_body=body)
    seen = client.start(gateway, sdk_retries=2).chat()
    assert seen.status == 403 and seen.headers.get("x-should-retry") == "false", seen
    assert "insufficient_user_quota" in seen.text
    assert_sdk_error(client, seen, "PermissionDeniedError")
    assert len(gateway.records) == 1


@pytest.mark.parametrize("client", every_client(), indirect=True)
def test_429_everywhere_is_handed_back_after_trying_each_node(gateway: GatewaySimulator, client: Client) -> None:
    for node in gateway.nodes:
        gateway.set_faults(node.name, rate_limit_rate=1.0, retry_after=0.05)
    seen = client.start(gateway, sdk_retries=2).chat()
    assert seen.status == 429 and seen.headers.get("x-should-retry") == "false", seen
    assert "yibu-middleware tried:" in seen.text
    assert_sdk_error(client, seen, "RateLimitError")
    assert sorted(record.node for record in gateway.records) == ["a", "b", "c"]  # each once, no SDK rounds


def own_timeout(client: Client) -> type[BaseException] | tuple[type[BaseException], ...]:
    """What the client raises, without the middleware, for a request that runs out of time."""
    if client.sdk:
        return openai.APITimeoutError if client.provider == "openai" else anthropic.APITimeoutError
    library = getattr(client, "library", None)
    if library is not None:
        return library.ReadTimeout  # type: ignore[no-any-return]
    if client.name == "requests":
        return requests.Timeout
    return (aiohttp.ServerTimeoutError, TimeoutError)


@pytest.mark.parametrize("client", every_client(), indirect=True)
def test_a_deadline_that_runs_out_raises_the_clients_own_timeout(gateway: GatewaySimulator, client: Client) -> None:
    """No node answers within the client's 0.5 s: the app gets the timeout it knows, naming the nodes tried."""
    for node in gateway.nodes:
        gateway.set_faults(node.name, latency=2.0)
    seen = client.start(gateway, timeout=0.5).chat()
    assert isinstance(seen.error, own_timeout(client)), seen.error_text or seen
    assert "timed out" in seen.error_text, seen.error_text
    assert any(node_address(gateway, node.name) in seen.error_text for node in gateway.nodes), seen.error_text
    for key in ALL_KEYS:
        assert key not in seen.error_text


# --- streams --------------------------------------------------------------------------------------


@pytest.mark.parametrize("client", every_client(), indirect=True)
@pytest.mark.parametrize(
    "fault",
    # After the first event only (a role chunk, message_start): the connection drops, or an in-band
    # error event comes (OpenAI-compatible ``error``, Anthropic ``overloaded_error``).
    [{"cut_stream_after": 1}, {"stream_error_after": 1}],
    ids=["cut", "error-event"],
)
def test_stream_is_committed_at_its_first_content_after_a_node_failed_before_it(
    gateway: GatewaySimulator, client: Client, fault: dict[str, int]
) -> None:
    gateway.set_faults("a", **fault)
    seen = client.start(gateway, pin=gateway.node("a").base_url).stream()
    assert seen.error is None, seen.error_text
    assert seen.text.startswith("Hello from yibu simulator node") and served_by(seen) in {"b", "c"}, seen
    assert [record.node for record in gateway.records][:1] == ["a"] and len(gateway.records) == 2


@pytest.mark.parametrize("client", every_client(), indirect=True)
@pytest.mark.parametrize(
    ("fault", "said"),
    # Five events hold content in both formats; then the connection drops, or the body ends
    # cleanly without its final event ([DONE], message_stop).
    [({"cut_stream_after": 5}, "broke after its first content"), ({"truncate_stream_after": 5}, "final event")],
    ids=["cut", "truncated"],
)
def test_stream_cut_after_its_first_content_is_an_error_naming_the_node(
    gateway: GatewaySimulator, client: Client, fault: dict[str, int], said: str
) -> None:
    """Never a silently shortened answer, and never retried once content went to the app."""
    gateway.set_faults("a", **fault)
    seen = client.start(gateway, pin=gateway.node("a").base_url).stream()
    assert seen.status == 200 and seen.pieces, seen  # what came before the cut reached the app
    assert seen.error is not None, f"a cut stream ended without an error: {seen.text!r}"
    assert said in seen.error_text, seen.error_text
    assert node_address(gateway, "a") in seen.error_text, seen.error_text
    assert len(gateway.records) == 1


@pytest.mark.parametrize("client", every_client(), indirect=True)
def test_a_stalled_stream_is_retried_after_the_first_token_timeout(gateway: GatewaySimulator, client: Client) -> None:
    gateway.set_faults("a", stall_stream_after=1, stall_max=5.0)  # headers and one event, then nothing
    seen = client.start(gateway, pin=gateway.node("a").base_url, stream={"first_token_timeout": 0.3}).stream()
    assert seen.error is None and served_by(seen) in {"b", "c"}, seen.error_text or seen
    assert [record.node for record in gateway.records][:1] == ["a"] and len(gateway.records) == 2


# --- limits and policy ----------------------------------------------------------------------------


@pytest.mark.parametrize("client", every_client(), indirect=True)
def test_a_client_side_limit_refuses_without_sending(gateway: GatewaySimulator, client: Client) -> None:
    """One call per 100 s and no time to wait: the second call is a 429 naming the limit, at once."""
    client.start(gateway, sdk_retries=2, limits={"requests_per_second": 0.01, "queue_timeout": 0})
    assert client.chat().status == 200
    seen = client.chat()
    assert seen.status == 429, seen
    assert "limits.requests_per_second" in refusal(client, seen)
    assert_sdk_error(client, seen, "RateLimitError")
    assert len(gateway.records) == 1  # the refused call sent nothing


@pytest.mark.parametrize("client", every_client(), indirect=True)
def test_policy_refuses_a_model_not_allowed_without_sending(gateway: GatewaySimulator, client: Client) -> None:
    client.start(gateway, policy={"allowed_models": ["some-other-model"]})
    for seen in (client.chat(), client.stream()):
        assert seen.status == 403, seen
        message = refusal(client, seen)
        assert "policy.allowed_models" in message and client.model in message, message
        assert_sdk_error(client, seen, "PermissionDeniedError")
    assert gateway.records == []


# --- hedging --------------------------------------------------------------------------------------


@pytest.mark.parametrize("client", every_client(), indirect=True)
def test_a_hedge_answers_for_a_slow_node(gateway: GatewaySimulator, client: Client) -> None:
    """Once the p95 is known (4 answers), a call whose pinned node is slow is hedged on another
    node, and the hedge's answer is the one the app gets."""
    client.start(gateway, pin=gateway.node("a").base_url, hedge={"enabled": True, "min_samples": 4})
    for _ in range(4):
        assert served_by(client.chat()) == "a"
    gateway.set_faults("a", latency=1.0)
    seen = client.chat()
    assert seen.status == 200 and served_by(seen) in {"b", "c"}, seen
    assert [record.status for record in gateway.records if record.node != "a"] == [200]  # one hedge


# --- spans ----------------------------------------------------------------------------------------

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """An in-memory exporter on the process's SDK tracer provider. A provider can be set once per
    process, and test_tracing.py sets one when it is imported (at collection): ours is added to
    whichever is there, and one is set only when this module runs alone."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    if not getattr(provider, "_yibu_behaviour_exporter", False):
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        provider._yibu_behaviour_exporter = True  # type: ignore[attr-defined]
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def genai_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.attributes and "gen_ai.operation.name" in s.attributes]


@pytest.mark.parametrize(
    "client",
    every_client(),
    indirect=True,
)
def test_one_genai_span_per_call_with_its_attempts(
    gateway: GatewaySimulator, client: Client, spans: InMemorySpanExporter
) -> None:
    """One GenAI span per call, not per attempt, whose context reaches the gateway. Under the
    anthropic SDK's built-in tracing the span is the SDK's own, and none of ours is added (README,
    Tracing); everywhere else it is ours, naming the node that answered and each attempt."""
    gateway.set_faults("a", refuse=True)
    client.start(gateway, pin=gateway.node("a").base_url)
    assert client.chat().status == 200
    assert client.stream().error is None
    calls = genai_spans(spans)
    assert len(calls) == 2, [span.name for span in calls]
    for span, served in zip(calls, gateway.records, strict=True):
        context = span.context
        traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
        assert served.headers["traceparent"] == traceparent  # the gateway's logs join this trace
        attributes = dict(span.attributes or {})
        assert attributes["gen_ai.provider.name"] == client.provider
        if client.sdk_traces:
            assert span.name == "anthropic.messages.create"
            continue
        assert span.name == f"chat {client.model}"
        assert attributes["server.port"] == gateway.node(served.node).port
        attempts = [dict(event.attributes or {}) for event in span.events if event.name == "yibu.attempt"]
        assert [attempt["server.port"] for attempt in attempts] == [gateway.node("a").port, attributes["server.port"]]
    assert "gen_ai.response.time_to_first_chunk" in (calls[1].attributes or {})
    text = repr([(s.name, dict(s.attributes or {}), [dict(e.attributes or {}) for e in s.events]) for s in calls])
    for key in ALL_KEYS:
        assert key not in text


APP_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize("client", every_client(), indirect=True)
def test_an_apps_own_traceparent_is_replaced_never_sent_twice(
    gateway: GatewaySimulator, client: Client, spans: InMemorySpanExporter
) -> None:
    """A traceparent the app (or an outer instrumentation) already put on the request is replaced
    by the call's span's: W3C trace context allows one, and a gateway given two drops both."""
    client.start(gateway, app_headers={"traceparent": APP_TRACEPARENT})
    assert client.chat().status == 200
    (span,) = genai_spans(spans)
    (record,) = gateway.records
    context = span.context
    assert (
        record.headers["traceparent"] == f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    )


# --- redaction ------------------------------------------------------------------------------------


@pytest.mark.parametrize("client", every_client(), indirect=True)
def test_no_key_in_any_log_record_while_calls_run_at_debug(
    gateway: GatewaySimulator, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Every record made while the calls run (the SDK's, the client library's, ours), at DEBUG: a
    failover, a stream cut after content, and a give-up."""
    gateway.set_faults("a", refuse=True)
    gateway.set_faults("b", cut_stream_after=5)
    client.start(gateway, pin=gateway.node("a").base_url, log="debug")
    caplog.set_level(logging.DEBUG)
    client.chat()
    client.stream()
    for node in gateway.nodes:
        gateway.set_faults(node.name, refuse=True)
    client.chat()
    text = caplog.text + "".join(repr(record.args) for record in caplog.records)
    assert "connection failed" in text and f"model={client.model}" in text  # our lines were made
    for key in ALL_KEYS:
        assert key not in text
