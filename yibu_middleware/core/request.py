"""Turn a request meant for a provider into the request a gateway node receives.

Works on plain data (raw header pairs, body bytes) so that every client adapter,
sync or async, shares it. Nothing here performs I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from .policy import ParsedBody
from .routes import Route, gateway_path

RawHeaders = list[tuple[bytes, bytes]]
# A header as an app's request holds it: a (name, value) pair, or httpx's (name, lowered name, value).
AppHeader = tuple[bytes, bytes]
# Headers as they are sent, on every attempt of a call.
SentHeaders = tuple[tuple[bytes, bytes], ...]

# Header names that carry a provider credential (OpenAI and compatibles, Anthropic, Azure).
CREDENTIAL_HEADERS = frozenset({b"authorization", b"x-api-key", b"api-key"})
# Recomputed by the client library for the new URL; never copied.
_RECOMPUTED = frozenset({b"host"})


class GatewayRequest(NamedTuple):
    """What is sent to a node on every attempt of one call (the node varies)."""

    route: Route
    method: str
    path: str  # the gateway-side path, e.g. "/chat/completions"
    query: str
    headers: SentHeaders
    body: bytes | None  # None: a streamed body the library did not read
    model: str | None  # as sent, after aliasing
    requested_model: str | None  # as the app asked
    swapped_keys: tuple[str, ...]  # provider keys taken out
    stream: bool  # the body asks for a streamed answer
    # From the openai/anthropic SDKs' own headers, read in the same pass as the keys: whether
    # the SDK is retrying this call on its own, and its read timeout (the call's deadline).
    sdk_retried: bool = False
    sdk_read_timeout: float | None = None
    # The app's Content-Length, dropped from ``headers`` like Host: a client that sends the body
    # as the app's request did (a stream it cannot measure) says this length again.
    length: bytes | None = None


def prepare(
    route: Route,
    method: str,
    path: str,
    query: str,
    headers: Iterable[AppHeader],
    body: bytes | None,
    gateway_key: bytes | None,
    aliases: Mapping[str, str],
    parsed: ParsedBody | None = None,
) -> GatewayRequest:
    """``headers``: see ``scan_headers``. ``parsed``: the body's parse, shared with the policy
    checks, so that it is parsed once."""
    requested, sent, new_body, stream = read_body(body, aliases, parsed)
    scan = scan_headers(headers, gateway_key, stream)
    return GatewayRequest(
        route,
        method,
        gateway_path(route, path),
        query,
        scan.headers,
        new_body,
        sent,
        requested,
        scan.swapped,
        stream,
        scan.sdk_retried,
        scan.sdk_read_timeout,
        scan.length,
    )


class HeaderScan(NamedTuple):
    """The headers of a call as they are sent, and what was learnt reading them."""

    headers: SentHeaders  # credentials swapped; Host and Content-Length dropped
    swapped: tuple[str, ...]  # the provider keys taken out
    # From the openai/anthropic SDKs' own headers: whether the SDK is retrying this call on its
    # own (``x-stainless-retry-count`` over 0), and its read timeout in seconds (the call's
    # deadline; None when absent or unreadable).
    sdk_retried: bool
    sdk_read_timeout: float | None
    length: bytes | None  # the app's Content-Length (dropped from ``headers``), if it sent one


def scan_headers(headers: Iterable[AppHeader], gateway_key: bytes | None, stream: bool) -> HeaderScan:
    """The headers to send for a call: (name, value) pairs, credentials swapped, and what the
    SDKs' own headers say. Scanned afresh for every call: nothing a call sent (its provider
    key, a per-call trace header) is kept beyond it."""
    out, swapped, sdk, length = _scan_headers(headers, gateway_key)
    if stream:
        # The stream is watched as it passes (first content, final event): it must arrive
        # uncompressed, or a cut could not be told from an end.
        out = [(name, value) for name, value in out if name.lower() != b"accept-encoding"]
        out.append((b"accept-encoding", b"identity"))
    return HeaderScan(
        tuple(out),
        tuple(swapped),
        sdk.get(b"x-stainless-retry-count", b"0") not in (b"0", b""),
        _seconds(sdk.get(b"x-stainless-read-timeout", b"")),
        length,
    )


def swap_credentials(headers: Iterable[tuple[bytes, bytes]], gateway_key: bytes | None) -> tuple[RawHeaders, list[str]]:
    """Put the gateway key in every credential header; report the provider keys removed.

    With no gateway key configured the caller's credentials pass through unchanged
    (some users give their apps gateway keys directly).
    """
    out, swapped, _, _ = _scan_headers(headers, gateway_key)
    return out, swapped


def _scan_headers(
    headers: Iterable[tuple[bytes, bytes]], gateway_key: bytes | None
) -> tuple[RawHeaders, list[str], dict[bytes, bytes], bytes | None]:
    """``swap_credentials``, the SDKs' ``x-stainless-*`` headers and the app's Content-Length, in
    one pass over the headers.

    This runs on every call, over the same dozen names: what each name is, is looked up
    rather than worked out again (``_kind``)."""
    out: RawHeaders = []
    swapped: list[str] = []
    sdk: dict[bytes, bytes] = {}
    length = None
    kinds = _kinds
    for pair in headers:
        name, value = pair
        kind = kinds.get(name)
        if kind is None:
            kind = _kind(name)
        if kind is _PASS:
            out.append(pair)  # the caller's own pair: fewer objects per call
        elif kind.__class__ is bytes:  # an SDK header: its kind is its lowered name
            sdk[kind] = value
            out.append(pair)
        elif kind is _CREDENTIAL and gateway_key is not None:
            old = value
            if name.lower() == b"authorization":
                scheme, _, credential = value.partition(b" ")
                old = credential if credential else scheme
                value = b"Bearer " + gateway_key
            else:
                value = gateway_key
            if old and old != gateway_key:
                swapped.append(old.decode("latin-1"))
            out.append((name, value))
        elif kind is _CREDENTIAL:
            out.append(pair)
        elif kind is _LENGTH:
            length = value  # not sent as it is: the body sent may differ (an alias)
        # _DROPPED: recomputed by the client library for the new URL and body
    return out, swapped, sdk, length


def _seconds(stated: bytes) -> float | None:
    try:
        return float(stated) if stated else None
    except ValueError:
        return None


_PASS, _CREDENTIAL, _LENGTH, _DROPPED = "pass", "credential", "length", "dropped"
_kinds: dict[bytes, str | bytes] = {}


def _kind(name: bytes) -> str | bytes:
    """What a header name is to ``_scan_headers``, remembered (a bounded set: apps that put
    ids in header names do not grow it without end). An SDK's ``x-stainless-*`` header's kind
    is its lowered name, the key it is reported under."""
    lower = name.lower()
    kind: str | bytes
    if lower in _RECOMPUTED:
        kind = _DROPPED
    elif lower == b"content-length":
        kind = _LENGTH
    elif lower[:12] == b"x-stainless-":
        kind = lower
    elif lower in CREDENTIAL_HEADERS:
        kind = _CREDENTIAL
    else:
        kind = _PASS
    if len(_kinds) > 1024:
        _kinds.clear()
    _kinds[name] = kind
    return kind


_STREAM_FLAG = re.compile(rb'"stream"\s*:\s*true')
_MODEL = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.)*)"')
# The same for a value with no escapes, the usual case: tried first.
_PLAIN_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]*)"')
# Every escape of a letter of "model" starts so (m o d e l: \u006d \u006f \u0064 \u0065 \u006c).
_ESCAPED_LETTER = b"\\u006"


def read_body(
    body: bytes | None, aliases: Mapping[str, str], parsed: ParsedBody | None = None
) -> tuple[str | None, str | None, bytes | None, bool]:
    """A JSON body's top-level ``model`` (rewritten per ``aliases``) and ``stream`` flag.

    Returns (model as asked, model as sent, body to send, streamed). The model is the
    top-level field only, as the gateway reads it: a ``"model"`` key inside a tool call's
    input, ``metadata`` or a schema does not count. None: no top-level model that is a
    string (the policy tells "absent" from "unreadable", ``policy.check``).

    Cheap in the usual case: a body with exactly one ``"model"`` key spelt plainly is
    scanned, not parsed (a multimodal body can be megabytes). Anything else (several
    ``"model"`` keys, or, when the policy is looking (``parsed`` given), a key that may be
    spelt with ``\\u`` escapes) is parsed, through ``parsed`` when given so that the policy
    reuses the parse. The one case the scan reads differently from a parse is a body whose
    only ``"model"`` key is nested (no top-level model at all): the policy then judges that
    name, which can only refuse a request that would have passed, never let a model through.
    The body is re-encoded only when its model is aliased. Anything that is not a JSON object
    is forwarded untouched.
    """
    if not body or body.lstrip()[:1] != b"{":
        field = form_model(body) if body and body[:2] == b"--" else None
        return field, field, body, False
    stream = b'"stream"' in body and _STREAM_FLAG.search(body) is not None
    first = body.find(b'"model"')
    # A key spelt with escapes is the gateway's "model" but not ours: only the policy must care.
    plain = parsed is None or _ESCAPED_LETTER not in body
    if first == -1 and plain:
        return None, None, body, stream  # no model key at all: nothing to read
    found = None
    if first != -1 and plain and body.find(b'"model"', first + 7) == -1:
        found = _PLAIN_MODEL.match(body, first)
        if found is not None:
            model: str | None = found.group(1).decode("utf-8", "replace")
        else:
            found = _MODEL.match(body, first)
            model = _decoded(found.group(1)) if found is not None else None
    document: object = None
    if found is None:
        document = parsed.document() if parsed is not None else _parse(body)
        if not isinstance(document, dict):
            return None, None, body, stream  # not JSON after all: forwarded as it is
        value = document.get("model")
        model = value if isinstance(value, str) else None
        stream = document.get("stream") is True
    if model is None or model not in aliases:
        return model, model, body, stream
    if document is None:
        document = parsed.document() if parsed is not None else _parse(body)
    if not isinstance(document, dict) or document.get("model") != model:
        return model, model, body, stream
    target = aliases[model]
    document["model"] = target
    if found is not None:
        # The only "model" key is the top-level one (the parse confirmed it): swap its value in
        # place. Re-encoding a megabyte of base64 images costs more than parsing it did.
        value = json.dumps(target, ensure_ascii=False)[1:-1].encode()
        return model, target, body[: found.start(1)] + value + body[found.end(1) :], stream
    return model, target, json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode(), stream


# One part's header block in a multipart/form-data body: the plain form field named "model"
# (a part with a filename is a file, whatever its name).
_MODEL_FIELD = re.compile(rb'(?im)^content-disposition:[ \t]*form-data;[ \t]*name="?model"?[ \t]*$')
_FILENAME = re.compile(rb"(?i)filename\*?=")


def form_model(body: bytes) -> str | None:
    """The ``model`` field of a multipart/form-data body (an upload: audio transcriptions,
    image edits), as a gateway's form parser reads it: the first plain field of that name.

    The body is walked part by part from its first line, the boundary; a file's content is
    skipped whole (never searched), so a file that happens to hold the text of a form field
    cannot stand in for the real one. None when the body is not a well-formed form or has no
    such field."""
    line_end = body.find(b"\r\n")
    if line_end < 3:
        return None
    delimiter = b"\r\n" + body[:line_end]
    start = line_end + 2
    while True:
        headers_end = body.find(b"\r\n\r\n", start)
        next_part = body.find(delimiter, start)
        if headers_end == -1 or next_part == -1 or headers_end > next_part:
            return None
        headers = body[start:headers_end]
        if _MODEL_FIELD.search(headers) is not None and _FILENAME.search(headers) is None:
            return body[headers_end + 4 : next_part].decode("utf-8", "replace")
        start = next_part + len(delimiter) + 2  # past the boundary and its line end
        if body[start - 2 : start] != b"\r\n":
            return None  # "--" after the boundary: the form's end


def _decoded(raw: bytes) -> str:
    """A JSON string's content as the gateway reads it: escapes decoded when there are any."""
    if b"\\" not in raw:
        return raw.decode("utf-8", "replace")
    try:
        value = json.loads(b'"' + raw + b'"')
    except ValueError:
        return raw.decode("utf-8", "replace")
    return value if isinstance(value, str) else raw.decode("utf-8", "replace")


def _parse(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None
