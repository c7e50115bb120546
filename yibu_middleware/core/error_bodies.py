"""Error bodies: ours, in the provider's own format, and a node's, read within bounds.

Ours are used when the library answers for the gateway (every node failed), or when a
failed answer is handed back with the story of each node tried added to its message, so
that each SDK raises its usual exception. A node's error body is read at most
``MAX_ERROR_BODY`` bytes decoded (``ErrorBodyReader``) and parsed only as deep as the
decoder can go (``parse_json``): a hostile node's gzip bomb or 100,000 nested brackets
reach the app as the SDK's usual HTTP error, never as memory or a RecursionError.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

# Decoded bytes of a node's error body that are read; the rest is dropped and its connection
# closed. An error message is a few hundred bytes; a megabyte leaves room for a gateway's HTML
# page, and is all a gzip bomb (64 MiB in 64 KiB on the wire) gets to inflate.
MAX_ERROR_BODY = 1024 * 1024
# Compressed bytes read for it at most: a stream of empty deflate blocks inflates to nothing.
_MAX_ERROR_WIRE = 2 * MAX_ERROR_BODY

# Anthropic's error type for each status (shared notes, "Anthropic").
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def error_body(provider: str, status: int, message: str, code: str) -> bytes:
    """A JSON error body as the provider would send it."""
    if provider == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "api_error")
        document: dict[str, object] = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        document = {"error": {"message": message, "type": "yibu_middleware_error", "param": None, "code": code}}
    return json.dumps(document).encode()


def annotate(body: bytes, note: str) -> bytes | None:
    """The same error body with ``note`` added to its message; None if it is not one we know."""
    document = parse_json(body)
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message", ""), str):
        return None
    error["message"] = f"{error.get('message') or ''} [{note}]".strip()
    try:
        return json.dumps(document).encode()
    except RecursionError:  # read within the decoder's depth, but too deep to write back
        return None


def parse_json(data: bytes | str) -> Any:
    """A JSON document a node sent; None when it is not JSON, or nested too deeply to read.

    The standard decoder recurses once per level: 100,000 nested brackets from a node would
    be the app's RecursionError. Such a document is opaque, as text that is not JSON is."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


class ErrorBodyReader:
    """A node's error body, read within bounds: at most ``MAX_ERROR_BODY`` bytes decoded.

    Fed the body's bytes as they come off the wire, still encoded when the encoding is one
    read here (gzip, deflate, or none): each is inflated only as far as there is room for,
    so a gzip bomb never is whole. For another encoding (br, zstd, several), ``wire`` is
    False: the adapter feeds the bytes its library decoded, which bounds each chunk itself."""

    __slots__ = ("_inflater", "_parts", "_raw", "_size", "_tried_zlib", "wire")

    def __init__(self, content_encoding: str) -> None:
        encoding = content_encoding.strip().lower()
        self._inflater: Any = None
        self._tried_zlib = False  # deflate: zlib-wrapped as HTTP says, or raw as some servers send
        if encoding in ("gzip", "x-gzip"):
            self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._inflater = zlib.decompressobj()
            self._tried_zlib = True
        self.wire = self._inflater is not None or encoding in ("", "identity")
        self._parts: list[bytes] = []
        self._size = 0
        self._raw = 0

    def feed(self, chunk: bytes) -> bool:
        """Take one chunk; True when no more is wanted (the cap is reached, or the data is corrupt)."""
        room = MAX_ERROR_BODY - self._size
        if room <= 0:  # (and never decompress(chunk, 0): zero means no limit to zlib)
            return True
        self._raw += len(chunk)
        data = chunk[:room] if self._inflater is None else self._inflate(chunk, room)
        if data is None:
            return True  # corrupt: what was inflated so far is the body
        self._parts.append(data)
        self._size += len(data)
        return self._size >= MAX_ERROR_BODY or self._raw >= _MAX_ERROR_WIRE

    def _inflate(self, chunk: bytes, room: int) -> bytes | None:
        try:
            data: bytes = self._inflater.decompress(chunk, room)
        except zlib.error:
            if not (self._tried_zlib and self._raw == len(chunk)):
                return None
            self._tried_zlib = False  # the first chunk is not zlib: raw deflate, as some servers send
            self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            return self._inflate(chunk, room)
        return data

    def body(self) -> bytes:
        """What was read (and inflated) of the body."""
        return b"".join(self._parts)
