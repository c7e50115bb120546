"""Adapter for httpx and httpx2 (same API), and the aiohttp-backed transports the SDKs ship.

The hook sits on the transport's ``handle_request`` / ``handle_async_request``, below
the client's auth, redirects and the SDK's own retry loop, so one call of the SDK is
one call here. A request whose host is not routed leaves after one dict lookup. A
request we send on to a node is not routed either (its host is the node's), so a
transport stacked on another hooked transport never handles a call twice.

Each attempt goes out through the transport the client would choose for the node's URL
(its proxy, or none when NO_PROXY covers the node; see below), and a redirect from a
node is a failed attempt, never handed back to the client's redirect handling.

A call that needs nothing up front but a node (no limit, rule, hedge or stream) is
first sent by the fast path (``httpx_fast``), which makes no loop unless that first
attempt does not end the call; the loop then goes on from it.

Each call is a loop of attempts (``Call.run`` / ``run_async``, shared by every client).
One attempt is an *exchange*, defined here (send, then read an error body or a stream
up to its first content: I/O only, no decisions), followed by a *verdict*
(``Call.judge``: the core decides what comes next). Keeping them apart is what lets a
hedge run two exchanges at once and judge only the winner. The sync and async halves
below are the same code, once with ``await``.

Streams: an event stream is read up to its first content before the response is
handed back (the commit point; see ``core/sse.py``). What was read is replayed to
the caller, then the rest passes through chunk by chunk, watched for a cut or a
missing final event, either of which reaches the caller as an error.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from functools import partial
from types import FunctionType, ModuleType
from typing import Any

from ..core.nodes import Node
from ..core.plan import Deliver, GiveUp, Send
from ..core.routes import DEFAULT_PORTS as PORTS
from ..core.sse import StreamWatch
from ..runtime import current
from .base import Hook
from .call import Commit, Exchange, Failure, no_proxy_covers
from .httpx_call import HttpxCall, aread_error_body, read_error_body
from .httpx_fast import FastAttempt, first_attempt


class HttpxFamilyHook(Hook):
    def __init__(self, name: str, module: str, classes: dict[str, str], library: str, distribution: str) -> None:
        """``classes`` maps a class name in ``module`` to its request method; ``library``
        is the module whose Request/Response/exception types those methods use."""
        super().__init__()
        self.name = name
        self.module = module
        self.classes = classes
        self.library = library
        self.distribution = distribution

    def patch(self, module: ModuleType) -> None:
        lib = importlib.import_module(self.library)  # already imported by `module` itself
        for class_name, method in self.classes.items():
            owner = getattr(module, class_name)
            if method == "handle_async_request":
                self.wrap(owner, method, _async_wrapper(lib))
            else:
                self.wrap(owner, method, _sync_wrapper(lib))
        if module is lib:
            # Where a client chooses a transport (and so a proxy) for a URL: noted, so that each
            # attempt can be sent with the transport the client chooses for the node's URL.
            for client_class in ("Client", "AsyncClient"):
                self._note_choice(getattr(lib, client_class))

    def _note_choice(self, owner: type) -> None:
        """Wrap ``owner._transport_for_url`` (see ``_sender``) with a plain function: it runs for
        every request of every client, routed or not, and binding a wrapt wrapper costs more per
        call than the rest of what it does. Put back by ``unpatch`` like any wrapped method;
        wrapt only when another tool's wrapper is there already (kept, as ``wrap`` keeps it)."""
        original = owner.__dict__["_transport_for_url"]
        if not isinstance(original, FunctionType):
            self.wrap(owner, "_transport_for_url", _note_sender)
            return

        @functools.wraps(original)
        def _transport_for_url(client: Any, url: Any) -> Any:
            transport = original(client, url)
            if client._mounts:
                _sender.set((client, transport))
            return transport

        owner._transport_for_url = _transport_for_url  # type: ignore[attr-defined]
        self._originals.append((owner, "_transport_for_url", original))


# --- the transport for a node: the client's choice for the node's URL, not the provider's -------
#
# The client chose the hooked transport (and with it a proxy, or none) for the provider's URL:
# an HTTPS_PROXY for api.openai.com, say, while NO_PROXY covers the node. So each attempt is
# sent with the transport the same client would choose for the node's URL (its mounts: the
# environment's proxies with NO_PROXY when it trusts the environment, or the app's own
# ``proxy=`` / ``mounts=``), and directly (the client's default transport) when the
# environment's NO_PROXY covers the node, whatever proxy the app gave in code: a proxy the app
# chose was chosen for the provider host, and NO_PROXY is where a user says a host is reached
# directly. An https node through a proxy is tunnelled (CONNECT): the proxy sees its host and
# port, never a header. A client without mounts has one transport for every URL: nothing to
# choose, and nothing noted.

# (the client, the transport it chose) of the request being sent in this thread or task.
_sender: ContextVar[tuple[Any, Any] | None] = ContextVar("yibu_httpx_sender", default=None)


def _note_sender(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: Any) -> Any:
    transport = wrapped(*args, **kwargs)
    if instance._mounts:
        _sender.set((instance, transport))
    return transport


def _sender_for(instance: Any, wrapped: Callable[..., Any], method: str) -> Callable[[Any], Any]:
    """How a routed call's attempts are sent: with ``wrapped`` (the hooked transport's own method),
    or, when the client that chose that transport has mounts, with the transport it chooses for
    each node (see above). ``method``: the transports' method, ``handle_request`` or
    ``handle_async_request``."""
    noted = _sender.get()
    if noted is None:
        return wrapped
    _sender.set(None)
    client, chosen = noted
    if chosen is not instance:
        return wrapped  # noted for another transport: this one was called some other way
    return partial(_send_via_client, client, instance, wrapped, method)


def _send_via_client(client: Any, instance: Any, wrapped: Callable[..., Any], method: str, request: Any) -> Any:
    """Send ``request`` (to a node) with the transport ``client`` chooses for its URL. Another
    transport's method is hooked too, but the node's host is not routed: it sends at once."""
    url = request.url
    transport = client._transport if no_proxy_covers(url.host, url.port) else _mounted(client, url)
    if transport is instance:
        return wrapped(request)
    return getattr(transport, method)(request)


def _mounted(client: Any, url: Any) -> Any:
    """The transport ``client`` mounts for ``url``, as its ``_transport_for_url`` chooses it (not
    called, so that choosing for a node notes nothing)."""
    for pattern, transport in client._mounts.items():
        if pattern.matches(url):
            return client._transport if transport is None else transport
    return client._transport


# --- sync ------------------------------------------------------------------------------------


def _sync_wrapper(lib: ModuleType) -> Callable[..., Any]:
    # The client checks that a transport's response stream is its own SyncByteStream.
    stream_class = type("WatchedStream", (_WatchedStream, lib.SyncByteStream), {})
    traced_class = type("TracedStream", (_TracedStream, lib.SyncByteStream), {})

    def handle_request(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: Any) -> Any:
        runtime = current()
        request = args[0] if args else kwargs["request"]
        route = (
            runtime.routes.match(request.url.host, request.url.port or PORTS.get(request.url.scheme), request.url.path)
            if runtime is not None
            else None
        )
        if route is None or runtime is None:
            return wrapped(*args, **kwargs)
        wrapped = _sender_for(instance, wrapped, "handle_request")
        fast = first_attempt(lib, runtime, route, request)
        if isinstance(fast, FastAttempt):
            return _fast_sync(fast, wrapped, stream_class, traced_class)
        call = HttpxCall(lib, runtime, request, route, fast)
        # Partials rather than closures: calling one adds no Python frame of its own.
        exchange = partial(_exchange_sync, call, wrapped, stream_class)
        return call.run(exchange, _close, partial(_hand_back, call, traced_class))

    return handle_request


def _fast_sync(fast: FastAttempt, wrapped: Callable[..., Any], stream_class: type, traced_class: type) -> Any:
    """The first attempt, sent at once; the call's loop goes on from it unless it ends the call."""
    response = failure = None
    try:
        response = wrapped(fast.request)
        ends = fast.ends_call(response)
        if ends and fast.telemetry is not None:
            response.read()  # for its usage, as the SDK would read it at once anyway
    except fast.lib.TransportError as exc:
        call = fast.hand_over()
        failure = call.failure(exc)  # plain data: the exception and its frames go with this handler
    except BaseException:
        fast.abort()  # before closing, which may raise too
        if response is not None:
            response.close()
        raise
    else:
        if ends:
            return fast.answered(response)  # out of the handlers: its node slot is given back once
        call = fast.hand_over()
    exchange = partial(_exchange_sync, call, wrapped, stream_class)
    resume = partial(exchange, sent=response) if failure is None else partial(_failed, failure, response)
    return call.run(exchange, _close, partial(_hand_back, call, traced_class), resume)


def _failed(failure: Failure, broken: Any, action: Send) -> Exchange:
    """The exchange of an attempt whose transport failed; ``broken``: a response it was reading,
    closed here, inside the loop (which frees the node slot if closing raises)."""
    if broken is not None:
        broken.close()
    return Exchange(action, None, 0, failure)


def _close(response: Any) -> None:
    response.close()


def _exchange_sync(
    call: HttpxCall, wrapped: Callable[..., Any], stream_class: type, action: Send, sent: Any = None
) -> Exchange:
    """One attempt: sent (or its response, ``sent``, taken as it came back from the fast path),
    then read as far as judging it needs."""
    response = sent
    try:
        if response is None:
            response = wrapped(call.request_for(action))
        status: int = response.status_code
        if 300 <= status < 400 and (redirect := call.redirected(action.node, status, response.headers.get("location"))):
            response.close()  # never followed: see Call.redirected
            return Exchange(action, None, 0, redirect)
        if status >= 400:
            read_error_body(response)  # before judging; within bounds (see ErrorBodyReader)
        elif call.reads_whole(response):
            response.read()
        elif call.watches_stream(response):
            failure = _commit_sync(call, action, response, stream_class)
            if failure is not None:
                response.close()
                return Exchange(action, None, 0, call.stream_failed(failure))
        return Exchange(action, response, status, None)
    except call.lib.TransportError as exc:
        if response is not None:
            response.close()
        return Exchange(action, None, 0, call.failure(exc))
    except BaseException:
        if response is not None:
            response.close()  # the caller's loop frees the node slot
        raise


def _commit_sync(call: HttpxCall, action: Send, response: Any, stream_class: type) -> str | None:
    """Read to the first content. None: committed, ``response.stream`` replaced; else why not."""
    commit = Commit(call)
    chunks = iter(response.stream)
    for chunk in chunks:  # a transport error here is the exchange's error
        if commit.took(chunk):
            break
    failure = commit.failure()
    if failure is None:
        response.stream = stream_class(call, action.node, response.stream, commit.read, chunks, commit.watch)
    return failure


# --- async -----------------------------------------------------------------------------------


def _async_wrapper(lib: ModuleType) -> Callable[..., Any]:
    stream_class = type("AsyncWatchedStream", (_AsyncWatchedStream, lib.AsyncByteStream), {})
    traced_class = type("AsyncTracedStream", (_AsyncTracedStream, lib.AsyncByteStream), {})

    async def handle_async_request(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: Any
    ) -> Any:
        runtime = current()
        request = args[0] if args else kwargs["request"]
        route = (
            runtime.routes.match(request.url.host, request.url.port or PORTS.get(request.url.scheme), request.url.path)
            if runtime is not None
            else None
        )
        if route is None or runtime is None:
            return await wrapped(*args, **kwargs)
        wrapped = _sender_for(instance, wrapped, "handle_async_request")
        fast = first_attempt(lib, runtime, route, request)
        if isinstance(fast, FastAttempt):
            return await _fast_async(fast, wrapped, stream_class, traced_class)
        call = HttpxCall(lib, runtime, request, route, fast)
        exchange = partial(_exchange_async, call, wrapped, stream_class)
        return await call.run_async(exchange, _aclose, partial(_hand_back, call, traced_class))

    return handle_async_request


async def _fast_async(fast: FastAttempt, wrapped: Callable[..., Any], stream_class: type, traced_class: type) -> Any:
    """The async twin of ``_fast_sync``."""
    response = failure = None
    try:
        response = await wrapped(fast.request)
        ends = fast.ends_call(response)
        if ends and fast.telemetry is not None:
            await response.aread()
    except fast.lib.TransportError as exc:
        call = fast.hand_over()
        failure = call.failure(exc)
    except BaseException:
        fast.abort()
        if response is not None:
            await response.aclose()
        raise
    else:
        if ends:
            return fast.answered(response)
        call = fast.hand_over()
    exchange = partial(_exchange_async, call, wrapped, stream_class)
    resume = partial(exchange, sent=response) if failure is None else partial(_failed_async, failure, response)
    return await call.run_async(exchange, _aclose, partial(_hand_back, call, traced_class), resume)


async def _failed_async(failure: Failure, broken: Any, action: Send) -> Exchange:
    """The async twin of ``_failed``."""
    if broken is not None:
        await broken.aclose()
    return Exchange(action, None, 0, failure)


async def _aclose(response: Any) -> None:
    await response.aclose()


async def _exchange_async(
    call: HttpxCall, wrapped: Callable[..., Any], stream_class: type, action: Send, sent: Any = None
) -> Exchange:
    response = sent
    try:
        if response is None:
            response = await wrapped(call.request_for(action))
        status: int = response.status_code
        if 300 <= status < 400 and (redirect := call.redirected(action.node, status, response.headers.get("location"))):
            await response.aclose()  # never followed: see Call.redirected
            return Exchange(action, None, 0, redirect)
        if status >= 400:
            await aread_error_body(response)
        elif call.reads_whole(response):
            await response.aread()
        elif call.watches_stream(response):
            failure = await _commit_async(call, action, response, stream_class)
            if failure is not None:
                await response.aclose()
                return Exchange(action, None, 0, call.stream_failed(failure))
        return Exchange(action, response, status, None)
    except call.lib.TransportError as exc:
        if response is not None:
            await response.aclose()
        return Exchange(action, None, 0, call.failure(exc))
    except BaseException:
        if response is not None:
            await response.aclose()  # the caller's loop frees the node slot
        raise


async def _commit_async(call: HttpxCall, action: Send, response: Any, stream_class: type) -> str | None:
    """The async twin of ``_commit_sync``."""
    commit = Commit(call)
    chunks = aiter(response.stream)
    async for chunk in chunks:
        if commit.took(chunk):
            break
    failure = commit.failure()
    if failure is None:
        response.stream = stream_class(call, action.node, response.stream, commit.read, chunks, commit.watch)
    return failure


def _hand_back(call: HttpxCall, traced_class: type, action: Deliver | GiveUp, done: Exchange | None) -> Any:
    if isinstance(action, GiveUp):
        return call.give_up(action)
    assert done is not None  # a Deliver follows an answer
    delivered = call.deliver(action, done)
    if not action.final:
        if call.reader is not None and delivered.is_stream_consumed:
            call.reader.whole(delivered.content)  # read whole already: the call ends here
            call.finish()
        elif call.reader is not None:
            delivered.stream = traced_class(call, delivered.stream)  # the span (and usage) end with the body
        elif not isinstance(delivered.stream, _WatchedStream):
            call.finish()  # nothing follows its body: the call is over once it is handed back
    return delivered


# --- the committed stream ---------------------------------------------------------------------


class _WatchedStream:
    """The committed stream: what was read, then the rest as it comes, never silently cut.

    Mixed with the library's SyncByteStream in ``_sync_wrapper``."""

    def __init__(
        self, call: HttpxCall, node: Node, inner: Any, read: list[bytes], rest: Iterator[bytes], watch: StreamWatch
    ) -> None:
        self._call, self._node, self._inner = call, node, inner
        self._read, self._rest, self._watch = read, rest, watch

    def __iter__(self) -> Iterator[bytes]:
        yield from self._read
        self._read = []
        try:
            for chunk in self._rest:
                self._watch.feed(chunk)
                yield chunk
        except self._call.lib.TransportError as exc:
            raise self._broken(str(exc) or type(exc).__name__) from exc
        if self._watch.truncated():
            raise self._broken("it ended before its final event")
        self._call.finish()

    def _broken(self, detail: str) -> Exception:
        error = self._call.stream_error(self._node, detail)
        self._call.finish(error_type=type(error).__name__)
        return error

    def close(self) -> None:
        self._inner.close()
        self._call.finish()


class _AsyncWatchedStream(_WatchedStream):
    """Mixed with the library's AsyncByteStream in ``_async_wrapper``."""

    def __init__(
        self,
        call: HttpxCall,
        node: Node,
        inner: Any,
        read: list[bytes],
        rest: AsyncIterator[bytes],
        watch: StreamWatch,
    ) -> None:
        super().__init__(call, node, inner, read, iter(()), watch)
        self._arest = rest

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._read:
            yield chunk
        self._read = []
        try:
            async for chunk in self._arest:
                self._watch.feed(chunk)
                yield chunk
        except self._call.lib.TransportError as exc:
            raise self._broken(str(exc) or type(exc).__name__) from exc
        if self._watch.truncated():
            raise self._broken("it ended before its final event")
        self._call.finish()

    async def aclose(self) -> None:
        await self._inner.aclose()
        self._call.finish()


# --- the traced body: the call's span ends when it has been read or closed ----------------------


class _TracedStream:
    """Mixed with the library's SyncByteStream in ``_sync_wrapper``."""

    def __init__(self, call: HttpxCall, inner: Any) -> None:
        assert call.reader is not None
        self._call, self._reader, self._inner = call, call.reader, inner

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._inner:
                self._reader.chunk(chunk)
                yield chunk
        except Exception as exc:
            self._call.finish(error_type=type(exc).__name__)
            raise
        self._call.finish()

    def close(self) -> None:
        self._inner.close()
        self._call.finish()


class _AsyncTracedStream(_TracedStream):
    """Mixed with the library's AsyncByteStream in ``_async_wrapper``."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                self._reader.chunk(chunk)
                yield chunk
        except Exception as exc:
            self._call.finish(error_type=type(exc).__name__)
            raise
        self._call.finish()

    async def aclose(self) -> None:
        await self._inner.aclose()
        self._call.finish()
