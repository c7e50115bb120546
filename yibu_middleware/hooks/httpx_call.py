"""One redirected call made with httpx or httpx2: translation between their objects and the shared call.

Everything here is shared by the sync and async halves of ``httpx_family``; nothing
here sends or reads bytes. The call's state, verdicts and loop are ``call.Call``'s:
this module only turns httpx requests, responses and exceptions into plain data and
back, and builds each attempt's request as cheaply as it can.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any

from ..core.errors import ErrorBodyReader
from ..core.nodes import Node
from ..core.plan import Send
from ..core.request import GatewayRequest
from ..core.retry import Kind
from ..core.routes import Route
from ..runtime import Runtime
from .call import Call, UnderWay

# The length of a streamed request body (dropped by prepare(), which cannot know the body);
# copied when the body is forwarded as it is. Transfer-Encoding is never dropped.
_FRAMING = ("content-length",)
_TIMEOUTS = ("connect", "read", "write", "pool")
_SLACK = 0.05  # seconds


class HttpxCall(Call):
    """The state one httpx/httpx2 call carries between attempts."""

    __slots__ = ("_inner_known", "_original_body", "lib", "original")

    def __init__(
        self,
        lib: ModuleType,
        runtime: Runtime,
        original: Any,
        route: Route,
        prepared: GatewayRequest | None = None,
        under_way: UnderWay | None = None,
    ) -> None:
        """``prepared``, ``under_way``: see ``Call``."""
        self.lib = lib
        self.original = original
        try:
            body: bytes | None = original.content
        except lib.RequestNotRead:
            body = _read_form(original) if runtime.rules.allowed else None
        self._original_body = body
        self._inner_known = clonable(lib)  # the library's inner forms are the known ones
        url = original.url
        query = url.query.decode("ascii")
        # The headers' inner triples as they are where their form is known (see clonable):
        # ``.raw`` would build a list of pairs from them on every call.
        headers = original.headers._list if self._inner_known else original.headers.raw
        Call.__init__(self, runtime, route, original.method, url.path, query, headers, body, prepared, under_way)

    def own_timeout(self) -> float | None:
        timeout = (self.original.extensions.get("timeout") or {}).get("read")
        return float(timeout) if timeout is not None else None

    # --- per attempt ------------------------------------------------------------------------

    def request_for(self, action: Send) -> Any:
        """The request for one attempt: the node's URL, and timeouts cut to the deadline."""
        self.runtime.ensure_health_checker()
        gateway = self.gateway
        extensions = self.original.extensions
        own = extensions.get("timeout") or {}
        timeouts = cut_timeouts(own, self.plan.timeout_left(), self.ttft)
        if timeouts is not own:
            extensions = {**extensions, "timeout": timeouts}
        url, netloc = node_url(self.lib, action.node, gateway.path, gateway.query)
        if gateway.body is not None and gateway.body is self._original_body and self._inner_known:
            return clone_request(self.lib, self.original, url, netloc, extensions, gateway, self.trace_headers)
        headers = [*gateway.headers, *self.trace_headers] if self.trace_headers else gateway.headers
        if gateway.body is None:
            # A streamed body (an upload, a generator): its length headers as the app sent them,
            # and a Host for the node, which httpx adds only when it builds the body itself.
            original = self.original.headers
            framing = [(name.encode(), original[name].encode()) for name in _FRAMING if name in original]
            request = type(self.original)(
                gateway.method,
                url,
                headers=[*headers, *framing],
                stream=self.original.stream,
                extensions=extensions,
            )
            request.headers["Host"] = request.url.netloc.decode("ascii")
            return request
        return type(self.original)(gateway.method, url, headers=headers, content=gateway.body, extensions=extensions)

    # --- httpx's objects, for the shared call -----------------------------------------------

    def kind_of(self, exc: BaseException) -> Kind:
        lib = self.lib
        if isinstance(exc, lib.PoolTimeout):
            return Kind.FINAL  # our own connection pool is full: no node is to blame, none would help
        if isinstance(exc, (lib.ConnectError, lib.ConnectTimeout)):
            return Kind.NOT_SENT
        if isinstance(exc, (lib.TimeoutException, lib.NetworkError, lib.RemoteProtocolError)):
            return Kind.NODE_FAILED
        return Kind.FINAL

    def is_timeout(self, exc: BaseException) -> bool:
        return isinstance(exc, self.lib.TimeoutException)

    def error_body(self, response: Any) -> bytes:
        body: bytes = response.content
        return body

    def retry_hints(self, response: Any) -> Mapping[str, str]:
        headers = response.headers
        return {name: headers[name] for name in ("retry-after", "retry-after-ms") if name in headers}

    def headers_of(self, response: Any) -> Iterable[tuple[str, str]]:
        items: Iterable[tuple[str, str]] = response.headers.multi_items()
        return items

    def reads_whole(self, response: Any) -> bool:
        """A JSON answer whose usage is wanted (a span, a token limit) is read whole before it
        is handed back, as the SDK would read it at once anyway: cheaper than watching its
        body go by, and a connection lost while reading it can still be retried."""
        return (
            self.reader is not None
            and not self.gateway.stream
            and content_type(response, self._inner_known).startswith(b"application/json")
        )

    def watches_stream(self, response: Any) -> bool:
        if not self.gateway.stream or response.status_code != 200:
            return False
        inner_known = self._inner_known
        return content_type(response, inner_known).startswith(b"text/event-stream") and not _encoded(
            response, inner_known
        )

    def answer(self, status: int, headers: list[tuple[str, str]], body: bytes, based_on: Any) -> Any:
        if based_on is None:
            return self.lib.Response(status, headers=headers, content=body)
        return self.lib.Response(status, headers=headers, content=body, extensions=based_on.extensions)

    def timeout_error(self, message: str) -> BaseException:
        error: BaseException = self.lib.ReadTimeout(message, request=self.original)
        return error

    def stream_error(self, node: Any, detail: str) -> Exception:
        """The error a caller gets when a stream breaks after its first content."""
        error: Exception = self.lib.RemoteProtocolError(self.stream_broke(node, detail), request=self.original)
        return error


def read_error_body(response: Any) -> None:
    """Read a node's error body within bounds (see ``ErrorBodyReader``): what was read becomes the
    response's content, and its connection is closed."""
    reader = ErrorBodyReader(response.headers.get("content-encoding", ""))
    for chunk in response.iter_raw() if reader.wire else response.iter_bytes():
        if reader.feed(chunk):
            break
    response.close()
    response._content = reader.body()


async def aread_error_body(response: Any) -> None:
    """The async twin of ``read_error_body``."""
    reader = ErrorBodyReader(response.headers.get("content-encoding", ""))
    async for chunk in response.aiter_raw() if reader.wire else response.aiter_bytes():
        if reader.feed(chunk):
            break
    await response.aclose()
    response._content = reader.body()


def clone_request(
    lib: ModuleType,
    original: Any,
    url: Any,
    netloc: bytes,
    extensions: dict[str, Any],
    gateway: GatewayRequest,
    trace_headers: list[tuple[bytes, bytes]],
) -> Any:
    """The app's request with the node's URL and the gateway's headers, its body object reused.

    Building a request from scratch re-encodes the body and normalises every header
    twice, a fifth of the hook's own cost; the body is the same bytes as the app's
    (neither aliased nor streamed: the caller checks), so the original's body stream is
    shared. Only for a library whose inner forms are the known ones (``clonable``)."""
    assert gateway.body is not None
    request = object.__new__(type(original))
    request.__dict__.update(original.__dict__)
    request.url = url
    # Headers built from their parts: every name and value is bytes already, so httpx's
    # per-header checks and normalisation have nothing to do (checked by clonable).
    request.headers = fresh = lib.Headers()
    fresh._list = listed = [*gateway.lowered_headers]
    if trace_headers:
        listed += [(name, name.lower(), value) for name, value in trace_headers]
    listed.append((b"Host", b"host", netloc))
    listed.append((b"Content-Length", b"content-length", b"%d" % len(gateway.body)))
    request.extensions = extensions
    return request


def cut_timeouts(original: dict[str, float | None], left: float | None, ttft: float | None) -> dict[str, float | None]:
    """A request's timeouts cut to ``left``, what is left of the call's deadline, and the read
    timeout to ``ttft``, a stream's first-token timeout: ``original`` itself when nothing is cut
    (most first attempts), so that the request's extensions are shared, not copied."""
    if ttft is None:
        if left is None:
            return original
        ceiling = left + _SLACK
        for name in _TIMEOUTS:  # a timeout missing or None is none at all: it gets the deadline
            current = original.get(name)
            if current is None or current > ceiling:
                break
        else:
            return original  # every timeout within the deadline: nothing to cut
    read_limit = left if ttft is None else ttft if left is None else min(left, ttft)
    timeouts = dict(original)
    cut = False
    for name in _TIMEOUTS:
        limit = read_limit if name == "read" else left
        current = timeouts.get(name)
        # A timeout at most _SLACK over the limit is kept: on a first attempt the deadline is
        # the SDK's own read timeout, less the microseconds spent so far.
        if limit is not None and (current is None or current > limit + _SLACK):
            timeouts[name] = limit
            cut = True
    return timeouts if cut else original


# The request attributes a clone copies, and the headers' inner list (httpx since 0.18, and
# httpx2): checked once per library, so that a release that changes them falls back to the
# constructor.
_REQUEST_FIELDS = frozenset({"method", "url", "headers", "extensions", "stream", "_content"})
_clonable_libs: dict[str, bool] = {}


def clonable(lib: ModuleType) -> bool:
    known = _clonable_libs.get(lib.__name__)
    if known is None:
        probe = lib.Request("POST", "http://127.0.0.1/", content=b"{}")
        headers = lib.Headers([(b"X-A", b"b")])
        known = _clonable_libs[lib.__name__] = set(vars(probe)) == _REQUEST_FIELDS and getattr(
            headers, "_list", None
        ) == [(b"X-A", b"x-a", b"b")]
    return known


def content_type(response: Any, inner_known: bool) -> bytes:
    """A response's Content-Type, lowered (b"" if none).

    Read from the headers' inner list where that is known to hold lowered names, stopping
    at the first match: a lookup through ``Headers`` first works out the headers' encoding,
    lowers the name and collects every match."""
    if inner_known:
        for _, name, value in response.headers._list:
            if name == b"content-type":
                lowered: bytes = value.lower()
                return lowered
        return b""
    stated: str = response.headers.get("content-type", "")
    return stated.lower().encode("latin-1")


def _encoded(response: Any, inner_known: bool) -> bool:
    """Whether a response has a Content-Encoding (read like ``content_type``)."""
    if inner_known:
        return any(name == b"content-encoding" for _, name, _ in response.headers._list)
    return "content-encoding" in response.headers


_urls: dict[tuple[str, Node, str, str], tuple[Any, bytes]] = {}


def node_url(lib: ModuleType, node: Node, path: str, query: str) -> tuple[Any, bytes]:
    """A node's parsed URL for a gateway path and query, and its Host header value, reused:
    parsing is a third of building a request, and a process sends to few distinct node URLs.
    Bounded, for apps that put ids in their paths."""
    key = (lib.__name__, node, path, query)  # httpx and httpx2 have URL types of their own
    found = _urls.get(key)
    if found is None:
        if len(_urls) > 512:
            _urls.clear()
        url = lib.URL(node.url_for(path, query))
        found = _urls[key] = (url, url.netloc)
    return found


def _read_form(request: Any) -> bytes | None:
    """A multipart form (an SDK's upload: audio transcriptions, image edits) read into memory,
    for a model allow-list to see its ``model`` field; the request then holds it as bytes, so
    it can also be sent again to another node. Any other streamed body (a generator, a file)
    is forwarded as it is and never replayed: None. httpx's form stream is iterable, sync or
    async client alike; the SDKs build it from files they have already read into memory."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return None
    if not hasattr(request.stream, "__iter__"):
        return None
    body: bytes = request.read()
    return body
