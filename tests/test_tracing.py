"""GenAI spans and metrics, checked with the OpenTelemetry SDK's in-memory exporter and reader."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx2
import openai
import pytest
from helpers import ANTHROPIC_KEY, GATEWAY_KEY, OPENAI_KEY, PROVIDER_KEYS, app_env, install_for
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from yibu_middleware.simulator import GatewaySimulator

EXPORTER = InMemorySpanExporter()
READER = InMemoryMetricReader()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(_provider)  # the global providers can be set once per process
metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(autouse=True)
def _fresh_exporter() -> Iterator[None]:
    EXPORTER.clear()
    READER.get_metrics_data()  # drain what earlier tests recorded
    yield


def genai_spans() -> list[ReadableSpan]:
    return [
        span for span in EXPORTER.get_finished_spans() if span.attributes and "gen_ai.operation.name" in span.attributes
    ]


def no_key_in(spans: list[ReadableSpan]) -> None:
    text = repr(
        [(span.name, dict(span.attributes or {}), [dict(e.attributes or {}) for e in span.events]) for span in spans]
    )
    for key in (*PROVIDER_KEYS, GATEWAY_KEY):
        assert key not in text


def test_sync_chat_span_follows_the_conventions(gateway: GatewaySimulator) -> None:
    gateway.set_faults("a", refuse=True)
    install_for(gateway, pin=gateway.node("a").base_url, model_aliases={"gpt-4": "gpt-5.2"})
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    reply = client.chat.completions.create(model="gpt-4", messages=MESSAGES)  # type: ignore[arg-type]
    (span,) = genai_spans()
    attributes = dict(span.attributes or {})
    assert span.name == "chat gpt-4" and span.kind is SpanKind.CLIENT
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == "gpt-4" and attributes["yibu.request.model_sent"] == "gpt-5.2"
    assert attributes["gen_ai.response.model"] == "gpt-5.2" and attributes["gen_ai.response.id"] == reply.id
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert reply.usage is not None
    assert attributes["gen_ai.usage.input_tokens"] == reply.usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens
    served = gateway.records[-1].node
    assert attributes["server.port"] == gateway.node(served).port
    attempts = [dict(event.attributes or {}) for event in span.events if event.name == "yibu.attempt"]
    assert [a["server.port"] for a in attempts] == [gateway.node("a").port, gateway.node(served).port]
    assert "connection failed" in str(attempts[0]["yibu.outcome"])
    # W3C trace context reached the gateway, so its logs join this trace
    traceparent = gateway.records[-1].headers["traceparent"]
    context = span.context
    assert traceparent == f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    no_key_in([span])


def test_first_try_call_is_told_by_the_span_and_a_retried_one_by_events(gateway: GatewaySimulator) -> None:
    install_for(gateway, pin=gateway.node("a").base_url)
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    (span,) = genai_spans()
    attributes = dict(span.attributes or {})
    assert [event for event in span.events if event.name == "yibu.attempt"] == []
    assert attributes["server.port"] == gateway.node("a").port and span.status.status_code is StatusCode.UNSET
    assert "gen_ai.response.time_to_first_chunk" not in attributes  # a stream's attribute only
    EXPORTER.clear()
    gateway.set_faults("a", status_override=503)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    (span,) = genai_spans()
    first, second = [event for event in span.events if event.name == "yibu.attempt"]
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes["server.port"] == gateway.node("a").port and first.attributes["yibu.outcome"] == "503"
    assert second.attributes["yibu.retry_reason"] and second.attributes["server.port"] != gateway.node("a").port
    assert span.start_time is not None and span.start_time <= first.timestamp <= second.timestamp


def test_stream_span_ends_when_the_stream_is_read_and_has_usage(gateway: GatewaySimulator) -> None:
    install_for(gateway)
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )  # type: ignore[call-overload]
    first = next(iter(stream))
    assert first is not None and genai_spans() == []  # headers are in, the span is still open
    chunks = list(stream)
    (span,) = genai_spans()
    attributes = dict(span.attributes or {})
    usage = chunks[-1].usage
    assert usage is not None and attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert float(attributes["gen_ai.response.time_to_first_chunk"]) > 0  # type: ignore[arg-type]


def test_anthropic_stream_usage_follows_anthropic_rules(gateway: GatewaySimulator) -> None:
    install_for(gateway)
    body = {"model": "claude-sonnet-5-5", "max_tokens": 30, "stream": True, "messages": MESSAGES}
    headers = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}
    with (
        httpx2.Client() as client,
        client.stream("POST", "https://api.anthropic.com/v1/messages", json=body, headers=headers) as response,
    ):
        raw = response.read().decode()
    (span,) = genai_spans()
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.provider.name"] == "anthropic"
    usage_out = int(raw.rsplit('"output_tokens":', 1)[1].split("}")[0])
    assert attributes["gen_ai.usage.output_tokens"] == usage_out  # the last cumulative count
    assert attributes["gen_ai.usage.input_tokens"] >= 1  # type: ignore[operator]
    assert attributes["gen_ai.response.finish_reasons"] == ("end_turn",)
    no_key_in([span])


def test_anthropic_sdk_span_is_not_doubled_and_context_still_reaches_the_gateway(gateway: GatewaySimulator) -> None:
    """anthropic >= 2 makes its own GenAI span when a tracer provider is set: ours steps aside."""
    install_for(gateway)
    client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, max_retries=0)
    with client.messages.stream(model="claude-sonnet-5-5", max_tokens=30, messages=MESSAGES) as stream:
        stream.get_final_message()
    (span,) = genai_spans()
    assert format(span.context.trace_id, "032x") in gateway.records[-1].headers["traceparent"]


def test_async_calls_one_span_each(gateway: GatewaySimulator) -> None:
    install_for(gateway)

    async def main() -> None:
        async with openai.AsyncOpenAI(api_key=OPENAI_KEY, max_retries=0) as client:
            await asyncio.gather(
                *(client.embeddings.create(model="text-embedding-3-small", input="x") for _ in range(5))
            )

    asyncio.run(main())
    spans = genai_spans()
    assert len(spans) == 5 and {span.name for span in spans} == {"embeddings text-embedding-3-small"}


def test_failure_sets_error_type(gateway: GatewaySimulator) -> None:
    for node in gateway.nodes:
        gateway.set_faults(node.name, refuse=True)
    install_for(gateway)
    with pytest.raises(openai.InternalServerError):
        openai.OpenAI(api_key=OPENAI_KEY).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    (span,) = genai_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "yibu_no_answer"
    assert len([event for event in span.events if event.name == "yibu.attempt"]) == 3


def test_stream_closed_early_in_another_task_ends_the_span(gateway: GatewaySimulator) -> None:
    install_for(gateway)

    async def main() -> None:
        async with openai.AsyncOpenAI(api_key=OPENAI_KEY, max_retries=0) as client:
            stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)  # type: ignore[call-overload]
            async for _ in stream:
                break
            await asyncio.create_task(stream.close())  # closed from another task

    asyncio.run(main())
    (span,) = genai_spans()
    assert span.end_time is not None


def test_cancelled_call_ends_its_span_as_cancelled(gateway: GatewaySimulator) -> None:
    for node in gateway.nodes:
        gateway.set_faults(node.name, latency=1.0)
    install_for(gateway)

    async def main() -> None:
        async with openai.AsyncOpenAI(api_key=OPENAI_KEY, max_retries=0) as client:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES), 0.05)  # type: ignore[arg-type]

    asyncio.run(main())
    (span,) = genai_spans()
    assert span.status.status_code is StatusCode.ERROR and (span.attributes or {})["error.type"] == "cancelled"


def test_an_error_before_the_first_attempt_is_sent_ends_the_span(
    gateway: GatewaySimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from yibu_middleware.hooks.httpx import adapter

    def broken(*args: object) -> None:
        raise RuntimeError("the request could not be built")

    install_for(gateway)
    monkeypatch.setattr(adapter, "node_url", broken)
    with pytest.raises(RuntimeError):
        openai.OpenAI(api_key=OPENAI_KEY, max_retries=0).chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    (span,) = genai_spans()
    assert span.end_time is not None and (span.attributes or {})["error.type"] == "cancelled"


def metric_counts() -> dict[str, int]:
    data = READER.get_metrics_data()
    counts: dict[str, int] = {}
    kinds: dict[str, set[str]] = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if not metric.name.startswith("gen_ai."):
                    continue  # ours are counters (sums, no count): the cost (see cost_sum), fleet outages
                for point in metric.data.data_points:
                    counts[metric.name] = counts.get(metric.name, 0) + point.count
                    if "gen_ai.token.type" in point.attributes:
                        kinds.setdefault(metric.name, set()).add(str(point.attributes["gen_ai.token.type"]))
    assert not kinds or kinds["gen_ai.client.token.usage"] == {"input", "output"}
    return counts


def test_metrics(gateway: GatewaySimulator) -> None:
    install_for(gateway)
    before = metric_counts()
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))  # type: ignore[call-overload]
    after = metric_counts()

    def added(name: str) -> int:
        return after.get(name, 0) - before.get(name, 0)

    assert added("gen_ai.client.operation.duration") == 2
    assert added("gen_ai.client.token.usage") >= 2  # input and output of the plain call at least
    assert added("gen_ai.client.operation.time_to_first_chunk") == 1  # the stream's


def test_no_double_span_under_an_instrumentation_span(gateway: GatewaySimulator) -> None:
    """OpenTelemetry's openai instrumentation makes its GenAI span around the SDK call; we add none."""
    install_for(gateway)
    tracer = trace.get_tracer("opentelemetry.instrumentation.openai_v2")
    with tracer.start_as_current_span("chat gpt-4o-mini", attributes={"gen_ai.operation.name": "chat"}):
        openai.OpenAI(api_key=OPENAI_KEY, max_retries=0).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert len(genai_spans()) == 1


def test_message_content_only_when_asked_and_then_redacted(
    gateway: GatewaySimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_for(gateway)
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    secret_message = [{"role": "user", "content": f"my key is {PROVIDER_KEYS[0]}"}]
    client.chat.completions.create(model="gpt-4o-mini", messages=secret_message)  # type: ignore[arg-type]
    assert "gen_ai.input.messages" not in (genai_spans()[0].attributes or {})
    EXPORTER.clear()
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    install_for(gateway)  # read when the middleware is installed, as at a process's start
    client.chat.completions.create(model="gpt-4o-mini", messages=secret_message)  # type: ignore[arg-type]
    captured = str((genai_spans()[0].attributes or {})["gen_ai.input.messages"])
    assert "my key is" in captured and PROVIDER_KEYS[0] not in captured


def test_with_opentelemetrys_httpx_instrumentation_one_span_of_each(gateway: GatewaySimulator) -> None:
    """Both wrap HTTPTransport.handle_request: still one HTTP span and one GenAI span per call,
    not one per attempt, and the call survives failover (here: a refused node, then a 503)."""
    gateway.set_faults("a", refuse=True)
    gateway.set_faults("b", error_rate=1.0)
    env = app_env(gateway, YIBU_PIN=gateway.node("a").base_url)
    script = Path(__file__).parent / "scripts" / "otel_httpx_instrumented.py"
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["status"] == 200
    scopes = [scope for _, _, scope in report["spans"]]
    assert scopes.count("opentelemetry.instrumentation.httpx") == 1
    assert scopes.count("yibu_middleware") == 1
    assert gateway.records[0].node != "a" and gateway.records[-1].status == 200


def test_with_opentelemetrys_openai_and_httpx_instrumentations_no_double_genai_span(gateway: GatewaySimulator) -> None:
    """openai-v2 makes the GenAI span of each SDK call: we add none, but still route, fail over
    and send that span's trace context to the gateway."""
    gateway.set_faults("a", refuse=True)
    env = app_env(gateway, YIBU_PIN=gateway.node("a").base_url)
    script = Path(__file__).parent / "scripts" / "otel_openai_instrumented.py"
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["reply"] and report["streamed"]
    genai = [span for span in report["spans"] if span["genai"]]
    assert len(genai) == 2  # one per SDK call, openai-v2's (made through opentelemetry-util-genai)
    assert [span["scope"] for span in report["spans"]].count("yibu_middleware") == 0
    served = [record for record in gateway.records if record.status == 200]
    assert len(served) == 2 and all(record.node != "a" for record in served)
    for record, span in zip(served, genai, strict=True):
        assert span["trace_id"] in record.headers["traceparent"]
        assert record.headers["authorization"] == f"Bearer {GATEWAY_KEY}"


def test_gateway_quota_refusal_is_on_the_span(gateway: GatewaySimulator) -> None:
    quota = {"error": {"message": "quota used up", "type": "new_api_error", "code": "insufficient_user_quota"}}
    for node in gateway.nodes:
        gateway.set_faults(node.name, status_override=403, status_body=quota)
    install_for(gateway)
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(api_key=OPENAI_KEY).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    (span,) = genai_spans()
    attributes = dict(span.attributes or {})
    assert attributes["error.type"] == "403"
    assert "insufficient_user_quota" in str(attributes["yibu.gateway_refusal"])
    assert len(gateway.records) == 1


@pytest.mark.parametrize(
    "body",
    [
        b'{"id":"chatcmpl-1","model":"gpt-4o-mini","choices":[{"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":5,"completion_tokens":7}}',
        b'  {"id":"msg_1","model":"claude","stop_reason":"end_turn","usage":{"input_tokens":3,'
        b'"cache_read_input_tokens":2,"output_tokens":4}}\n',
        b'{"id":"x","usage":{"prompt_tokens":1,"completion_tokens":2}} trailing data',
        b'{"id":"x","model":NaN}',
        b"not json",
        b"\xff\xfe",
    ],
)
def test_answer_facts_are_the_same_with_or_without_orjson(body: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    from yibu_middleware.core import genai

    large = b" " * genai._FAST_FROM + body  # leading whitespace: the same document, large enough for orjson

    def facts() -> tuple[object, ...]:
        read = genai.ResponseFacts()
        read.read_body(large)
        return read.response_id, read.model, read.finish_reasons, read.input_tokens, read.output_tokens

    with_orjson = facts()
    assert genai._fast_loads is not None and genai._fast_loads is not genai._unresolved  # orjson was used
    monkeypatch.setattr(genai, "_fast_loads", None)
    assert facts() == with_orjson


def test_only_large_answers_are_decoded_with_orjson(monkeypatch: pytest.MonkeyPatch) -> None:
    """A small answer goes to the standard decoder, whose code the SDK keeps warm; orjson's
    would be cold by each answer (see ``_FAST_FROM``)."""
    from yibu_middleware.core import genai

    decoded: list[int] = []

    def fast(data: bytes) -> object:
        decoded.append(len(data))
        return json.loads(data)

    monkeypatch.setattr(genai, "_fast_loads", fast)
    small = b'{"id":"chatcmpl-1","usage":{"prompt_tokens":5,"completion_tokens":7}}'
    large = small[:-1] + b',"padding":"' + b"x" * genai._FAST_FROM + b'"}'
    for body in (small, large):
        read = genai.ResponseFacts()
        read.read_body(body)
        assert (read.response_id, read.input_tokens, read.output_tokens) == ("chatcmpl-1", 5, 7)
    assert decoded == [len(large)]


def test_a_traced_answer_that_is_not_json_ends_its_span_when_its_body_is_read(gateway: GatewaySimulator) -> None:
    """Its usage cannot be read whole up front (it is no JSON): its traced body ends the span once
    the app has read it (and not before)."""
    gateway.set_faults("a", status_override=200, status_text="plain words, not JSON")
    install_for(gateway, pin=gateway.node("a").base_url)
    with (
        httpx2.Client() as client,
        client.stream(
            "POST",
            "https://api.openai.com/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": MESSAGES},
            headers={"Authorization": f"Bearer {OPENAI_KEY}"},
        ) as response,
    ):
        assert response.status_code == 200 and genai_spans() == []  # not read yet: the span is open
        assert response.read() == b"plain words, not JSON"
    (span,) = genai_spans()
    attributes = dict(span.attributes or {})
    assert attributes["server.port"] == gateway.node("a").port and "error.type" not in attributes
    assert "gen_ai.usage.input_tokens" not in attributes


def test_the_apps_propagators_carry_the_context_b3_and_baggage(
    gateway: GatewaySimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trace headers are written by the app's configured propagators, not by hand: with B3
    and baggage configured, the gateway gets B3 headers for our span and the app's baggage."""
    from opentelemetry import baggage, context, propagate
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.b3 import B3MultiFormat
    from opentelemetry.propagators.composite import CompositePropagator

    monkeypatch.setattr(propagate, "_HTTP_TEXT_FORMAT", CompositePropagator([B3MultiFormat(), W3CBaggagePropagator()]))
    install_for(gateway)
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        openai.OpenAI(api_key=OPENAI_KEY, max_retries=0).chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    finally:
        context.detach(token)
    (span,) = genai_spans()
    headers = gateway.records[-1].headers
    assert headers["x-b3-traceid"] == f"{span.context.trace_id:032x}"
    assert headers["x-b3-spanid"] == f"{span.context.span_id:016x}"
    assert "traceparent" not in headers  # the app did not configure W3C trace context
    assert headers["baggage"] == "tenant=acme"


def test_an_apps_own_traceparent_is_replaced_by_the_calls_never_sent_twice(gateway: GatewaySimulator) -> None:
    install_for(gateway)
    theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with httpx2.Client() as client:
        client.post(
            "https://api.openai.com/v1/chat/completions",
            json={"model": "m", "messages": MESSAGES},
            headers={"Authorization": f"Bearer {OPENAI_KEY}", "traceparent": theirs},
        ).raise_for_status()
    (span,) = genai_spans()
    context = span.context
    assert gateway.records[-1].headers["traceparent"] == (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    )


def test_span_tells_the_affinity_key_and_the_cache_read(gateway: GatewaySimulator) -> None:
    """The key's source, whether the call went to its preferred node, and the cached input the
    answer reports (gen_ai.usage.cache_read.input_tokens), for OpenAI and Anthropic alike."""
    install_for(gateway)
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a question"}]
    client.chat.completions.create(model="gpt-5.2", messages=messages)  # type: ignore[arg-type]
    client.chat.completions.create(model="gpt-5.2", messages=messages, user="someone")  # type: ignore[arg-type]
    stream = client.chat.completions.create(
        model="gpt-5.2",
        messages=[*messages, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "more"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    for _ in stream:
        pass
    first, by_user, streamed = (dict(span.attributes or {}) for span in genai_spans())
    assert first["yibu.affinity.key_source"] == "prefix" and first["yibu.affinity.preferred_node"] is True
    assert "gen_ai.usage.cache_read.input_tokens" in first  # the simulator reports it, 0 or more
    assert by_user["yibu.affinity.key_source"] == "user"
    assert streamed["yibu.affinity.preferred_node"] is True
    assert streamed["gen_ai.usage.cache_read.input_tokens"] == gateway.records[-1].cached_tokens > 0
    messages_client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, base_url="https://api.anthropic.com", max_retries=0)
    for _ in range(2):
        messages_client.messages.create(
            model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "cached?"}]
        )
    last = dict(genai_spans()[-1].attributes or {})
    assert last["gen_ai.usage.cache_read.input_tokens"] == gateway.records[-1].cached_tokens > 0
    assert last["gen_ai.usage.input_tokens"] == 1  # cached input counted in, as the conventions want


def test_a_fallback_span_names_every_model_and_node_tried(gateway: GatewaySimulator) -> None:
    gateway.set_missing_models({"gpt-5.2"})
    install_for(gateway, fallbacks={"gpt-5.2": ["gpt-5.1"]})
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    client.chat.completions.create(model="gpt-5.2", messages=MESSAGES)  # type: ignore[arg-type]
    (span,) = genai_spans()
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.request.model"] == "gpt-5.2"
    assert attributes["gen_ai.response.model"] == "gpt-5.1"  # what answered
    assert tuple(attributes["yibu.fallback.models_tried"]) == ("gpt-5.2", "gpt-5.1")  # type: ignore[arg-type]
    assert attributes["yibu.fallback.reason"] == "model_refused"
    events = [dict(event.attributes or {}) for event in span.events if event.name == "yibu.attempt"]
    assert [event["yibu.outcome"] for event in events] == ["404", "200"]
    assert all("server.port" in event for event in events)
    assert events[-1]["yibu.request.model_sent"] == "gpt-5.1"
    no_key_in([span])


def cost_sum() -> float:
    total = 0.0
    data = READER.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "yibu.client.cost":
                    total += sum(point.value for point in metric.data.data_points)  # type: ignore[attr-defined,misc]
    return total


def test_a_priced_call_has_its_cost_on_the_span_and_in_the_cost_metric(gateway: GatewaySimulator) -> None:
    install_for(
        gateway, pin=gateway.node("a").base_url, prices={"gpt-4o-mini": {"input_per_mtok": 1, "output_per_mtok": 2}}
    )
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    before = cost_sum()  # a counter: cumulative over the process (other tests' priced calls too)
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert answer.usage is not None
    expected = (answer.usage.prompt_tokens + 2 * answer.usage.completion_tokens) / 1_000_000
    (span,) = genai_spans()
    attributes = dict(span.attributes or {})
    assert attributes["yibu.usage.cost"] == pytest.approx(expected)
    assert attributes["gen_ai.usage.input_tokens"] == answer.usage.prompt_tokens
    assert cost_sum() - before == pytest.approx(expected)


def test_an_unpriced_call_has_no_cost_attribute(gateway: GatewaySimulator) -> None:
    install_for(gateway)
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    (span,) = genai_spans()
    assert "yibu.usage.cost" not in dict(span.attributes or {})


def test_no_pooled_key_in_a_span_even_when_one_is_benched(gateway: GatewaySimulator) -> None:
    other = "sk-gw-pool-second-0123456789abcdefghij"
    gateway.accepted_keys = frozenset({GATEWAY_KEY, other})
    gateway.set_key_quota(GATEWAY_KEY, 0)
    install_for(gateway, api_keys=[other])
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    (span,) = genai_spans()
    outcomes = [dict(event.attributes or {}).get("yibu.outcome") for event in span.events]
    assert outcomes[0] is not None and "refused (quota: insufficient_user_quota)" in str(outcomes[0])
    no_key_in([span])
    assert other not in repr([dict(event.attributes or {}) for event in span.events])
