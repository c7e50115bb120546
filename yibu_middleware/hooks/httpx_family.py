"""Adapter for httpx and httpx2 (same API), and the aiohttp-backed transports the SDKs ship.

The hook sits on the transport's ``handle_request`` / ``handle_async_request``, below
the client's auth, redirects and the SDK's own retry loop, so one call of the SDK is
one call here. A request whose host is not routed leaves after one dict lookup. A
request we send on to a node is not routed either (its host is the node's), so a
transport stacked on another hooked transport never handles a call twice.

Each call is a loop of attempts. One attempt is an *exchange* (send, then read an
error body or a stream up to its first content: I/O only, no decisions) followed by
a *verdict* (``HttpxCall.judge``: the core decides what comes next). Keeping them
apart is what lets a hedge run two exchanges at once and judge only the winner.
The sync and async halves below are the same code, once with ``await``.

Streams: an event stream is read up to its first content before the response is
handed back (the commit point; see ``core/sse.py``). What was read is replayed to
the caller, then the rest passes through chunk by chunk, watched for a cut or a
missing final event, either of which reaches the caller as an error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..core.nodes import Node
from ..core.plan import Deliver, GiveUp, Send
from ..core.sse import StreamWatch
from ..runtime import current
from .base import Hook
from .httpx_call import Exchange, HttpxCall, stream_error

if TYPE_CHECKING:
    from ..telemetry import CallTelemetry


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
        call = HttpxCall(lib, runtime, request, route)

        def exchange(action: Send) -> Exchange:
            return _exchange_sync(call, wrapped, action, stream_class)

        action: Send | Deliver | GiveUp = call.plan.start()
        response: Any = None
        try:
            while isinstance(action, Send):
                if action.delay:
                    time.sleep(action.delay)
                hedge_after = call.plan.hedge_after()
                done = exchange(action) if hedge_after is None else _hedged_sync(call, action, hedge_after, exchange)
                response = done.response
                action = call.judge(done)
                if isinstance(action, Send) and response is not None:
                    response.close()
                    response = None
            return _hand_back(call, action, response, traced_class)
        except BaseException:
            # Interrupted, or an error we do not handle: no node slot may stay taken.
            call.abort()
            if response is not None:
                response.close()
            raise

    return handle_request


def _exchange_sync(call: HttpxCall, wrapped: Callable[..., Any], action: Send, stream_class: type) -> Exchange:
    response = None
    try:
        response = wrapped(call.request_for(action))
        if call.wants_body(response):
            response.read()
        elif call.watches_stream(response):
            failure = _commit_sync(call, action, response, stream_class)
            if failure is not None:
                response.close()
                return Exchange(action, None, None, failure)
        return Exchange(action, response, None, None)
    except call.lib.TransportError as exc:
        if response is not None:
            response.close()
        return Exchange(action, None, exc, None)
    except BaseException:
        if response is not None:
            response.close()  # the caller's loop frees the node slot
        raise


_hedge_pool: concurrent.futures.ThreadPoolExecutor | None = None
_hedge_pool_lock = threading.Lock()


def _forget_hedge_pool() -> None:
    global _hedge_pool
    _hedge_pool = None  # its threads did not survive fork; a new pool starts on first use


os.register_at_fork(after_in_child=_forget_hedge_pool)


def _hedged_sync(call: HttpxCall, first: Send, after: float, exchange: Callable[[Send], Exchange]) -> Exchange:
    """Run the first exchange, and after ``after`` seconds a hedge on another node.

    The first *answer* wins: a failure that comes first is accounted for and the other
    exchange is waited for. A sync client blocks its thread, so both exchanges run on a
    shared pool (threads made as needed, up to 128)."""
    global _hedge_pool
    with _hedge_pool_lock:
        if _hedge_pool is None:
            _hedge_pool = concurrent.futures.ThreadPoolExecutor(128, thread_name_prefix="yibu-hedge")
    primary = _hedge_pool.submit(exchange, first)
    try:
        return primary.result(timeout=after)
    except concurrent.futures.TimeoutError:
        pass
    hedge = call.plan.hedge(first)
    if hedge is None:
        return primary.result()
    second = _hedge_pool.submit(exchange, hedge)
    actions = {primary: first, second: hedge}
    pending = {primary, second}
    while True:
        done, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
        winner = done.pop()
        result: Exchange = winner.result()
        if not pending or not call.failed_exchange(result):
            break
        call.note_lost(result)  # a failure first: the other may still answer
        if result.response is not None:
            result.response.close()
    for loser in pending:  # still running: its answer, when it comes, is discarded
        loser.add_done_callback(lambda future: _discard_sync(call, actions[future], future))
    return result


def _discard_sync(call: HttpxCall, action: Send, future: concurrent.futures.Future[Exchange]) -> None:
    call.plan.abandoned(action)
    if future.exception() is None:
        lost = future.result()
        if lost.response is not None:
            lost.response.close()


class _Commit:
    """Reading an event stream up to its first content; shared by the sync and async readers."""

    __slots__ = ("call", "read", "started", "watch")

    def __init__(self, call: HttpxCall) -> None:
        self.call = call
        self.watch = StreamWatch()
        self.read: list[bytes] = []  # replayed to the caller once committed
        self.started = time.monotonic()

    def took(self, chunk: bytes) -> bool:
        """Note one chunk; True when reading can stop."""
        self.read.append(chunk)
        self.watch.feed(chunk)
        return self.watch.committed or bool(self.watch.error) or self.call.first_token_overdue(self.started)

    def failure(self) -> str | None:
        """None when the stream committed; else why it failed before its first content."""
        watch = self.watch
        if watch.error:
            return watch.error
        if watch.committed:
            return None
        if self.call.first_token_overdue(self.started):
            return "no content within stream.first_token_timeout"
        return "the stream ended with no content"


def _commit_sync(call: HttpxCall, action: Send, response: Any, stream_class: type) -> str | None:
    """Read to the first content. None: committed, ``response.stream`` replaced; else why not."""
    commit = _Commit(call)
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
        call = HttpxCall(lib, runtime, request, route)

        async def exchange(action: Send) -> Exchange:
            return await _exchange_async(call, wrapped, action, stream_class)

        action: Send | Deliver | GiveUp = call.plan.start()
        response: Any = None
        try:
            while isinstance(action, Send):
                if action.delay:
                    await asyncio.sleep(action.delay)
                hedge_after = call.plan.hedge_after()
                if hedge_after is None:
                    done = await exchange(action)
                else:
                    done = await _hedged_async(call, action, hedge_after, exchange)
                response = done.response
                action = call.judge(done)
                if isinstance(action, Send) and response is not None:
                    await response.aclose()
                    response = None
            return _hand_back(call, action, response, traced_class)
        except BaseException:
            # Cancelled (a client gone, a timeout around the call), or an error we do not
            # handle: no node slot may stay taken.
            call.abort()
            if response is not None:
                await response.aclose()
            raise

    return handle_async_request


async def _exchange_async(call: HttpxCall, wrapped: Callable[..., Any], action: Send, stream_class: type) -> Exchange:
    response = None
    try:
        response = await wrapped(call.request_for(action))
        if call.wants_body(response):
            await response.aread()
        elif call.watches_stream(response):
            failure = await _commit_async(call, action, response, stream_class)
            if failure is not None:
                await response.aclose()
                return Exchange(action, None, None, failure)
        return Exchange(action, response, None, None)
    except call.lib.TransportError as exc:
        if response is not None:
            await response.aclose()
        return Exchange(action, None, exc, None)
    except BaseException:
        if response is not None:
            await response.aclose()  # the caller's loop frees the node slot
        raise


async def _hedged_async(call: HttpxCall, first: Send, after: float, exchange: Callable[[Send], Any]) -> Exchange:
    """The async twin of ``_hedged_sync``: the loser is cancelled outright."""
    primary = asyncio.ensure_future(exchange(first))
    tasks = {primary: first}
    try:
        done, _ = await asyncio.wait((primary,), timeout=after)
        if done:
            return primary.result()  # type: ignore[no-any-return]
        hedge = call.plan.hedge(first)
        if hedge is None:
            return await primary  # type: ignore[no-any-return]
        tasks[asyncio.ensure_future(exchange(hedge))] = hedge
        pending = set(tasks)
        while True:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            result: Exchange = done.pop().result()
            if not pending or not call.failed_exchange(result):
                break
            call.note_lost(result)  # a failure first: the other may still answer
            if result.response is not None:
                await result.response.aclose()
        for loser in pending:
            loser.cancel()  # the library closes the half-open connection
            call.plan.abandoned(tasks[loser])
        return result
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


async def _commit_async(call: HttpxCall, action: Send, response: Any, stream_class: type) -> str | None:
    """The async twin of ``_commit_sync``."""
    commit = _Commit(call)
    chunks = aiter(response.stream)
    async for chunk in chunks:
        if commit.took(chunk):
            break
    failure = commit.failure()
    if failure is None:
        response.stream = stream_class(call, action.node, response.stream, commit.read, chunks, commit.watch)
    return failure


def _hand_back(call: HttpxCall, action: Deliver | GiveUp, response: Any, traced_class: type) -> Any:
    if isinstance(action, GiveUp):
        return call.give_up(action)
    delivered = call.deliver(action, response)
    if call.telemetry is not None and not action.final:
        delivered.stream = traced_class(call.telemetry, delivered.stream)  # the span ends with the body
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

    def _broken(self, detail: str) -> Exception:
        self._call.plan.stream_cut(self._node)
        return stream_error(self._call, self._node.label, detail)

    def close(self) -> None:
        self._inner.close()


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

    async def aclose(self) -> None:
        await self._inner.aclose()


# --- the traced body: the call's span ends when it has been read or closed ----------------------


class _TracedStream:
    """Mixed with the library's SyncByteStream in ``_sync_wrapper``."""

    def __init__(self, telemetry: CallTelemetry, inner: Any) -> None:
        self._telemetry, self._inner = telemetry, inner

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._inner:
                self._telemetry.chunk(chunk)
                yield chunk
        except Exception as exc:
            self._telemetry.finish(error_type=type(exc).__name__)
            raise
        self._telemetry.finish()

    def close(self) -> None:
        self._inner.close()
        self._telemetry.finish()


class _AsyncTracedStream(_TracedStream):
    """Mixed with the library's AsyncByteStream in ``_async_wrapper``."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                self._telemetry.chunk(chunk)
                yield chunk
        except Exception as exc:
            self._telemetry.finish(error_type=type(exc).__name__)
            raise
        self._telemetry.finish()

    async def aclose(self) -> None:
        await self._inner.aclose()
        self._telemetry.finish()
