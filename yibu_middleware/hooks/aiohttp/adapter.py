"""aiohttp's objects in the pipeline's terms, and one attempt's I/O through the session's middleware chain.

Each attempt sends a copy of aiohttp's request with the node's URL and the gateway's
headers, down the rest of the session's middleware chain (the ``handler`` our middleware
was given), bounded by the call's deadline (and, for a stream, by
``stream.first_token_timeout``) up to its answer and, for a stream, its first content. An
error body is read before the verdict; an event stream is read up to its first content,
then ``response.content`` is replaced by a reader that holds what was read and fetches the
rest from the node's stream as the app reads, watched (see :class:`_Relay`).

aiohttp is never imported here: its types are taken from the module being hooked, and
checked then, so that an aiohttp whose shape changed fails at import with a clear
message rather than letting its traffic go straight to the provider.
"""

from __future__ import annotations

import asyncio
import functools
import http
import importlib
import inspect
import os
from collections.abc import AsyncIterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ...core.error_bodies import ErrorBodyReader
from ...core.nodes import Node
from ...core.plan import Deliver, Send
from ...core.retry import Kind
from ...core.sse import StreamWatch
from ...pipeline.adapter import AsyncAdapter, FailureKinds
from ...pipeline.call import Call, Commit
from ..proxies import no_proxy_covers

if TYPE_CHECKING:
    from aiohttp import StreamReader as _ReaderBase
else:
    _ReaderBase = object

# ClientResponse's keyword-only constructor parameters we know how to fill (3.12-3.14).
_RESPONSE_PARAMETERS = frozenset(
    {"writer", "continue100", "timer", "request_info", "traces", "loop", "session", "stream_writer"}
)


class Lib:
    """The aiohttp types an attempt needs, taken (and their shape checked) when aiohttp is hooked."""

    def __init__(self, aiohttp: ModuleType) -> None:
        session = aiohttp.ClientSession
        if "middlewares" not in inspect.signature(session._request).parameters or "_middlewares" not in getattr(
            session, "ATTRS", ()
        ):
            raise TypeError("ClientSession._request takes no middlewares (aiohttp 3.12 or newer is needed)")
        streams = importlib.import_module("aiohttp.streams")
        if not inspect.iscoroutinefunction(getattr(streams.StreamReader, "_wait", None)):
            raise TypeError("StreamReader._wait is gone")
        self.ClientRequest = importlib.import_module("aiohttp.client_reqrep").ClientRequest
        if "__slots__" in vars(self.ClientRequest):
            raise TypeError("ClientRequest has slots: it cannot be copied per attempt")
        self.ClientResponse = aiohttp.ClientResponse
        parameters = inspect.signature(self.ClientResponse.__init__).parameters.values()
        required = {p.name for p in parameters if p.kind is p.KEYWORD_ONLY and p.default is p.empty}
        if not required <= _RESPONSE_PARAMETERS:
            raise TypeError(f"ClientResponse needs {sorted(required - _RESPONSE_PARAMETERS)}")
        self.response_parameters = {p.name for p in parameters}
        self.multidict = importlib.import_module("multidict")
        self.URL = importlib.import_module("yarl").URL
        self.BytesPayload = aiohttp.BytesPayload
        # A request's bytes are read with it (json= and data= bodies are BytesPayloads): 3.12.2+.
        if not inspect.iscoroutinefunction(getattr(aiohttp.BytesPayload, "as_bytes", None)):
            raise TypeError("BytesPayload.as_bytes is missing (aiohttp 3.12.2 or newer is needed)")
        helpers = importlib.import_module("aiohttp.helpers")
        self.TimerNoop = helpers.TimerNoop
        self.get_env_proxy_for_url = helpers.get_env_proxy_for_url
        self.HttpVersion11 = aiohttp.HttpVersion11
        self.ClientTimeout = aiohttp.ClientTimeout
        self.ClientPayloadError = aiohttp.ClientPayloadError
        self.ConnectionTimeoutError = aiohttp.ConnectionTimeoutError
        # What aiohttp raises when a read runs out of time (3.10+; before, its base class).
        self.SocketTimeoutError = getattr(aiohttp, "SocketTimeoutError", aiohttp.ServerTimeoutError)
        self.StreamReader = streams.StreamReader
        self.RelayReader = type("RelayReader", (_Relay, streams.StreamReader), {})
        # What an attempt may raise: aiohttp's errors, and the TimeoutError of its time limit.
        self.errors = (aiohttp.ClientError, TimeoutError)
        self.kinds = FailureKinds(
            [
                # Our proxy or a bad URL, not the node: no node would help.
                ((aiohttp.ClientProxyConnectionError, aiohttp.ClientHttpProxyError, aiohttp.InvalidURL), Kind.FINAL),
                # Refused, unresolvable, TLS failed, or a connect timeout.
                ((aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError), Kind.NOT_SENT),
                (
                    (
                        TimeoutError,
                        aiohttp.ClientConnectionError,
                        aiohttp.ClientPayloadError,
                        aiohttp.ClientResponseError,  # what aiohttp raises for a malformed answer
                    ),
                    Kind.NODE_FAILED,
                ),
            ]
        )


class AiohttpAdapter(AsyncAdapter):
    """One aiohttp call: the request as the app's session built it, and the rest of the
    session's middleware chain, which connects and sends."""

    def __init__(
        self, lib: Lib, original: Any, handler: Any, body: bytes | None, timeout: Any, proxy_source: str
    ) -> None:
        """``body``: the request's bytes (None for a body that can be sent once only);
        ``timeout``: the session's or the request's; ``proxy_source``: where the session took
        the request's proxy from, "explicit" (the app's, in code), "environment" (trust_env) or
        "" (none)."""
        self.lib = lib
        self.errors = lib.errors
        self.original = original
        self.handler = handler
        self._timeout = timeout
        self._proxy_source = proxy_source
        url = original.url
        self.method = original.method
        self.path = url.raw_path
        self.query = url.raw_query_string
        self.headers = [(name.encode(), value.encode()) for name, value in original.headers.items()]
        self.body = body
        self._payload: Any = None  # a body the aliases rewrote, as a payload of its own
        self._payload_of: bytes | None = None  # the body it was made from
        self._deadline: float | None = None  # the loop's time by which the attempt must have answered

    def own_timeout(self) -> float | None:
        timeout = self._timeout
        if isinstance(timeout, self.lib.ClientTimeout):
            seconds = timeout.sock_read or timeout.total
            return float(seconds) if seconds else None
        return float(timeout) if isinstance(timeout, (int, float)) else None

    # --- per attempt ------------------------------------------------------------------------

    def request_for(self, call: Call, action: Send) -> Any:
        """A copy of aiohttp's request with the node's URL and the gateway's headers.

        A shallow copy, as aiohttp's own middlewares retry with the same request: the
        payload is shared (bytes payloads can be sent again), so is everything the
        session chose (proxy, TLS settings, timer). The response keeps the app's URL."""
        gateway = call.gateway
        original = self.original
        lib = self.lib
        request = object.__new__(type(original))
        request.__dict__.update(original.__dict__)
        url = _url(lib, action.node.url_for(gateway.path, gateway.query))
        headers = lib.multidict.CIMultiDict()
        for name, value in call.headers_for(action):
            headers.add(name.decode(), value.decode())
        headers["Host"] = url.host_port_subcomponent
        if gateway.body is not None and gateway.body is not self.body:
            if self._payload is None or self._payload_of is not gateway.body:  # a fallback's body is new
                self._payload = lib.BytesPayload(gateway.body)
                self._payload_of = gateway.body
            request._body = self._payload
            headers["Content-Length"] = str(self._payload.size)
        elif "Content-Length" in original.headers:
            headers["Content-Length"] = original.headers["Content-Length"]  # dropped by prepare()
        request.url = url
        request.headers = headers
        if self._proxy_source:
            request.proxy, request.proxy_auth, request.proxy_headers = self.node_proxy(original, url)
        # The attempt's time limit, up to its answer (and a stream's first content).
        limit = call.attempt_limits().read
        self._deadline = None if limit is None else asyncio.get_running_loop().time() + limit
        return request

    def node_proxy(self, original: Any, url: Any) -> tuple[Any, Any, Any]:
        """The proxy for an attempt on a node (``url``): (proxy, proxy_auth, proxy_headers).

        The session chose the request's proxy for the provider's URL. An environment proxy is
        chosen again for the node's URL, as the session chooses one (``get_env_proxy_for_url``:
        NO_PROXY honoured); a proxy the app gave in code is kept for the node, unless the
        environment's NO_PROXY covers the node (see README, "Proxies"). An https node is
        tunnelled (CONNECT): the proxy never sees its headers."""
        if self._proxy_source == "explicit":
            if no_proxy_covers(url.host or "", url.port):
                return None, None, None
            return original.proxy, original.proxy_auth, original.proxy_headers
        proxy, auth = _env_proxy(self.lib, f"{url.scheme}://{url.host_port_subcomponent}", _proxy_environment())
        return proxy, auth, None

    async def send(self, request: Any) -> Any:
        async with asyncio.timeout_at(self._deadline):
            return await self.handler(request)

    async def read_error_body(self, response: Any) -> None:
        """aiohttp inflates a body a piece at a time as it is read: what was read (within bounds)
        is kept as the body; the connection is closed when the rest was left."""
        reader = ErrorBodyReader("")
        async with asyncio.timeout_at(self._deadline):
            while chunk := await response.content.readany():
                if reader.feed(chunk):
                    response.close()
                    break
        response._body = reader.body()

    async def read(self, response: Any) -> None:
        """The whole body, kept on the response; its ``content`` is replaced by a reader holding
        it, for an app that reads the stream rather than ``read()`` / ``json()``."""
        async with asyncio.timeout_at(self._deadline):
            body = await response.read()
        response.content = _complete_reader(self.lib, body)

    async def chunks(self, response: Any) -> AsyncIterator[bytes]:
        content = response.content
        while True:
            async with asyncio.timeout_at(self._deadline):
                chunk: bytes = await content.readany()
            if not chunk:
                return
            yield chunk

    def watch(self, call: Call, node: Node, response: Any, commit: Commit, rest: AsyncIterator[bytes]) -> None:
        # The relay reads on from the node's own reader (``rest`` reads it too, and is dropped).
        response.content = _relay_reader(self, call, node, response.content, commit.read, commit.watch)

    async def close(self, response: Any) -> None:
        response.close()

    def handed_back(self, call: Call, action: Deliver, response: Any) -> Any:
        content = response.content
        if isinstance(content, _Relay):
            content.chosen()  # a watched stream: it ends the call when it ends or is closed
        elif call.reader is not None and response._body is not None:
            call.reader.whole(response._body)  # read whole already: the call ends here
            call.finish()
        elif call.reader is not None:  # the span (and the usage a token limit counts) end with the body
            response.content = _relay_reader(self, call, action.node, content, [], None)
        else:
            call.finish()  # nothing follows its body: the call is over once it is handed back
        return response

    # --- aiohttp's objects, in the pipeline's terms -----------------------------------------

    def kind_of(self, exc: BaseException) -> Kind:
        return self.lib.kinds.kind(exc)

    def is_timeout(self, exc: BaseException) -> bool:
        # aiohttp's ServerTimeoutError is a TimeoutError too; a connect timeout is no answer's.
        return isinstance(exc, TimeoutError) and not isinstance(exc, self.lib.ConnectionTimeoutError)

    def status(self, response: Any) -> int:
        status: int = response.status
        return status

    def error_body(self, response: Any) -> bytes:
        body: bytes = response._body or b""  # kept by read_error_body
        return body

    def answer(self, status: int, headers: list[tuple[str, str]], body: bytes, based_on: Any) -> Any:
        """A ClientResponse of our own, complete: ``raise_for_status()`` raises ClientResponseError,
        ``await read()/json()/text()`` and ``content`` give the body.

        Built the way aiohttp's ClientRequest.send builds one (the constructor's parameters
        are checked when aiohttp is hooked), then given what ``start()`` would have read
        from the wire: status line, headers, and the body in a StreamReader at its end."""
        lib = self.lib
        if based_on is not None:
            based_on.release()  # its body was read: its connection goes back to the pool
        loop = asyncio.get_running_loop()
        original = self.original
        options: dict[str, Any] = {
            "writer": None,
            "continue100": None,
            "timer": lib.TimerNoop(),
            "request_info": original.request_info,
            "traces": [],
            "loop": loop,
            "session": getattr(original, "session", None),
        }
        if "stream_writer" in lib.response_parameters:
            options["stream_writer"] = _SentAlready()
        response = lib.ClientResponse(original.method, original.original_url, **options)
        all_headers = lib.multidict.CIMultiDict([*headers, ("Content-Length", str(len(body)))])
        response.version = lib.HttpVersion11
        response.status = status
        response.reason = _reason(status)
        response._headers = lib.multidict.CIMultiDictProxy(all_headers)
        response._raw_headers = tuple((name.encode(), value.encode()) for name, value in all_headers.items())
        response.content = _complete_reader(lib, body)
        return response

    def timeout_error(self, message: str) -> BaseException:
        error: BaseException = self.lib.SocketTimeoutError(message)
        return error

    def stream_error(self, message: str) -> Exception:
        """aiohttp's own, for a body cut short."""
        error: Exception = self.lib.ClientPayloadError(message)
        return error


def _complete_reader(lib: Lib, body: bytes) -> Any:
    """A StreamReader holding a whole body, at its end."""
    content = lib.StreamReader(_Unpaced(), 2**16, loop=asyncio.get_running_loop())
    content.feed_data(body)
    content.feed_eof()
    return content


def _relay_reader(
    adapter: AiohttpAdapter, call: Call, node: Node, inner: Any, read: list[bytes], watch: StreamWatch | None
) -> Any:
    reader = adapter.lib.RelayReader(_Unpaced(), 2**16, loop=asyncio.get_running_loop())
    reader.relay(adapter, call, node, inner, watch)
    for chunk in read:  # replayed first
        reader.feed_data(chunk)
    reader.replayed = read  # shown to the call's reader only if this answer is the one handed back
    return reader


class _Relay(_ReaderBase):
    """``response.content`` once we have read from it: a real aiohttp StreamReader, so every way
    of reading works (``read``, ``readany``, ``readline``, ``readexactly``, ``iter_any``,
    ``iter_chunked``, ``async for line in ...``), holding what we read before handing the
    response back, then fed from the node's stream on demand.

    Why pull instead of feeding it from a task: every read method of StreamReader that needs
    more data than its buffer holds awaits ``_wait`` (where a reader fed by a connection
    waits for the protocol). Here ``_wait`` fetches the next chunk from the node's own
    reader instead: no task to start, cancel or leak, nothing read before the app asks
    (so flow control stays the connection's), and each chunk is watched as it passes. The
    alternatives were worse: ``unread_data`` is deprecated, and a proxy object would have
    to re-implement every read method. ``_wait`` is checked to exist when aiohttp is hooked.

    An event stream is watched: a cut, a stall past ``stream.first_token_timeout`` or an end
    without the final event raises ClientPayloadError naming the node. The call finishes
    (its span ends) at the end of the body, on such an error, or when the response is
    released or closed (aiohttp then sets an exception on its content).

    Mixed with aiohttp's StreamReader in ``Lib``; ``__init__`` is StreamReader's."""

    _adapter: AiohttpAdapter
    _call: Call
    _node: Node
    _inner: Any
    _watch: StreamWatch | None
    _gap: float | None

    def relay(self, adapter: AiohttpAdapter, call: Call, node: Node, inner: Any, watch: StreamWatch | None) -> None:
        self._adapter, self._call, self._node, self._inner, self._watch = adapter, call, node, inner, watch
        self._gap = call.ttft if watch is not None else None  # a stream's reads, as httpx's read timeout
        self.replayed: list[bytes] = []

    def chosen(self) -> None:
        """This answer is handed back: the call's reader (usage, ids) sees what was read before.
        Not earlier: a hedge's losing stream, or one read before the call knew it was a stream,
        must not count."""
        reader = self._call.reader
        if reader is not None:
            for chunk in self.replayed:
                reader.chunk(chunk)

    def take(self, chunk: bytes) -> None:
        reader = self._call.reader
        if reader is not None:
            reader.chunk(chunk)
        self.feed_data(chunk)

    async def _wait(self, func_name: str) -> None:
        call = self._call
        try:
            async with asyncio.timeout(self._gap):
                chunk: bytes = await self._inner.readany()
        except self._adapter.errors as exc:
            if self._watch is None:
                call.finish(error_type=type(exc).__name__)
                raise
            raise self._broken(str(exc) or type(exc).__name__) from exc
        if chunk:
            if self._watch is not None:
                self._watch.feed(chunk)
            self.take(chunk)
            return
        if self._watch is not None and self._watch.truncated():
            raise self._broken("it ended before its final event")
        self.feed_eof()
        call.finish()

    def _broken(self, detail: str) -> Exception:
        error = self._adapter.stream_broken(self._call, self._node, detail)
        self.set_exception(error)  # every later read raises it too
        return error

    def set_exception(self, exc: BaseException, *args: Any, **kwargs: Any) -> None:
        # aiohttp sets one on a response's content when the response is released or closed.
        super().set_exception(exc, *args, **kwargs)
        if hasattr(self, "_call"):  # not for the body of an answer of our own
            self._call.finish()


class _Unpaced:
    """The protocol of a reader fed only when it is read (or fed once, complete): there is no
    connection whose reading could be paused or resumed."""

    connected = True
    _reading_paused = False  # read by StreamReader itself in aiohttp 3.12-3.13

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


class _SentAlready:
    """The stream writer of a request already sent, for a response of our own (aiohttp 3.14)."""

    output_size = 0


def _proxy_environment() -> tuple[tuple[str, str], ...]:
    """The environment's proxy settings, as a cache key for ``_env_proxy``."""
    return tuple(sorted((name, value) for name, value in os.environ.items() if name.lower().endswith("_proxy")))


@functools.lru_cache(maxsize=64)
def _env_proxy(lib: Lib, origin: str, environment: tuple[tuple[str, str], ...]) -> tuple[Any, Any]:
    """aiohttp's own choice of proxy for ``origin`` from the environment (None when NO_PROXY
    covers it or none is set), made once per origin and environment: it reads ~/.netrc."""
    try:
        proxy, auth = lib.get_env_proxy_for_url(lib.URL(origin))
    except LookupError:
        return None, None
    return proxy, auth


_urls: dict[str, Any] = {}


def _url(lib: Lib, text: str) -> Any:
    """Parsed node URLs, reused (bounded, for apps that put ids in their paths)."""
    url = _urls.get(text)
    if url is None:
        if len(_urls) > 512:
            _urls.clear()
        url = _urls[text] = lib.URL(text, encoded=True)
    return url


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""
