"""What a GenAI call was and what it returned, read from the wire (no I/O, no OpenTelemetry).

The mapping to OpenTelemetry's GenAI semantic conventions (v1.41) lives in one place,
``telemetry.py``; this module only reads the providers' formats: the operation from
the path, and the response's id, model, finish reasons and token usage from a JSON
body or from the events of a stream (OpenAI and Anthropic rules).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from .sse import EventSplitter

_DECODER = json.JSONDecoder()


def _unresolved(data: bytes) -> Any:
    """Stands for orjson's ``loads`` until the first answer is decoded (see ``_decode``)."""
    raise NotImplementedError


_fast_loads: Callable[[bytes], Any] | None = _unresolved


# Bodies from this size on are decoded with orjson when it is installed. A smaller one (most
# chat answers, every stream event) is decoded by the standard decoder, whose code the SDK
# runs on every answer too: orjson is faster at any size, but its code and tables are cold by
# the time the next answer comes, and loading them back costs a call more than it saves below
# this size (about 700 cache misses a call, measured with callgrind's cache simulation).
_FAST_FROM = 16 * 1024


def _find_fast_loads() -> Callable[[bytes], Any] | None:
    """orjson's ``loads`` when orjson is installed (LangChain brings it, through langsmith):
    it decodes a large answer in well under half the standard decoder's time. Imported on
    the first large answer, not at start: it imports a few standard modules the app may not need."""
    global _fast_loads
    try:
        from orjson import loads
    except ImportError:  # pragma: no cover - orjson is in the test environment
        _fast_loads = None
    else:
        _fast_loads = loads
    return _fast_loads


def operation_name(path: str) -> str | None:
    """The GenAI operation of a gateway path; None for a call that is not one (e.g. /models)."""
    if path.endswith(("/chat/completions", "/messages", "/responses")):
        return "chat"
    if path.endswith("/embeddings"):
        return "embeddings"
    if path.endswith("/completions"):
        return "text_completion"
    return None


class ResponseFacts:
    """Accumulates what a response says about itself, from one JSON body or many stream events."""

    __slots__ = ("cached_input_tokens", "finish_reasons", "input_tokens", "model", "output_tokens", "response_id")

    def __init__(self) -> None:
        self.response_id: str | None = None
        self.model: str | None = None
        self.finish_reasons: list[str] = []
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.cached_input_tokens: int | None = None  # part of input_tokens: read from a cache

    def read_body(self, body: bytes) -> None:
        document = _decode(body)
        if isinstance(document, dict):
            self.absorb(document)

    def read_event(self, data: bytes) -> None:
        if data and data != b"[DONE]":
            self.read_body(data)

    def absorb(self, document: dict[str, Any]) -> None:
        get = document.get
        found = get("id")
        if found.__class__ is str and self.response_id is None:
            self.response_id = found
        found = get("model")
        if found.__class__ is str:
            self.model = found
        choices = get("choices")
        if choices.__class__ is list:  # OpenAI chat and completions, and their stream chunks
            for choice in choices:
                reason = choice.get("finish_reason") if choice.__class__ is dict else None
                if reason.__class__ is str:
                    self.finish_reasons.append(reason)
        else:  # Anthropic messages and their events, the Responses API's events
            message = get("message")
            if message.__class__ is dict:  # Anthropic message_start
                self.absorb(message)
            response = get("response")
            if response.__class__ is dict:  # OpenAI Responses API events
                self.absorb(response)
            reason = get("stop_reason")
            delta = get("delta")
            if delta.__class__ is dict and delta.get("stop_reason").__class__ is str:
                reason = delta["stop_reason"]
            if reason.__class__ is str:
                self.finish_reasons.append(reason)
        usage = get("usage")
        if usage.__class__ is dict:
            self._usage(usage)

    def _usage(self, usage: dict[str, Any]) -> None:
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if prompt is not None or completion is not None:  # OpenAI chat, embeddings
            # A count is an int, never a bool (whose class is bool): checked by class, inline,
            # as this runs on every answer.
            if prompt.__class__ is int:
                self.input_tokens = prompt
            if completion.__class__ is int:
                self.output_tokens = completion
            details = usage.get("prompt_tokens_details")
            if details.__class__ is dict and details.get("cached_tokens").__class__ is int:
                self.cached_input_tokens = details["cached_tokens"]
            return
        details = usage.get("input_tokens_details")  # the Responses API
        if details.__class__ is dict and details.get("cached_tokens").__class__ is int:
            self.cached_input_tokens = details["cached_tokens"]
        if "input_tokens" in usage:
            # Anthropic counts cached input apart; the conventions want it all in input.
            cached = _int(usage.get("cache_read_input_tokens"), 0) or 0
            created = _int(usage.get("cache_creation_input_tokens"), 0) or 0
            base = _int(usage.get("input_tokens"), None)
            if base is not None:
                self.input_tokens = base + cached + created
                if "cache_read_input_tokens" in usage:
                    self.cached_input_tokens = cached
        # Anthropic's message_delta carries a cumulative output count; the last one wins.
        self.output_tokens = _int(usage.get("output_tokens"), self.output_tokens)


def _decode(data: bytes) -> Any:
    """A JSON document; None when the data is not JSON."""
    fast = None if len(data) < _FAST_FROM else _fast_loads if _fast_loads is not _unresolved else _find_fast_loads()
    if fast is not None:
        try:
            return fast(data)
        except ValueError:  # orjson refused it (trailing data, NaN...): the standard decoder
            pass  # has the last word. (Integers beyond 64 bits it reads as floats: no token count.)
    try:
        # The decoder itself: json.loads would sniff the encoding and check for trailing
        # data on every call, a third of the time for a small answer.
        return _DECODER.raw_decode(data.decode("utf-8").lstrip())[0]
    except (ValueError, RecursionError):  # UnicodeDecodeError included; a node's 100,000 nested brackets
        return None


def _int(value: Any, default: int | None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


class ResponseReader:
    """Reads a response body as the caller consumes it, for its facts: a JSON answer whole at
    the end, an event stream event by event. Shared by tracing and the token limit."""

    __slots__ = ("_body", "_events", "facts", "first_chunk", "sse")

    def __init__(self) -> None:
        self.facts = ResponseFacts()
        self.sse = False  # set when the answer is known to be an event stream
        self.first_chunk: float | None = None  # time.monotonic() of the first chunk
        self._body = bytearray()
        self._events = EventSplitter()

    def chunk(self, data: bytes) -> None:
        if self.first_chunk is None:
            self.first_chunk = time.monotonic()
        if not self.sse:
            if len(self._body) < 4_000_000:  # a JSON answer, read for its usage at the end
                self._body += data
            return
        for event in self._events.feed(data):
            # Only events that can carry usage, ids or finish reasons are parsed.
            if b'"usage"' in event or b"finish_reason" in event or b"stop_reason" in event or b'"id"' in event:
                for line in event.split(b"\n"):
                    if line.startswith(b"data:"):
                        self.facts.read_event(line[5:].strip())

    @property
    def scanned(self) -> int:
        """Bytes of an event stream searched for the end of an event (see ``EventSplitter``)."""
        return self._events.scanned

    def whole(self, body: bytes) -> None:
        """The complete body at once (read before it was handed back): parsed now, not copied."""
        if self.sse or self._body:
            self.chunk(body)
        else:
            self.facts.read_body(body)

    def done(self) -> ResponseFacts:
        """The facts, once the body has been read (or closed): a JSON answer is parsed now, once."""
        if self._body and not self.sse:
            self.facts.read_body(bytes(self._body))
            self._body = bytearray()
        return self.facts

    def total_tokens(self) -> int | None:
        facts = self.facts
        if facts.input_tokens is None and facts.output_tokens is None:
            return None
        return (facts.input_tokens or 0) + (facts.output_tokens or 0)
