"""Response bodies of the simulated gateway, in the OpenAI and Anthropic wire formats.

Pure functions of the request (no I/O), so the server stays a thin HTTP layer and the shapes can be
checked against the real SDKs in one place.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time
import uuid
from typing import Any

MODELS: tuple[tuple[str, str], ...] = (
    ("gpt-5.2", "openai"),
    ("gpt-4o-mini", "openai"),
    ("claude-sonnet-4-5", "anthropic"),
    ("text-embedding-3-small", "openai"),
)
EMBEDDING_DIMENSIONS = 8
_FINGERPRINT = "fp_yibu_sim"

# HTTP status -> (OpenAI error type, OpenAI code, Anthropic error type, message).
_ERRORS: dict[int, tuple[str, str | None, str, str]] = {
    400: ("invalid_request_error", None, "invalid_request_error", "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "authentication_error", "Incorrect API key provided."),
    403: ("insufficient_quota", "insufficient_quota", "permission_error", "Permission denied."),
    404: ("invalid_request_error", None, "not_found_error", "Not found."),
    405: ("invalid_request_error", None, "invalid_request_error", "Method not allowed."),
    413: ("invalid_request_error", None, "request_too_large", "Request too large."),
    429: ("requests", "rate_limit_exceeded", "rate_limit_error", "Rate limit reached (simulated)."),
    500: ("server_error", None, "api_error", "Internal server error (simulated)."),
    503: ("server_error", None, "overloaded_error", "The server is overloaded (simulated)."),
    529: ("server_error", None, "overloaded_error", "The server is overloaded (simulated)."),
}


def dumps(obj: Any) -> bytes:
    """Compact JSON, as the real APIs send it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def reply_text(node: str) -> str:
    """The deterministic assistant reply; it names the node so tests can see where a request went."""
    return f"Hello from yibu simulator node '{node}'."


def reply_words(node: str) -> list[str]:
    """The reply split into stream pieces whose concatenation is the exact reply text."""
    words = reply_text(node).split(" ")
    return [words[0], *(" " + w for w in words[1:])]


def error_body(status: int, anthropic: bool, message: str | None = None) -> dict[str, Any]:
    """Error JSON in the format the client's SDK parses (Anthropic on /v1/messages, else OpenAI)."""
    oa_type, oa_code, an_type, default = _ERRORS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None, "api_error", "Error.")
    )
    text = message or default
    if anthropic:
        return {"type": "error", "error": {"type": an_type, "message": text}}
    return {"error": {"message": text, "type": oa_type, "param": None, "code": oa_code}}


def _text_of(content: Any) -> str:
    """Text of a message content: a string or a list of parts (OpenAI/Anthropic) with ``text`` fields."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(_text_of(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def count_words(messages: Any, extra: Any = None) -> int:
    """Rough token count: whitespace-separated words of every message's content (plus e.g. a system)."""
    total = len(_text_of(extra).split())
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                total += len(_text_of(message.get("content")).split())
    return total


# ---- OpenAI chat completions ---------------------------------------------------------------------------


def _usage(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def chat_completion(node: str, model: str, body: dict[str, Any], cached: int = 0) -> dict[str, Any]:
    """``cached``: prompt tokens read from the node's prompt cache (see ``prompt_cache.py``)."""
    prompt = count_words(body.get("messages"))
    completion = len(reply_words(node))
    return {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": _FINGERPRINT,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply_text(node), "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(prompt, completion, cached),
    }


def chat_stream_events(node: str, model: str, body: dict[str, Any], cached: int = 0) -> list[bytes]:
    """SSE events of a streamed chat completion: a role-only chunk (empty content, as OpenAI sends it), one
    chunk per word, optional usage chunk, ``[DONE]``."""
    chat_id, created = new_id("chatcmpl-"), int(time.time())
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    words = reply_words(node)
    events: list[bytes] = []
    deltas: list[dict[str, Any]] = [
        {"role": "assistant", "content": "", "refusal": None},
        *({"content": word} for word in words),
    ]
    for i, delta in enumerate(deltas):
        chunk: dict[str, Any] = {
            "id": chat_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": _FINGERPRINT,
            "choices": [
                {
                    "index": 0,
                    "delta": delta,
                    "logprobs": None,
                    "finish_reason": "stop" if i == len(deltas) - 1 else None,
                }
            ],
        }
        if include_usage:
            chunk["usage"] = None
        events.append(b"data: " + dumps(chunk) + b"\n\n")
    if include_usage:
        prompt = count_words(body.get("messages"))
        usage = _usage(prompt, len(words), cached)
        chunk = {
            "id": chat_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": _FINGERPRINT,
            "choices": [],
            "usage": usage,
        }
        events.append(b"data: " + dumps(chunk) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


# ---- OpenAI embeddings / models ------------------------------------------------------------------------


def _vector(text: str, dimensions: int) -> list[float]:
    """Deterministic pseudo-embedding in [-1, 1], float32-exact so base64 and float answers agree."""
    out: list[float] = []
    counter = 0
    while len(out) < dimensions:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        for i in range(0, len(digest), 2):
            value = int.from_bytes(digest[i : i + 2], "little") / 32767.5 - 1.0
            out.append(struct.unpack("<f", struct.pack("<f", value))[0])
        counter += 1
    return out[:dimensions]


def embeddings(model: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """Embeddings response, or None if ``input`` is not a string or list (the caller answers 400)."""
    raw = body.get("input")
    if isinstance(raw, str):
        inputs: list[Any] = [raw]
    elif isinstance(raw, list) and raw:
        # A list of token ids (ints) is one input; a list of strings / token lists is many.
        inputs = [raw] if all(isinstance(x, int) for x in raw) else raw
    else:
        return None
    dims = body.get("dimensions")
    dimensions = (
        dims if isinstance(dims, int) and not isinstance(dims, bool) and 0 < dims <= 4096 else EMBEDDING_DIMENSIONS
    )
    as_base64 = body.get("encoding_format") == "base64"
    data: list[dict[str, Any]] = []
    tokens = 0
    for index, item in enumerate(inputs):
        text = item if isinstance(item, str) else json.dumps(item)
        tokens += len(item) if isinstance(item, list) else len(text.split())
        vector = _vector(text, dimensions)
        embedding: Any = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode() if as_base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def model_entry(model_id: str, owner: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 1_700_000_000, "owned_by": owner}


def models_list() -> dict[str, Any]:
    return {"object": "list", "data": [model_entry(m, o) for m, o in MODELS]}


# ---- Anthropic messages --------------------------------------------------------------------------------


def anthropic_message(node: str, model: str, body: dict[str, Any], cached: int = 0) -> dict[str, Any]:
    """``cached``: input tokens read from the node's prompt cache, apart from ``input_tokens`` as Anthropic counts."""
    return {
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": reply_text(node)}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": count_words(body.get("messages"), body.get("system")) - cached,
            "output_tokens": len(reply_words(node)),
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0,
        },
    }


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + dumps(data) + b"\n\n"


def anthropic_stream_events(node: str, model: str, body: dict[str, Any], cached: int = 0) -> list[bytes]:
    """The Anthropic Messages streaming sequence, one ``content_block_delta`` per word."""
    words = reply_words(node)
    start = anthropic_message(node, model, body, cached)
    start.update(content=[], stop_reason=None)
    start["usage"] = {**start["usage"], "output_tokens": 1}
    events = [
        _sse("message_start", {"type": "message_start", "message": start}),
        _sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        _sse("ping", {"type": "ping"}),
    ]
    events.extend(
        _sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}},
        )
        for word in words
    )
    events += [
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": len(words)},
            },
        ),
        _sse("message_stop", {"type": "message_stop"}),
    ]
    return events


def stream_error_event(anthropic: bool) -> bytes:
    """The in-band error event a gateway sends when its upstream fails mid-stream, after the 200.

    Anthropic's ``error`` event (as during an overload), or what OpenAI-compatible gateways send (no
    ``[DONE]`` follows it). Spaced JSON, byte for byte as those write it.
    """
    if anthropic:
        error: dict[str, Any] = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        return b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n"
    error = {
        "error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
            "code": None,
        }
    }
    return b"data: " + json.dumps(error).encode() + b"\n\n"


# ---- OpenAI Responses -----------------------------------------------------------------------------------


def responses_prompt(body: dict[str, Any], stored: dict[str, list[Any]]) -> list[Any]:
    """The messages a Responses request puts before the model: the stored conversation its
    ``previous_response_id`` continues, then its ``input`` (a string is one user message)."""
    previous = body.get("previous_response_id")
    history = list(stored.get(previous, ())) if isinstance(previous, str) else []
    given = body.get("input")
    if isinstance(given, str):
        return [*history, {"role": "user", "content": given}]
    if isinstance(given, list):
        return [*history, *(item for item in given if isinstance(item, dict))]
    return history


def response_object(node: str, model: str, body: dict[str, Any], prompt: list[Any], cached: int = 0) -> dict[str, Any]:
    """A completed Responses API answer (unstreamed); ``cached``: input tokens read from the node's cache."""
    prompt_tokens = count_words(prompt, body.get("instructions"))
    output = len(reply_words(node))
    return {
        "id": new_id("resp_"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": model,
        "instructions": body.get("instructions"),
        "previous_response_id": body.get("previous_response_id"),
        "output": [
            {
                "type": "message",
                "id": new_id("msg_"),
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": reply_text(node), "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "error": None,
        "incomplete_details": None,
        "metadata": {},
        "usage": {
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + output,
        },
    }
