"""Adapter for aiohttp: ``ClientSession._request`` hooked in place, the attempts run as a client middleware.

Every way of sending with a session (``session.post(...)``, ``async with
session.post(...)``, ``session.request``, ``aiohttp.request``) goes through
``ClientSession._request``. It builds the final request (session headers merged,
``json=``/``data=`` encoded, auth and cookies applied) and passes it down a chain of
client middlewares (aiohttp 3.12+) to the function that connects and sends. The hook
adds one middleware of ours at the end of that chain, the innermost, so it sees each
request exactly as it goes on the wire, below the app's own middlewares, redirects
and timeouts, like the transports hooked for httpx. A request whose host is not routed
passes straight through it; one to a node (openai's ``DefaultAioHttpClient`` sends
over aiohttp after the httpx2-family hook routed it) is not routed either, so a call
is never handled twice.

Each attempt sends a copy of aiohttp's request with the node's URL and the gateway's
headers, bounded by the call's deadline (and, for a stream, by
``stream.first_token_timeout``). An error body is read before the verdict; an event
stream is read up to its first content, then ``response.content`` is replaced by a
reader that holds what was read and fetches the rest from the node's stream as the app
reads, watched (see :class:`_Relay`).

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
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..core.errors import ErrorBodyReader
from ..core.nodes import Node
from ..core.plan import Deliver, GiveUp, Send
from ..core.retry import Kind
from ..core.routes import Route
from ..core.sse import StreamWatch
from ..runtime import Runtime, current
from .base import Hook
from .call import Call, Commit, Exchange, no_proxy_covers

if TYPE_CHECKING:
    from aiohttp import StreamReader as _ReaderBase
else:
    _ReaderBase = object

# ClientResponse's keyword-only constructor parameters we know how to fill (3.12-3.14).
_RESPONSE_PARAMETERS = frozenset(
    {"writer", "continue100", "timer", "request_info", "traces", "loop", "session", "stream_writer"}
)


class AiohttpHook(Hook):
    name = "aiohttp"
    module = "aiohttp"
    distribution = "aiohttp"

    def patch(self, module: ModuleType) -> None:
        lib = _Lib(module)
        self.wrap(module.ClientSession, "_request", _request_wrapper(lib))


class _Lib:
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
        helpers = importlib.import_module("aiohttp.helpers")
        self.TimerNoop = helpers.TimerNoop
        self.get_env_proxy_for_url = helpers.get_env_proxy_for_url
        self.HttpVersion11 = aiohttp.HttpVersion11
        self.ClientTimeout = aiohttp.ClientTimeout
        self.ClientPayloadError = aiohttp.ClientPayloadError
        # What aiohttp raises when a read runs out of time (3.10+; before, its base class).
        self.SocketTimeoutError = getattr(aiohttp, "SocketTimeoutError", aiohttp.ServerTimeoutError)
        self.RelayReader = type("RelayReader", (_Relay, streams.StreamReader), {})
        # What an attempt may raise: aiohttp's errors, and the TimeoutError of its time limit.
        self.errors = (aiohttp.ClientError, TimeoutError)
        self.ours = (aiohttp.ClientProxyConnectionError, aiohttp.ClientHttpProxyError, aiohttp.InvalidURL)
        self.not_sent = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)  # DNS and TLS too
        self.node_failed = (
            TimeoutError,
            aiohttp.ClientConnectionError,
            aiohttp.ClientPayloadError,
            aiohttp.ClientResponseError,  # what aiohttp raises for a malformed answer
        )


def _request_wrapper(lib: _Lib) -> Any:
    async def _request(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if current() is None:
            return await wrapped(*args, **kwargs)
        # Ours goes last in the chain (innermost): the app's own middlewares see the call once,
        # as the app made it. Per-request middlewares replace the session's, as aiohttp has it.
        given = kwargs.get("middlewares")
        chain = instance._middlewares if given is None else given
        # Where the request's proxy comes from: the app's own (in code), else the environment's
        # (trust_env), else none; the node's is chosen by the same rule (AiohttpCall.node_proxy).
        explicit = kwargs.get("proxy") is not None or getattr(instance, "_default_proxy", None) is not None
        proxy_source = "explicit" if explicit else "environment" if instance._trust_env else ""
        ours = functools.partial(_middleware, lib, kwargs.get("timeout", instance.timeout), proxy_source)
        kwargs["middlewares"] = (*chain, ours)
        return await wrapped(*args, **kwargs)

    return _request


async def _middleware(lib: _Lib, timeout: Any, proxy_source: str, request: Any, handler: Any) -> Any:
    """Our middleware: a request for a routed host becomes a call; any other passes through."""
    runtime = current()
    route = (
        runtime.routes.match(request.url.raw_host or "", request.url.port, request.url.path)
        if runtime is not None
        else None
    )
    if route is None or runtime is None:
        return await handler(request)
    body = request.body  # a Payload, or b"" when there is none
    data: bytes | None
    if isinstance(body, bytes):
        data = body
    elif isinstance(body, lib.BytesPayload):
        data = bytes(await body.as_bytes())  # bytes, str and json= bodies
    else:
        data = None  # a file, a stream or a multipart form: forwarded as it is, and never replayed
    call = AiohttpCall(lib, runtime, route, request, handler, data, timeout, proxy_source)
    # Partials rather than closures: calling one adds no Python frame of its own.
    return await call.run_async(functools.partial(_exchange, call), _aclose, functools.partial(_hand_back, call))


async def _aclose(response: Any) -> None:
    response.close()


async def _exchange(call: AiohttpCall, action: Send) -> Exchange:
    response = None
    try:
        async with asyncio.timeout(call.attempt_limit()):
            response = await call.handler(call.request_for(action))
            status: int = response.status
            if 300 <= status < 400 and (
                redirect := call.redirected(action.node, status, response.headers.get("location"))
            ):
                response.close()  # never followed (the session would, with the app's headers): see Call.redirected
                return Exchange(action, None, 0, redirect)
            if status >= 400:
                await _read_error_body(response)  # before judging; within bounds (see ErrorBodyReader)
            elif call.watches_stream(response):
                failure = await _commit(call, action, response)
                if failure is not None:
                    response.close()
                    return Exchange(action, None, 0, call.stream_failed(failure))
        return Exchange(action, response, status, None)
    except call.lib.errors as exc:
        if response is not None:
            response.close()
        return Exchange(action, None, 0, call.failure(exc))
    except BaseException:
        if response is not None:
            response.close()  # the caller's loop frees the node slot
        raise


async def _read_error_body(response: Any) -> None:
    """Read a node's error body within bounds (aiohttp inflates it a piece at a time as it is
    read): what was read is kept as the body; the connection is closed when the rest was left."""
    reader = ErrorBodyReader("")
    while chunk := await response.content.readany():
        if reader.feed(chunk):
            response.close()
            break
    response._body = reader.body()


async def _commit(call: AiohttpCall, action: Send, response: Any) -> str | None:
    """Read to the first content. None: committed, ``response.content`` replaced; else why not."""
    commit = Commit(call)
    content = response.content
    while chunk := await content.readany():  # an aiohttp error here is the exchange's error
        if commit.took(chunk):
            break
    failure = commit.failure()
    if failure is None:
        response.content = _relay_reader(call, action.node, content, commit.read, commit.watch)
    return failure


def _hand_back(call: AiohttpCall, action: Deliver | GiveUp, done: Exchange | None) -> Any:
    if isinstance(action, GiveUp):
        return call.give_up(action)
    assert done is not None  # a Deliver follows an answer
    delivered = call.deliver(action, done)
    if not action.final:
        if isinstance(delivered.content, _Relay):
            delivered.content.chosen()  # a watched stream: it finishes the call when it ends or is closed
        elif call.reader is not None:  # the span (and the usage a token limit counts) end with the body
            delivered.content = _relay_reader(call, action.node, delivered.content, [], None)
        else:
            call.finish()  # nothing follows its body: the call is over once it is handed back
    return delivered


class AiohttpCall(Call):
    """The state one aiohttp call carries between attempts."""

    __slots__ = ("_body", "_proxy_source", "_timeout", "handler", "lib", "original")

    def __init__(
        self,
        lib: _Lib,
        runtime: Runtime,
        route: Route,
        original: Any,
        handler: Any,
        body: bytes | None,
        timeout: Any,
        proxy_source: str = "",
    ) -> None:
        """``proxy_source``: where the session took the request's proxy from, "explicit" (the
        app's, in code), "environment" (trust_env) or "" (none)."""
        self.lib = lib
        self._proxy_source = proxy_source
        self.original = original  # aiohttp's request, as the app's session built it
        self.handler = handler  # the rest of the middleware chain: connects and sends
        self._timeout = timeout
        url = original.url
        headers = [(name.encode(), value.encode()) for name, value in original.headers.items()]
        Call.__init__(self, runtime, route, original.method, url.raw_path, url.raw_query_string, headers, body)
        gateway_body = self.gateway.body
        # A body the aliases rewrote is sent as a payload of its own; otherwise the app's is reused.
        self._body = lib.BytesPayload(gateway_body) if gateway_body is not None and gateway_body is not body else None

    def own_timeout(self) -> float | None:
        timeout = self._timeout
        if isinstance(timeout, self.lib.ClientTimeout):
            seconds = timeout.sock_read or timeout.total
            return float(seconds) if seconds else None
        return float(timeout) if isinstance(timeout, (int, float)) else None

    # --- per attempt ------------------------------------------------------------------------

    def request_for(self, action: Send) -> Any:
        """A copy of aiohttp's request with the node's URL and the gateway's headers.

        A shallow copy, as aiohttp's own middlewares retry with the same request: the
        payload is shared (bytes payloads can be sent again), so is everything the
        session chose (proxy, TLS settings, timer). The response keeps the app's URL."""
        self.runtime.ensure_health_checker()
        gateway = self.gateway
        original = self.original
        lib = self.lib
        request = object.__new__(type(original))
        request.__dict__.update(original.__dict__)
        url = _url(lib, action.node.url_for(gateway.path, gateway.query))
        headers = lib.multidict.CIMultiDict()
        for name, value in gateway.headers:
            headers.add(name.decode(), value.decode())
        for name, value in self.trace_headers:
            headers.add(name.decode(), value.decode())
        headers["Host"] = url.host_port_subcomponent
        if self._body is not None:
            request._body = self._body
            headers["Content-Length"] = str(self._body.size)
        elif "Content-Length" in original.headers:
            headers["Content-Length"] = original.headers["Content-Length"]  # dropped by prepare()
        request.url = url
        request.headers = headers
        if self._proxy_source:
            request.proxy, request.proxy_auth, request.proxy_headers = self.node_proxy(original, url)
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

    def attempt_limit(self) -> float | None:
        """Seconds one attempt may take up to its answer (and a stream's first content)."""
        left = self.plan.timeout_left()
        if self.ttft is None:
            return left
        return self.ttft if left is None else min(left, self.ttft)

    # --- aiohttp's objects, for the shared call ---------------------------------------------

    def kind_of(self, exc: BaseException) -> Kind:
        lib = self.lib
        if isinstance(exc, lib.ours):
            return Kind.FINAL  # our proxy or a bad URL, not the node: no node would help
        if isinstance(exc, lib.not_sent):
            return Kind.NOT_SENT  # refused, unresolvable, TLS failed, or a connect timeout
        if isinstance(exc, lib.node_failed):
            return Kind.NODE_FAILED
        return Kind.FINAL

    def is_timeout(self, exc: BaseException) -> bool:
        return isinstance(exc, TimeoutError)  # aiohttp's ServerTimeoutError is one too

    def error_body(self, response: Any) -> bytes:
        # Read by the exchange (``await response.read()``), which keeps it on the response.
        body: bytes = response._body or b""
        return body

    def retry_hints(self, response: Any) -> Mapping[str, str]:
        headers = response.headers
        return {name: headers[name] for name in ("retry-after", "retry-after-ms") if name in headers}

    def headers_of(self, response: Any) -> Iterable[tuple[str, str]]:
        items: Iterable[tuple[str, str]] = response.headers.items()
        return items

    def watches_stream(self, response: Any) -> bool:
        headers = response.headers
        return (
            self.gateway.stream
            and response.status == 200
            and headers.get("content-type", "").startswith("text/event-stream")
            and "content-encoding" not in headers
        )

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
        content = lib.RelayReader(_Unpaced(), 2**16, loop=loop)
        content.feed_data(body)
        content.feed_eof()
        response.content = content
        return response

    def timeout_error(self, message: str) -> BaseException:
        error: BaseException = self.lib.SocketTimeoutError(message)
        return error

    def stream_error(self, node: Node, detail: str) -> Exception:
        """The error a caller gets when a stream breaks after its first content: aiohttp's own
        for a body cut short."""
        error: Exception = self.lib.ClientPayloadError(self.stream_broke(node, detail))
        return error


def _relay_reader(call: AiohttpCall, node: Node, inner: Any, read: list[bytes], watch: StreamWatch | None) -> Any:
    reader = call.lib.RelayReader(_Unpaced(), 2**16, loop=asyncio.get_running_loop())
    reader.relay(call, node, inner, watch)
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

    Mixed with aiohttp's StreamReader in ``_Lib``; ``__init__`` is StreamReader's."""

    _call: AiohttpCall
    _node: Node
    _inner: Any
    _watch: StreamWatch | None
    _gap: float | None

    def relay(self, call: AiohttpCall, node: Node, inner: Any, watch: StreamWatch | None) -> None:
        self._call, self._node, self._inner, self._watch = call, node, inner, watch
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
        except call.lib.errors as exc:
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
        error = self._call.stream_error(self._node, detail)
        self._call.finish(error_type=type(error).__name__)
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
def _env_proxy(lib: _Lib, origin: str, environment: tuple[tuple[str, str], ...]) -> tuple[Any, Any]:
    """aiohttp's own choice of proxy for ``origin`` from the environment (None when NO_PROXY
    covers it or none is set), made once per origin and environment: it reads ~/.netrc."""
    try:
        proxy, auth = lib.get_env_proxy_for_url(lib.URL(origin))
    except LookupError:
        return None, None
    return proxy, auth


_urls: dict[str, Any] = {}


def _url(lib: _Lib, text: str) -> Any:
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
