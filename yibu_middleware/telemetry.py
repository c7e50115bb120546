"""OpenTelemetry spans and metrics for redirected GenAI calls (opentelemetry-api only).

One CLIENT span per logical call (not per attempt), named ``{operation} {model}``, with
the GenAI semantic conventions v1.41; each attempt of a call that was retried is an event
on it (a call answered at its first attempt needs none: the span itself tells it). For a response
the span ends when its body has been read or closed (a stream's end, not its
headers), so it carries the usage and the time to the first chunk. The app brings
the SDK and exporters; with none configured, the API hands out non-recording spans
and this module does nothing more than ask for one.

This module is imported only once the app has imported OpenTelemetry itself (a
process that never did cannot have an SDK configured), so it adds nothing to start-up.

The conventions' names are constants in this module and nowhere else, so that a later rename
(the conventions move on in semantic-conventions-genai) is a change to one block.

No context is attached while a call runs: the span is passed around explicitly and its
context is written into each attempt's headers by the app's own propagators
(``opentelemetry.propagate.inject``: W3C trace context by default, B3 or baggage when the app
configured them), so a stream closed early or in another task cannot trip "failed to detach
context".
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context, get_current
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .core.genai import ResponseFacts, ResponseReader, operation_name
from .core.request import GatewayRequest
from .pipeline.observers import CallObserver

if TYPE_CHECKING:
    from .core.nodes import Node
    from .core.plan import Send
    from .pipeline.call import Call

# The names of the span, its events and metrics: the GenAI semantic conventions (v1.41) and
# our own (yibu.*). Here and nowhere else, so that a rename is a change to this block.
OPERATION_NAME = "gen_ai.operation.name"
PROVIDER_NAME = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_ID = "gen_ai.response.id"
RESPONSE_MODEL = "gen_ai.response.model"
FINISH_REASONS = "gen_ai.response.finish_reasons"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"
INPUT_MESSAGES = "gen_ai.input.messages"
TOKEN_TYPE = "gen_ai.token.type"
DURATION_METRIC = "gen_ai.client.operation.duration"
TOKEN_USAGE_METRIC = "gen_ai.client.token.usage"
TIME_TO_FIRST_CHUNK_METRIC = "gen_ai.client.operation.time_to_first_chunk"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
ERROR_TYPE = "error.type"
YIBU_MODEL_SENT = "yibu.request.model_sent"
YIBU_GATEWAY_REFUSAL = "yibu.gateway_refusal"
YIBU_ATTEMPT_EVENT = "yibu.attempt"
YIBU_OUTCOME = "yibu.outcome"
YIBU_RETRY_REASON = "yibu.retry_reason"
YIBU_WAIT = "yibu.wait_s"
YIBU_AFFINITY_SOURCE = "yibu.affinity.key_source"
YIBU_AFFINITY_PREFERRED = "yibu.affinity.preferred_node"
# Cost: the GenAI conventions (v1.41, and the genai repository since) define no cost attribute
# or metric, so these are ours, under yibu.*, rather than a gen_ai.* name a later release may
# define differently. The tokens the cost comes from are the conventions' own usage attributes.
YIBU_COST = "yibu.usage.cost"  # USD, a double
COST_METRIC = "yibu.client.cost"  # a counter, unit USD, with the duration metric's attributes
YIBU_MODELS_TRIED = "yibu.fallback.models_tried"
YIBU_FALLBACK_REASON = "yibu.fallback.reason"

_tracer: trace.Tracer | None = None
_instruments: tuple[metrics.Histogram, metrics.Histogram, metrics.Histogram] | None = None


def _get_tracer() -> trace.Tracer:
    global _tracer
    if _tracer is None:
        from . import __version__

        _tracer = trace.get_tracer("yibu_middleware", __version__)
    return _tracer


def _get_instruments() -> tuple[metrics.Histogram, metrics.Histogram, metrics.Histogram]:
    global _instruments
    if _instruments is None:
        meter = metrics.get_meter("yibu_middleware")
        _instruments = (
            meter.create_histogram(DURATION_METRIC, unit="s", description="GenAI operation duration"),
            meter.create_histogram(TOKEN_USAGE_METRIC, unit="{token}", description="tokens used"),
            meter.create_histogram(TIME_TO_FIRST_CHUNK_METRIC, unit="s", description="time to the first chunk"),
        )
    return _instruments


_cost_counter: metrics.Counter | None = None


def _get_cost_counter() -> metrics.Counter:
    global _cost_counter
    if _cost_counter is None:
        _cost_counter = metrics.get_meter("yibu_middleware").create_counter(
            COST_METRIC, unit="USD", description="what calls cost, priced from their reported usage"
        )
    return _cost_counter


def _genai_span_active(current: Context) -> bool:
    """OpenTelemetry's own openai/anthropic instrumentation already made this call's span."""
    attributes = getattr(trace.get_current_span(current), "attributes", None)
    return bool(attributes) and OPERATION_NAME in attributes  # type: ignore[operator]


class CallTelemetry(CallObserver):
    """The span (and metrics) of one redirected call: an observer of the call (see ``pipeline/observers.py``)."""

    __slots__ = (
        "_attributes",
        "_node",
        "_started",
        "reader",
        "span",
    )

    def __init__(self, span: Span, attributes: dict[str, Any], reader: ResponseReader) -> None:
        self.span = span
        self.reader = reader  # what the response says (usage, ids), as the caller reads it
        self._attributes = attributes  # the metric attributes, completed as the call goes
        self._node: Any = None  # the gateway node that answered
        self._started = time.monotonic()

    @classmethod
    def start(
        cls, gateway: GatewayRequest, redact: Any, reader: ResponseReader | None = None, capture_content: bool = False
    ) -> CallTelemetry | None:
        """The call's span, or None when nothing would record it. ``reader``: one the call
        already keeps for another reader of usage (the token limit), shared rather than doubled."""
        operation = operation_name(gateway.path)
        if operation is None:
            return None
        current = get_current()  # looked up once, for our check and the tracer's parent
        if _genai_span_active(current):
            return None  # OpenTelemetry's own openai/anthropic instrumentation spans this call
        model = gateway.requested_model or ""
        attributes: dict[str, Any] = {
            OPERATION_NAME: operation,
            PROVIDER_NAME: gateway.route.provider,
        }
        if model:
            attributes[REQUEST_MODEL] = model
        span = (_tracer or _get_tracer()).start_span(
            f"{operation} {model}".strip(), context=current, kind=SpanKind.CLIENT, attributes=attributes
        )
        if not span.is_recording():
            return None  # no SDK: nothing to record, nothing to pay
        if gateway.model and gateway.model != model:
            span.set_attribute(YIBU_MODEL_SENT, gateway.model)  # the alias actually sent
        if capture_content and gateway.body:
            span.set_attribute(INPUT_MESSAGES, redact(_messages(gateway.body)))
        return cls(span, attributes, reader if reader is not None else ResponseReader())

    def trace_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers that carry this call's span to the gateway, as the app's propagators write
        them (W3C ``traceparent`` by default; B3, baggage, ... when the app configured those)."""
        return _injected(trace.set_span_in_context(self.span))

    def attempt_ended(self, call: Call, action: Send, outcome: str, retried: bool) -> None:
        """An event per attempt of a call that was retried (or is about to be): a call answered at
        its first attempt is told by the span itself (its server attributes, and error.type if it
        failed), and each event costs the SDK as much as a fifth of the span."""
        if not retried:
            return
        node = action.node
        attributes: dict[str, Any] = {SERVER_ADDRESS: node.host, SERVER_PORT: node.port, YIBU_OUTCOME: outcome}
        if call.legs:  # a fallback leg: which model this attempt sent
            attributes[YIBU_MODEL_SENT] = call.gateway.model or ""
        if action.why:
            attributes[YIBU_RETRY_REASON] = action.why
        if action.delay:
            attributes[YIBU_WAIT] = action.delay
        self.span.add_event(YIBU_ATTEMPT_EVENT, attributes)

    def answered(self, call: Call, node: Node, status: int, event_stream: bool) -> None:
        """The node that answered: set on the span when it ends, with everything else. The
        status is not an attribute of GenAI spans: a failure's is its error.type."""
        self._node = node

    def fell_back(self, call: Call, old: str | None, new: str, why: str) -> None:
        """Every model tried, in order, on the span (the answer's own model is gen_ai.response.model)."""
        self.span.set_attribute(YIBU_MODELS_TRIED, call.models_tried)
        self.span.set_attribute(YIBU_FALLBACK_REASON, why)

    def note(self, call: Call, text: str) -> None:
        self.span.set_attribute(YIBU_GATEWAY_REFUSAL, text)

    def ended(self, call: Call, facts: ResponseFacts | None, error_type: str | None) -> None:
        """End the span and record the metrics (once: ``Call.finish`` tells its observers once)."""
        span, reader = self.span, self.reader
        facts = facts if facts is not None else reader.done()  # the call's reader is this one
        node = self._node
        found: dict[str, Any] = {} if node is None else {SERVER_ADDRESS: node.host, SERVER_PORT: node.port}
        if facts.response_id:
            found[RESPONSE_ID] = facts.response_id
        if facts.model:
            found[RESPONSE_MODEL] = facts.model
        if facts.finish_reasons:
            found[FINISH_REASONS] = facts.finish_reasons
        if facts.input_tokens is not None:
            found[INPUT_TOKENS] = facts.input_tokens
        if facts.output_tokens is not None:
            found[OUTPUT_TOKENS] = facts.output_tokens
        if facts.cache_read_tokens is not None:
            found[CACHE_READ_INPUT_TOKENS] = facts.cache_read_tokens
        affinity = call.affinity
        if affinity is not None:  # where the call's affinity key came from, and whether it was kept
            found[YIBU_AFFINITY_SOURCE] = affinity.source
            if call.plan.preferred is not None:
                found[YIBU_AFFINITY_PREFERRED] = call.plan.preferred
        cost = call.cost
        if cost is not None:
            found[YIBU_COST] = float(cost)
        first_chunk_after = None if reader.first_chunk is None or not reader.sse else reader.first_chunk - self._started
        if first_chunk_after is not None:
            found[TIME_TO_FIRST_CHUNK] = first_chunk_after
        if error_type is not None:
            found[ERROR_TYPE] = error_type
            span.set_status(Status(StatusCode.ERROR, error_type))
        span.set_attributes(found)  # one call: each attribute set on its own takes the span's lock
        span.end()
        duration, tokens, first_chunk = _instruments or _get_instruments()
        attributes = self._attributes  # the metrics': the span's start attributes, and these
        for name in (SERVER_ADDRESS, SERVER_PORT, RESPONSE_MODEL, ERROR_TYPE):
            if name in found:
                attributes[name] = found[name]
        duration.record(time.monotonic() - self._started, attributes)
        for kind, count in (("input", facts.input_tokens), ("output", facts.output_tokens)):
            if count is not None:
                tokens.record(count, {**attributes, TOKEN_TYPE: kind})
        if first_chunk_after is not None:
            first_chunk.record(first_chunk_after, attributes)
        if cost is not None:
            (_cost_counter or _get_cost_counter()).add(float(cost), attributes)


def current_trace_headers() -> list[tuple[bytes, bytes]]:
    """The trace headers for the current span, if one is recording (e.g. an instrumentation's)."""
    if not trace.get_current_span().is_recording():
        return []
    return _injected(None)


def _injected(context: Context | None) -> list[tuple[bytes, bytes]]:
    """What the app's configured propagators write for ``context`` (None: the current one)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in carrier.items()]


def _messages(body: bytes) -> str:
    try:
        document = json.loads(body)
    except ValueError:
        return ""
    messages = document.get("messages", document.get("input")) if isinstance(document, dict) else None
    return json.dumps(messages, ensure_ascii=False)[:16_000] if messages is not None else ""
