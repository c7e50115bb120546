"""httpx's and httpx2's objects in the pipeline's terms: the translation half of their adapters.

httpx and httpx2 have the same API, so one adapter serves both, given the library module
(``lib``) whose Request, Response and exception types the hooked transport uses. The I/O
half is in ``_async/adapter.py`` (and the sync one generated from it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from ...core.nodes import Node
from ...core.plan import AttemptLimits, Send
from ...core.retry import Kind
from ...pipeline.adapter import Adapter, FailureKinds
from ...pipeline.call import Call

_TIMEOUTS = ("connect", "read", "write", "pool")
_SLACK = 0.05  # seconds


@functools.cache
def failure_kinds(lib: ModuleType) -> FailureKinds:
    """httpx's transport exceptions, by what they say about the node."""
    return FailureKinds(
        [
            # Our own connection pool is full: no node is to blame, none would help.
            ((lib.PoolTimeout,), Kind.FINAL),
            ((lib.ConnectError, lib.ConnectTimeout), Kind.NOT_SENT),
            ((lib.TimeoutException, lib.NetworkError, lib.RemoteProtocolError), Kind.NODE_FAILED),
        ]
    )


class HttpxAdapter(Adapter):
    """One httpx/httpx2 call: the app's request (``original``) and how its attempts are sent."""

    def __init__(self, lib: ModuleType, kinds: FailureKinds, original: Any, send: Callable[[Any], Any]) -> None:
        """``send``: sends one request with the transport the client chose (see ``sender.py``)."""
        self.lib = lib
        self.kinds = kinds
        self.original = original
        self._send = send
        self.errors = (lib.TransportError,)
        url = original.url
        self.method = original.method
        self.path = url.path
        self.query = url.query.decode("ascii")
        self.headers = original.headers.raw
        try:
            self.body: bytes | None = original.content
        except lib.RequestNotRead:
            self.body = _read_form(original)

    def own_timeout(self) -> float | None:
        timeout = (self.original.extensions.get("timeout") or {}).get("read")
        return float(timeout) if timeout is not None else None

    def request_for(self, call: Call, action: Send) -> Any:
        """The request for one attempt: the node's URL, and timeouts cut to the deadline.

        Built as httpx builds the request it follows a redirect with: from a body stream, with
        its Host and framing headers given (the node's host, and the Content-Length the app's
        request had, for the body sent). Built from ``content=`` instead, httpx would normalise
        every header twice and decode them all to find their encoding: five times the cost
        (about 100 us a call on this machine; see benchmarks/RESULTS.md)."""
        gateway = call.gateway
        extensions = self.original.extensions
        own = extensions.get("timeout") or {}
        timeouts = cut_timeouts(own, call.attempt_limits())
        if timeouts is not own:
            extensions = {**extensions, "timeout": timeouts}
        url, host = node_url(self.lib, action.node, gateway.path, gateway.query)
        body = gateway.body
        framing = [(b"Host", host)]
        if gateway.length is not None:
            # Where the app's request said a length: a body rewritten for an alias has its own,
            # a streamed one (not read, the same bytes) keeps the app's. None: a GET, a chunked upload.
            framing.append((b"Content-Length", gateway.length if body is None else b"%d" % len(body)))
        stream = self.original.stream if body is None else self.lib.ByteStream(body)
        request = self.lib.Request(
            gateway.method, url, headers=[*framing, *call.headers_for(action)], stream=stream, extensions=extensions
        )
        if body is not None:
            request.read()  # its content readable, as with content=: the SDKs' aiohttp transports send that
        return request

    def kind_of(self, exc: BaseException) -> Kind:
        return self.kinds.kind(exc)

    def is_timeout(self, exc: BaseException) -> bool:
        return isinstance(exc, self.lib.TimeoutException) and not isinstance(exc, self.lib.ConnectTimeout)

    def status(self, response: Any) -> int:
        status: int = response.status_code
        return status

    def response_headers(self, response: Any) -> Iterable[tuple[str, str]]:
        items: Iterable[tuple[str, str]] = response.headers.multi_items()
        return items

    def error_body(self, response: Any) -> bytes:
        body: bytes = response.content
        return body

    def answer(self, status: int, headers: list[tuple[str, str]], body: bytes, based_on: Any) -> Any:
        extensions = {} if based_on is None else based_on.extensions
        return self.lib.Response(status, headers=headers, content=body, extensions=extensions)

    def timeout_error(self, message: str) -> BaseException:
        error: BaseException = self.lib.ReadTimeout(message, request=self.original)
        return error

    def stream_error(self, message: str) -> Exception:
        error: Exception = self.lib.RemoteProtocolError(message, request=self.original)
        return error


def cut_timeouts(original: dict[str, float | None], limits: AttemptLimits) -> dict[str, float | None]:
    """A request's timeouts cut to ``limits``: ``original`` itself when nothing is cut (most first
    attempts), so that the request's extensions are shared, not copied."""
    timeouts = dict(original)
    cut = False
    for name in _TIMEOUTS:  # a timeout missing or None is none at all: it gets the limit
        limit = limits.read if name == "read" else limits.every
        current = timeouts.get(name)
        # A timeout at most _SLACK over the limit is kept: on a first attempt the deadline is
        # the SDK's own read timeout, less the microseconds spent so far.
        if limit is not None and (current is None or current > limit + _SLACK):
            timeouts[name] = limit
            cut = True
    return timeouts if cut else original


_urls: dict[tuple[str, Node, str, str], tuple[Any, bytes]] = {}


def node_url(lib: ModuleType, node: Node, path: str, query: str) -> tuple[Any, bytes]:
    """A node's parsed URL for a gateway path and query, and its Host header, reused: a process
    sends to few distinct node URLs, and parsing is a third of building a request. Bounded, for
    apps that put ids in their paths."""
    key = (lib.__name__, node, path, query)  # httpx and httpx2 have URL types of their own
    found = _urls.get(key)
    if found is None:
        if len(_urls) > 512:
            _urls.clear()
        url = lib.URL(node.url_for(path, query))
        found = _urls[key] = (url, url.netloc)
    return found


def _read_form(request: Any) -> bytes | None:
    """A multipart form (an SDK's upload: audio transcriptions, image edits) read into memory, so
    that a model allow-list sees its ``model`` field and the request can be sent again to
    another node. Any other streamed body (a generator, a file) is forwarded as it is and never
    replayed: None. httpx's form stream is iterable, sync or async client alike; the SDKs build
    it from files they have already read into memory."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return None
    if not hasattr(request.stream, "__iter__"):
        return None
    body: bytes = request.read()
    return body
