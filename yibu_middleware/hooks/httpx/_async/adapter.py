"""The I/O half of the httpx/httpx2 adapter, async (the sync one is generated from this file).

Each attempt is sent with the transport the client chose (``sender.py``); an error body is
read within bounds; an event stream's body, once committed, is replaced by a watched one
that replays what was read and passes the rest through; a body whose usage is wanted (a
span, a token limit) is traced as it is read. Both kinds of body end the call when they
end or are closed.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

from ....core.error_bodies import ErrorBodyReader
from ....core.nodes import Node
from ....core.plan import Deliver
from ....pipeline.adapter import AsyncAdapter
from ....pipeline.call import Call, Commit
from ..adapter import HttpxAdapter


class AsyncHttpxAdapter(HttpxAdapter, AsyncAdapter):
    async def send(self, request: Any) -> Any:
        return await self._send(request)

    async def read_error_body(self, response: Any) -> None:
        """What was read (within bounds) becomes the response's content; its connection is closed."""
        reader = ErrorBodyReader(response.headers.get("content-encoding", ""))
        async for chunk in response.aiter_raw() if reader.wire else response.aiter_bytes():
            if reader.feed(chunk):
                break
        await response.aclose()
        response._content = reader.body()

    async def read(self, response: Any) -> None:
        await response.aread()

    def chunks(self, response: Any) -> AsyncIterator[bytes]:
        chunks: AsyncIterator[bytes] = response.stream.__aiter__()
        return chunks

    def watch(self, call: Call, node: Node, response: Any, commit: Commit, rest: AsyncIterator[bytes]) -> None:
        watched = stream_classes(self.lib)[0]
        response.stream = watched(self, call, node, response.stream, commit, rest)

    async def close(self, response: Any) -> None:
        await response.aclose()

    def handed_back(self, call: Call, action: Deliver, response: Any) -> Any:
        watched, traced = stream_classes(self.lib)
        if call.reader is not None and response.is_stream_consumed:
            call.reader.whole(response.content)  # read whole already: the call ends here
            call.finish()
        elif call.reader is not None:
            # The span (and usage) end with the body, a watched stream's too (read through this).
            response.stream = traced(self, call, response.stream)
        elif not isinstance(response.stream, watched):
            call.finish()  # nothing follows its body: the call is over once it is handed back
        # else a watched stream: it ends the call when it ends or is closed
        return response


class AsyncWatchedStream:
    """A committed event stream: what was read, then the rest as it comes, never silently cut.

    Mixed with the library's byte stream type (``stream_classes``), which the client checks."""

    def __init__(
        self, adapter: AsyncHttpxAdapter, call: Call, node: Node, inner: Any, commit: Commit, rest: AsyncIterator[bytes]
    ) -> None:
        self._adapter, self._call, self._node, self._inner = adapter, call, node, inner
        self._read, self._rest, self._watch = commit.read, rest, commit.watch

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._read:
            yield chunk
        self._read = []
        try:
            async for chunk in self._rest:
                self._watch.feed(chunk)
                yield chunk
        except self._adapter.errors as exc:
            raise self._adapter.stream_broken(self._call, self._node, str(exc) or type(exc).__name__) from exc
        if self._watch.truncated():
            raise self._adapter.stream_broken(self._call, self._node, "it ended before its final event")
        self._call.finish()

    async def aclose(self) -> None:
        await self._inner.aclose()
        self._call.finish()


class AsyncTracedStream:
    """A body whose usage is wanted: read as it passes; the call ends when it ends or is closed.

    Mixed with the library's byte stream type (``stream_classes``)."""

    def __init__(self, adapter: AsyncHttpxAdapter, call: Call, inner: Any) -> None:
        assert call.reader is not None
        self._call, self._reader, self._inner = call, call.reader, inner

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


@functools.cache
def stream_classes(lib: ModuleType) -> tuple[type, type]:
    """The watched and traced body types for ``lib``: ours, mixed with its byte stream type."""
    base = lib.AsyncByteStream
    return (
        type("AsyncWatchedStream", (AsyncWatchedStream, base), {}),
        type("AsyncTracedStream", (AsyncTracedStream, base), {}),
    )
