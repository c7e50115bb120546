"""Adapter for httpx and httpx2 (same API), and the aiohttp-backed transports the SDKs ship.

The hook sits on the transport's ``handle_request`` / ``handle_async_request``, below
the client's auth, redirects and the SDK's own retry loop, so one call of the SDK is
one call here. The sync and async loops below are the same loop, once with
``await``; the decisions are the core's, the translation is ``HttpxCall``'s.

A request whose host is not routed leaves after one dict lookup. A request we send
on to a node is not routed either (its host is the node's), so a transport stacked
on another hooked transport never handles a call twice.

Streams: an event stream is read up to its first content before the response is
handed back (the commit point; see ``core/sse.py``). What was read is replayed to
the caller, then the rest passes through chunk by chunk, watched for a cut or a
missing final event, either of which reaches the caller as an error.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from types import ModuleType
from typing import Any

from ..core.plan import Deliver, GiveUp, Send
from ..core.sse import StreamWatch
from ..runtime import current
from .base import Hook
from .httpx_call import HttpxCall, stream_error


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


def _sync_wrapper(lib: ModuleType) -> Callable[..., Any]:
    # The client checks that a transport's response stream is its own SyncByteStream.
    stream_class = type("WatchedStream", (_WatchedStream, lib.SyncByteStream), {})

    def handle_request(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: Any) -> Any:
        runtime = current()
        request = args[0] if args else kwargs["request"]
        route = runtime.routes.match(request.url.host) if runtime is not None else None
        if route is None or runtime is None:
            return wrapped(*args, **kwargs)
        call = HttpxCall(lib, runtime, request, route)
        action: Send | Deliver | GiveUp = call.plan.start()
        response: Any = None
        while isinstance(action, Send):
            attempt = action
            if attempt.delay:
                time.sleep(attempt.delay)
            response = None
            try:
                response = wrapped(call.request_for(attempt))
                if call.wants_body(response):
                    response.read()
                elif call.watches_stream(response):
                    failure = _commit_sync(call, attempt, response, stream_class)
                    if failure is not None:
                        action = failure
                        continue
            except lib.TransportError as exc:
                if response is not None:
                    response.close()
                action = call.transport_failed(attempt, exc)
                continue
            action = call.answered(attempt, response)
            if isinstance(action, Send):
                response.close()
        return call.deliver(action, response) if isinstance(action, Deliver) else call.give_up(action)

    return handle_request


def _async_wrapper(lib: ModuleType) -> Callable[..., Any]:
    stream_class = type("AsyncWatchedStream", (_AsyncWatchedStream, lib.AsyncByteStream), {})

    async def handle_async_request(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: Any
    ) -> Any:
        runtime = current()
        request = args[0] if args else kwargs["request"]
        route = runtime.routes.match(request.url.host) if runtime is not None else None
        if route is None or runtime is None:
            return await wrapped(*args, **kwargs)
        call = HttpxCall(lib, runtime, request, route)
        action: Send | Deliver | GiveUp = call.plan.start()
        response: Any = None
        while isinstance(action, Send):
            attempt = action
            if attempt.delay:
                await asyncio.sleep(attempt.delay)
            response = None
            try:
                response = await wrapped(call.request_for(attempt))
                if call.wants_body(response):
                    await response.aread()
                elif call.watches_stream(response):
                    failure = await _commit_async(call, attempt, response, stream_class)
                    if failure is not None:
                        action = failure
                        continue
            except lib.TransportError as exc:
                if response is not None:
                    await response.aclose()
                action = call.transport_failed(attempt, exc)
                continue
            action = call.answered(attempt, response)
            if isinstance(action, Send):
                await response.aclose()
        return call.deliver(action, response) if isinstance(action, Deliver) else call.give_up(action)

    return handle_async_request


# --- streams: read to the commit point, then pass the rest through, watched ---------------------


def _commit_sync(call: HttpxCall, action: Send, response: Any, stream_class: type) -> Send | GiveUp | None:
    """Read to the first content. None: committed, ``response.stream`` replaced; else the retry."""
    watch = StreamWatch()
    read: list[bytes] = []
    chunks = iter(response.stream)
    started = time.monotonic()
    for chunk in chunks:  # a transport error here propagates to the loop: a failed attempt
        read.append(chunk)
        watch.feed(chunk)
        if watch.committed or watch.error:
            break
        if call.first_token_overdue(started):
            response.close()
            return call.stream_failed(action, "no content within stream.first_token_timeout", timed_out=True)
    if watch.error or not watch.committed:
        response.close()
        return call.stream_failed(action, watch.error or "the stream ended with no content")
    response.stream = stream_class(call, action, response.stream, read, chunks, watch)
    return None


async def _commit_async(call: HttpxCall, action: Send, response: Any, stream_class: type) -> Send | GiveUp | None:
    """The async twin of ``_commit_sync``."""
    watch = StreamWatch()
    read: list[bytes] = []
    chunks = aiter(response.stream)
    started = time.monotonic()
    async for chunk in chunks:
        read.append(chunk)
        watch.feed(chunk)
        if watch.committed or watch.error:
            break
        if call.first_token_overdue(started):
            await response.aclose()
            return call.stream_failed(action, "no content within stream.first_token_timeout", timed_out=True)
    if watch.error or not watch.committed:
        await response.aclose()
        return call.stream_failed(action, watch.error or "the stream ended with no content")
    response.stream = stream_class(call, action, response.stream, read, chunks, watch)
    return None


class _WatchedStream:
    """The committed stream: what was read, then the rest as it comes, never silently cut.

    Mixed with the library's SyncByteStream in ``_sync_wrapper``."""

    def __init__(
        self, call: HttpxCall, action: Send, inner: Any, read: list[bytes], rest: Iterator[bytes], watch: StreamWatch
    ) -> None:
        self._call, self._node, self._inner = call, action.node, inner
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
        return stream_error(self._call.lib, self._call, self._node.label, detail)

    def close(self) -> None:
        self._inner.close()


class _AsyncWatchedStream(_WatchedStream):
    def __init__(
        self,
        call: HttpxCall,
        action: Send,
        inner: Any,
        read: list[bytes],
        rest: AsyncIterator[bytes],
        watch: StreamWatch,
    ) -> None:
        super().__init__(call, action, inner, read, iter(()), watch)
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
