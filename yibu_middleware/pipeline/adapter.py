"""What a client library's adapter supplies to the pipeline: translation, and one attempt's I/O.

An adapter is made per call, around the app's request as the library built it. It only
translates: the request into plain data for ``core.request.prepare`` (``method``, ``path``,
``query``, ``headers``, ``body``), each attempt's request for a node, the library's
responses and exceptions into statuses, headers and failure kinds, and answers of our own
back into the library's response type. It decides nothing: every decision is the core's,
reached through ``pipeline.call.Call`` and the driver.

The I/O half is ``send``, ``read_error_body``, ``read``, ``chunks``, ``watch`` and
``close``: async in an async library's adapter, sync in a sync one's, with the same names,
so that one driver source serves both (``pipeline/_async/driver.py``, and
``pipeline/_sync/driver.py`` generated from it by ``scripts/unasync``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..core.request import AppHeader
from ..core.retry import Kind

if TYPE_CHECKING:
    from ..core.nodes import Node
    from ..core.plan import Deliver, Send
    from .call import Call, Commit


class FailureKinds:
    """A library's transport exceptions mapped to the core's failure kinds, by a table.

    Rows are tried in order; the first whose types match the exception, or one of the
    exceptions it wraps (``causes``: requests wraps urllib3's), gives the kind. An error
    no row names is ``Kind.FINAL``: an error we cannot place is never retried on another
    node, since sending a prompt twice is worse than failing once."""

    __slots__ = ("_rows",)

    def __init__(self, rows: Sequence[tuple[tuple[type[BaseException], ...], Kind]]) -> None:
        self._rows = tuple(rows)

    def kind(self, exc: BaseException, *causes: BaseException) -> Kind:
        for types, kind in self._rows:
            if isinstance(exc, types) or any(isinstance(cause, types) for cause in causes):
                return kind
        return Kind.FINAL


class Adapter:
    """The translation half of an adapter, shared by its sync and async I/O. Subclasses set the
    request's parts in ``__init__`` and implement every method below."""

    # The app's request, as ``core.request.prepare`` takes it. ``body`` None: a body that can be
    # sent once only (an upload, a generator), forwarded as it is and never replayed.
    method: str
    path: str
    query: str
    headers: Iterable[AppHeader]
    body: bytes | None
    # What one attempt may raise that is a transport failure (mapped by ``kind_of``).
    errors: tuple[type[BaseException], ...]

    def own_timeout(self) -> float | None:
        """The request's own read timeout: the call's deadline when the SDK states none."""
        return None

    def request_for(self, call: Call, action: Send) -> Any:
        """The library's request for one attempt on ``action.node``, its timeouts cut to what is
        left of the call's deadline (``call.plan.timeout_left()``, ``call.ttft``)."""
        raise NotImplementedError

    def kind_of(self, exc: BaseException) -> Kind:
        raise NotImplementedError

    def is_timeout(self, exc: BaseException) -> bool:
        """A timeout waiting for the node's answer (a read, a write, our pool). Not a connect
        timeout: that says the node could not be reached, as a refused connection does (and
        openai's aiohttp transport reports a refused connection as one)."""
        raise NotImplementedError

    def describe(self, exc: BaseException) -> str:
        """A transport error in a few words, for the log line and the list of nodes tried."""
        return str(exc) or type(exc).__name__

    # --- responses --------------------------------------------------------------------------

    def status(self, response: Any) -> int:
        raise NotImplementedError

    def header(self, response: Any, name: str) -> str | None:
        """One header of a response (``name`` lower case), or None. Every hooked library's
        response has a case-insensitive ``headers`` mapping."""
        value: str | None = response.headers.get(name)
        return value

    def response_headers(self, response: Any) -> Iterable[tuple[str, str]]:
        """Every header of a response, repeated ones included."""
        items: Iterable[tuple[str, str]] = response.headers.items()
        return items

    def error_body(self, response: Any) -> bytes:
        """The body of an error response, read by ``read_error_body``."""
        raise NotImplementedError

    def answer(self, status: int, headers: list[tuple[str, str]], body: bytes, based_on: Any) -> Any:
        """A complete response of the library's own type, built by us (``based_on``: the node's
        response it replaces, or None when no node answered)."""
        raise NotImplementedError

    def handed_back(self, call: Call, action: Deliver, response: Any) -> Any:
        """A node's response, as it is handed back to the app. The call ends when its body has
        been read or closed: a body we do not watch or trace ends it here (``call.finish()``)."""
        raise NotImplementedError

    def timeout_error(self, message: str) -> BaseException:
        """The library's own exception for a request that ran out of time (see ``Call.give_up``)."""
        raise NotImplementedError

    def stream_error(self, message: str) -> Exception:
        """The library's own exception for a body cut short (a stream broken after its first content)."""
        raise NotImplementedError

    def stream_broken(self, call: Call, node: Node, detail: str) -> Exception:
        """The error a caller gets when a committed stream breaks; the call ends with it."""
        error = self.stream_error(call.stream_broke(node, detail))
        call.finish(error_type=type(error).__name__)
        return error


class AsyncAdapter(Adapter):
    """An async library's adapter: the I/O of one attempt, awaited by ``pipeline/_async/driver.py``."""

    async def send(self, request: Any) -> Any:
        """Send one attempt's request with the library's own transport; its response, headers read."""
        raise NotImplementedError

    async def read_error_body(self, response: Any) -> None:
        """Read an error body within bounds (``core.error_bodies.ErrorBodyReader``), for ``error_body``."""
        raise NotImplementedError

    async def read(self, response: Any) -> None:
        """Read a whole body, kept on the response."""
        raise NotImplementedError

    def chunks(self, response: Any) -> AsyncIterator[bytes]:
        """The body's chunks as they come off the wire (undecoded: a watched stream has no encoding)."""
        raise NotImplementedError

    def watch(self, call: Call, node: Node, response: Any, commit: Commit, rest: AsyncIterator[bytes]) -> None:
        """Replace the body of a committed stream: ``commit.read`` replayed, then ``rest``, watched."""
        raise NotImplementedError

    async def close(self, response: Any) -> None:
        raise NotImplementedError


class SyncAdapter(Adapter):
    """A sync library's adapter: as ``AsyncAdapter``, for ``pipeline/_sync/driver.py``."""

    def send(self, request: Any) -> Any:
        raise NotImplementedError

    def read_error_body(self, response: Any) -> None:
        raise NotImplementedError

    def read(self, response: Any) -> None:
        raise NotImplementedError

    def chunks(self, response: Any) -> Iterator[bytes]:
        raise NotImplementedError

    def watch(self, call: Call, node: Node, response: Any, commit: Commit, rest: Iterator[bytes]) -> None:
        raise NotImplementedError

    def close(self, response: Any) -> None:
        raise NotImplementedError


def content_type(adapter: Adapter, response: Any) -> str:
    return (adapter.header(response, "content-type") or "").lower()


def is_event_stream(adapter: Adapter, response: Any) -> bool:
    """An uncompressed event stream with a 200: what a stream's commit point can be read from."""
    return (
        adapter.status(response) == 200
        and content_type(adapter, response).startswith("text/event-stream")
        and adapter.header(response, "content-encoding") is None
    )
