"""Adapter for httpx and httpx2 (same API), and the aiohttp-backed transports the SDKs ship.

The hook sits on the transport's ``handle_request`` / ``handle_async_request``, below
the client's auth, redirects and the SDK's own retry loop, so one call of the SDK is
one call here. A request whose host is not routed leaves after one dict lookup. A
request we send on to a node is not routed either (its host is the node's), so a
transport stacked on another hooked transport never handles a call twice.

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

import importlib
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from types import ModuleType
from typing import Any

from ..core.nodes import Node
from ..core.plan import Deliver, GiveUp, Send
from ..core.sse import StreamWatch
from ..runtime import current
from .base import Hook
from .call import Commit, Exchange, Failure
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


# --- sync ------------------------------------------------------------------------------------


def _sync_wrapper(lib: ModuleType) -> Callable[..., Any]:
    # The client checks that a transport's response stream is its own SyncByteStream.
    stream_class = type("WatchedStream", (_WatchedStream, lib.SyncByteStream), {})
    traced_class = type("TracedStream", (_TracedStream, lib.SyncByteStream), {})

    def handle_request(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: Any) -> Any:
        runtime = current()
        request = args[0] if args else kwargs["request"]
        route = runtime.routes.match(request.url.host) if runtime is not None else None
        if route is None or runtime is None:
            return wrapped(*args, **kwargs)
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
        route = runtime.routes.match(request.url.host) if runtime is not None else None
        if route is None or runtime is None:
            return await wrapped(*args, **kwargs)
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
