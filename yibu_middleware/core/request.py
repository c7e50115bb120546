"""Turn a request meant for a provider into the request a gateway node receives.

Works on plain data (raw header pairs, body bytes) so that every client adapter,
sync or async, shares it. Nothing here performs I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from .routes import Route, gateway_path

RawHeaders = list[tuple[bytes, bytes]]

# Header names that carry a provider credential (OpenAI and compatibles, Anthropic, Azure).
CREDENTIAL_HEADERS = frozenset({b"authorization", b"x-api-key", b"api-key"})
# Recomputed by the client library for the new URL and body; never copied.
_RECOMPUTED = frozenset({b"host", b"content-length"})


class GatewayRequest(NamedTuple):
    """What is sent to a node on every attempt of one call (the node varies)."""

    route: Route
    method: str
    path: str  # the gateway-side path, e.g. "/chat/completions"
    query: str
    headers: RawHeaders
    body: bytes | None  # None: a streamed body the library did not read
    model: str | None  # as sent, after aliasing
    requested_model: str | None  # as the app asked
    swapped_keys: list[str]  # provider keys taken out
    stream: bool  # the body asks for a streamed answer


def prepare(
    route: Route,
    method: str,
    path: str,
    query: str,
    headers: Iterable[tuple[bytes, bytes]],
    body: bytes | None,
    gateway_key: bytes | None,
    aliases: Mapping[str, str],
) -> GatewayRequest:
    new_headers, swapped = swap_credentials(headers, gateway_key)
    requested, sent, new_body, stream = read_body(body, aliases)
    return GatewayRequest(
        route, method, gateway_path(route, path), query, new_headers, new_body, sent, requested, swapped, stream
    )


def swap_credentials(headers: Iterable[tuple[bytes, bytes]], gateway_key: bytes | None) -> tuple[RawHeaders, list[str]]:
    """Put the gateway key in every credential header; report the provider keys removed.

    With no gateway key configured the caller's credentials pass through unchanged
    (some users give their apps gateway keys directly).
    """
    out: RawHeaders = []
    swapped: list[str] = []
    for name, value in headers:
        lower = name.lower()
        if lower in _RECOMPUTED:
            continue
        if gateway_key is not None and lower in CREDENTIAL_HEADERS:
            old = value
            if lower == b"authorization":
                scheme, _, credential = value.partition(b" ")
                old = credential if credential else scheme
                value = b"Bearer " + gateway_key
            else:
                value = gateway_key
            if old and old != gateway_key:
                swapped.append(old.decode("latin-1"))
        out.append((name, value))
    return out, swapped


def read_body(body: bytes | None, aliases: Mapping[str, str]) -> tuple[str | None, str | None, bytes | None, bool]:
    """Parse a JSON body once: its ``model`` (rewritten per ``aliases``) and ``stream`` flag.

    Returns (model as asked, model as sent, body to send, streamed). The body is
    parsed only when it can hold a model name, and re-encoded only when the model
    changes; anything that is not a JSON object is forwarded untouched.
    """
    if not body or b'"model"' not in body or body.lstrip()[:1] != b"{":
        return None, None, body, False
    try:
        document = json.loads(body)
    except ValueError:
        return None, None, body, False
    if not isinstance(document, dict):
        return None, None, body, False
    stream = document.get("stream") is True
    model = document.get("model")
    if not isinstance(model, str):
        return None, None, body, stream
    target = aliases.get(model)
    if target is None or target == model:
        return model, model, body, stream
    document["model"] = target
    return model, target, json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode(), stream
