"""requests' objects in the pipeline's terms, and one attempt's I/O with urllib3 below it.

Each attempt sends a copy of the app's ``PreparedRequest`` (the node's URL, the gateway's
headers) with the caller's own ``stream``, ``verify``, ``cert`` and ``proxies`` (none when
NO_PROXY covers the node), and its ``timeout`` cut to the call's deadline. urllib3 reads a
body only when asked (``Response.raw``), so an error body is read before the verdict, and
an event stream is read from ``raw`` up to its first content; ``raw`` is then replaced by
:class:`_RelayRaw`, which replays what was read and passes the rest through, watched. A
cut or a missing final event raises urllib3's ``ProtocolError``, which requests turns into
``ChunkedEncodingError`` (a ``RequestException``) naming the node.

requests is never imported here: its types are taken from the module being hooked.
"""

from __future__ import annotations

import functools
import http
import io
import os
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any
from urllib.parse import SplitResult

from ...core.error_bodies import ErrorBodyReader
from ...core.nodes import Node
from ...core.plan import Deliver, Send
from ...core.retry import Kind
from ...core.sse import StreamWatch
from ...pipeline.adapter import FailureKinds, SyncAdapter
from ...pipeline.call import Call, Commit


class Lib:
    """The requests and urllib3 types an attempt needs, taken once when requests is hooked."""

    def __init__(self, requests: ModuleType, urllib3: ModuleType) -> None:
        exceptions = urllib3.exceptions
        self.requests = requests
        self.CaseInsensitiveDict = requests.structures.CaseInsensitiveDict
        self.should_bypass_proxies = requests.utils.should_bypass_proxies
        self.HTTPResponse = urllib3.HTTPResponse
        self.ProtocolError = exceptions.ProtocolError
        # What an attempt may raise: requests' own errors from send() and response.content,
        # urllib3's from reading response.raw ourselves.
        self.errors = (requests.RequestException, exceptions.HTTPError)
        # Checked against the error and the urllib3 error it wraps (see ``_cause``).
        self.kinds = FailureKinds(
            [
                # A connect timeout, or TLS with the node failed: nothing was sent.
                ((requests.ConnectTimeout, requests.exceptions.SSLError), Kind.NOT_SENT),
                # Our proxy or connection pool, not the node: no node would help (not PoolError:
                # a read timeout is one of those too).
                (
                    (
                        requests.exceptions.ProxyError,
                        requests.exceptions.InvalidURL,
                        exceptions.EmptyPoolError,
                        exceptions.ClosedPoolError,
                    ),
                    Kind.FINAL,
                ),
                # Refused, unresolvable, or a connect timeout.
                ((exceptions.NewConnectionError, exceptions.ConnectTimeoutError), Kind.NOT_SENT),
                (
                    (
                        requests.ReadTimeout,
                        requests.exceptions.ChunkedEncodingError,
                        requests.exceptions.ContentDecodingError,
                        requests.ConnectionError,
                        exceptions.ProtocolError,
                        exceptions.ReadTimeoutError,
                        exceptions.SSLError,
                        exceptions.DecodeError,
                    ),
                    Kind.NODE_FAILED,
                ),
            ]
        )
        self.timeouts = (requests.Timeout, exceptions.TimeoutError)
        self.ConnectTimeoutError = exceptions.ConnectTimeoutError  # NewConnectionError's parent too
        self.MaxRetryError = exceptions.MaxRetryError
        # urllib3 2 sends a str body as UTF-8, urllib3 1 as Latin-1 (as http.client does).
        self.str_encoding = "latin-1" if urllib3.__version__.startswith("1.") else "utf-8"


class RequestsAdapter(SyncAdapter):
    """One requests call: the app's prepared request, the send() options it came with, and the
    ``HTTPAdapter`` that sends its attempts."""

    def __init__(
        self,
        lib: Lib,
        http_adapter: Any,
        send: Callable[..., Any],
        original: Any,
        url: SplitResult,
        options: dict[str, Any],
    ) -> None:
        """``send``: ``HTTPAdapter.send`` as it was before the hook; ``options``: the caller's
        send() arguments after the request."""
        self.lib = lib
        self.errors = lib.errors
        self.http_adapter = http_adapter
        self._send = send
        self.original = original
        self.options = options
        body = original.body
        self._no_body = body is None
        if body is None:
            self.body: bytes | None = b""
        elif isinstance(body, bytes):
            self.body = body
        elif isinstance(body, str):
            self.body = body.encode(lib.str_encoding)
        else:
            self.body = None  # a file or a generator: forwarded as it is, and never replayed
        self.method = original.method or "GET"
        self.path = url.path or "/"
        self.query = url.query
        self.headers = [(_raw(name), _raw(value)) for name, value in original.headers.items()]

    def own_timeout(self) -> float | None:
        return _connect_read(self.options.get("timeout"))[1]

    # --- per attempt ------------------------------------------------------------------------

    def request_for(self, call: Call, action: Send) -> tuple[Any, dict[str, Any]]:
        """A copy of the app's request with the node's URL and the gateway's headers, and the
        send() options for it."""
        gateway = call.gateway
        original = self.original
        request = original.copy()
        request.url = action.node.url_for(gateway.path, gateway.query)
        headers = self.lib.CaseInsensitiveDict()
        for name, value in call.headers_for(action):
            headers[name.decode("latin-1")] = value.decode("latin-1")
        body: Any = gateway.body
        if body is None:
            body = original.body  # sent as it is, with the length the app gave it, if any
            length = original.headers.get("Content-Length")
        elif self._no_body:
            body = None
            length = original.headers.get("Content-Length")
        else:
            length = str(len(body)) if "Content-Length" in original.headers else None
        if length is not None:
            headers["Content-Length"] = length
        request.headers = headers
        request.body = body
        return request, self.options_for(call, action.node)

    def options_for(self, call: Call, node: Node) -> dict[str, Any]:
        """The caller's send() options for an attempt on ``node``: its timeout cut to the call's
        deadline (and to stream.first_token_timeout for a stream's reads), and no proxy when
        NO_PROXY covers the node.

        The session merged the environment's proxies for the provider's URL (NO_PROXY checked
        against the provider host, not the node) with the app's own ``proxies=``; urllib3 then
        picks one by the node's scheme, which is the environment's choice for the node unless
        NO_PROXY covers it: then the node is reached directly, as requests' own
        ``should_bypass_proxies`` decides (the environment's NO_PROXY, or the ``no_proxy`` entry
        of the app's proxies). An explicit proxy the app gave is kept otherwise (see README,
        "Proxies"). An https node is tunnelled (CONNECT): the proxy never sees its headers."""
        options = self.options
        proxies = options.get("proxies")
        if proxies and _bypasses(self.lib, node.base_url, proxies.get("no_proxy")):
            options = {**options, "proxies": {}}
        limits = call.attempt_limits()
        if limits.every is None and limits.read is None:
            return options
        connect, read = _connect_read(options.get("timeout"))
        if limits.every is not None:
            connect = limits.every if connect is None else min(connect, limits.every)
        if limits.read is not None:
            read = limits.read if read is None else min(read, limits.read)
        return {**options, "timeout": (connect, read)}

    def send(self, request: tuple[Any, dict[str, Any]]) -> Any:
        prepared, options = request
        return self._send(prepared, **options)

    def read_error_body(self, response: Any) -> None:
        """What was read (within bounds) becomes ``response.content``; the connection is closed
        when the rest was left unread."""
        reader = ErrorBodyReader(response.headers.get("content-encoding", ""))
        for chunk in response.raw.stream(2**16, decode_content=not reader.wire):
            if reader.feed(chunk):
                response.close()
                break
        response._content = reader.body()
        response._content_consumed = True

    def read(self, response: Any) -> None:
        response.content  # noqa: B018  # read whole, kept by the response

    def chunks(self, response: Any) -> Iterator[bytes]:
        # Chunks as they arrive (HTTP chunks of a chunked body), as iter_content(None) reads them.
        chunks: Iterator[bytes] = response.raw.stream(None)
        return chunks

    def watch(self, call: Call, node: Node, response: Any, commit: Commit, rest: Iterator[bytes]) -> None:
        response.raw = _RelayRaw(self, call, node, response.raw, commit.read, rest, commit.watch)

    def close(self, response: Any) -> None:
        response.close()

    def handed_back(self, call: Call, action: Deliver, response: Any) -> Any:
        # As with httpx, the app sees its own request and URL on the response, not the node's.
        response.request = self.original
        response.url = self.original.url
        if isinstance(response.raw, _RelayRaw):
            pass  # a watched stream: it ends the call when it ends or is closed
        elif call.reader is not None and response._content_consumed:
            call.reader.whole(response.content)  # read whole already: the call ends here
            call.finish()
        elif call.reader is not None:  # the span (and the usage a token limit counts) end with the body
            response.raw = _RelayRaw(self, call, action.node, response.raw, [], None, None)
        else:
            call.finish()  # nothing follows its body: the call is over once it is handed back
        return response

    # --- requests' objects, in the pipeline's terms -----------------------------------------

    def kind_of(self, exc: BaseException) -> Kind:
        # requests wraps urllib3's errors, and older requests let some through unwrapped.
        return self.lib.kinds.kind(exc, _cause(exc, self.lib))

    def is_timeout(self, exc: BaseException) -> bool:
        lib = self.lib
        if isinstance(exc, lib.requests.ConnectTimeout):
            return False
        if isinstance(exc, lib.requests.ConnectionError):
            exc = _cause(exc, lib)  # requests reports a read timeout inside a body as a ConnectionError
        # urllib3's NewConnectionError is a ConnectTimeoutError by inheritance only, and a connect
        # timeout is no answer's.
        return isinstance(exc, lib.timeouts) and not isinstance(exc, lib.ConnectTimeoutError)

    def describe(self, exc: BaseException) -> str:
        # requests wraps urllib3's error, which wraps the socket's: the last says it best
        # ("[Errno 111] Connection refused"), as httpx's own message does.
        cause = _cause(exc, self.lib)
        if isinstance(cause.__cause__, OSError):
            cause = cause.__cause__
        return str(cause) or type(cause).__name__

    def status(self, response: Any) -> int:
        status: int = response.status_code
        return status

    def error_body(self, response: Any) -> bytes:
        body: bytes = response.content or b""
        return body

    def answer(self, status: int, headers: list[tuple[str, str]], body: bytes, based_on: Any) -> Any:
        """A response as the adapter builds one from the wire (HTTPAdapter.build_response),
        over an in-memory body: ``stream=True`` callers can still iterate it."""
        raw = self.lib.HTTPResponse(
            body=_Body(body),
            headers=[*headers, ("content-length", str(len(body)))],
            status=status,
            reason=_reason(status),
            preload_content=False,
            decode_content=False,
        )
        return self.http_adapter.build_response(self.original, raw)

    def timeout_error(self, message: str) -> BaseException:
        error: BaseException = self.lib.requests.ReadTimeout(message, request=self.original)
        return error

    def stream_error(self, message: str) -> Exception:
        """urllib3's, which requests raises as ChunkedEncodingError."""
        error: Exception = self.lib.ProtocolError(message)
        return error


class _RelayRaw:
    """Stands in for urllib3's response as ``Response.raw``: what was read first, then the
    rest as it comes; an event stream watched for a cut or a missing final event, and the
    call finished (its span ended) when the body ends or is closed.

    requests reads ``raw.stream()`` (iter_content, iter_lines, content); ``read()`` and line
    iteration are there for apps that read ``raw`` themselves; anything else is urllib3's."""

    def __init__(
        self,
        adapter: RequestsAdapter,
        call: Call,
        node: Node,
        inner: Any,
        read: list[bytes],
        rest: Iterator[bytes] | None,
        watch: StreamWatch | None,
    ) -> None:
        self._adapter, self._call, self._node, self._inner = adapter, call, node, inner
        self._pending = b"".join(read)  # replayed first
        self._rest = rest  # None: not started (a body nobody has read yet)
        self._watch = watch
        self._reader = call.reader
        self._ended = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)  # headers, status, release_conn, _original_response...

    def stream(self, amt: int | None = 2**16, decode_content: bool | None = None) -> Iterator[bytes]:
        while chunk := self._next(amt, decode_content):
            yield chunk

    def read(self, amt: int | None = None, decode_content: bool | None = None, cache_content: bool = False) -> bytes:
        if amt is None or amt < 0:
            return b"".join(self.stream(None, decode_content))
        pieces = []
        while amt > 0 and (chunk := self._next(amt, decode_content)):
            pieces.append(chunk)
            amt -= len(chunk)
        return b"".join(pieces)

    def __iter__(self) -> Iterator[bytes]:
        """Lines, as urllib3's response yields them."""
        pending = b""
        for chunk in self.stream(None):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                yield line + b"\n"
        if pending:
            yield pending

    def close(self) -> None:
        self._inner.close()
        self._call.finish()

    def _next(self, amt: int | None, decode_content: bool | None) -> bytes:
        """Up to ``amt`` bytes (all that has come, with None); b"" at the end."""
        if not self._pending and not self._ended:
            self._pending = self._pull(decode_content)
        chunk = self._pending
        if amt is not None and len(chunk) > amt:
            chunk, self._pending = chunk[:amt], chunk[amt:]
        else:
            self._pending = b""
        if chunk and self._reader is not None:
            self._reader.chunk(chunk)
        return chunk

    def _pull(self, decode_content: bool | None) -> bytes:
        """The next chunk from the network, watched; b"" at its end, when the call finishes."""
        if self._rest is None:
            self._rest = self._inner.stream(None, decode_content=decode_content)
        call = self._call
        try:
            chunk: bytes = next(self._rest, b"")
        except self._adapter.errors as exc:
            self._ended = True
            if self._watch is None:
                call.finish(error_type=type(exc).__name__)
                raise
            raise self._broken(str(exc) or type(exc).__name__) from exc
        if chunk:
            if self._watch is not None:
                self._watch.feed(chunk)
            return chunk
        self._ended = True
        if self._watch is not None and self._watch.truncated():
            raise self._broken("it ended before its final event")
        call.finish()
        return b""

    def _broken(self, detail: str) -> Exception:
        return self._adapter.stream_broken(self._call, self._node, detail)


class _Body(io.BytesIO):
    """The in-memory body of an answer of our own. urllib3 reads a body until its file says it is
    closed, as a socket's does at its end; a plain BytesIO never does, and iter_content(None)
    would spin forever."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self._length = len(data)

    def isclosed(self) -> bool:
        return self.closed or self.tell() >= self._length


def _raw(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def _connect_read(timeout: Any) -> tuple[float | None, float | None]:
    """(connect, read) seconds of a requests timeout: a number, a pair, or urllib3's Timeout."""
    if timeout is None:
        return None, None
    if isinstance(timeout, tuple):
        connect, read = timeout
        return connect, read
    if isinstance(timeout, (int, float)):
        return float(timeout), float(timeout)
    connect = getattr(timeout, "connect_timeout", None)
    read = getattr(timeout, "read_timeout", None)
    return (
        connect if isinstance(connect, (int, float)) else None,
        read if isinstance(read, (int, float)) else None,
    )


def _bypasses(lib: Lib, url: str, no_proxy: str | None) -> bool:
    """requests' own decision: does NO_PROXY (the environment's, or ``no_proxy``) cover ``url``?"""
    return _bypass_cached(lib, url, no_proxy, os.environ.get("no_proxy"), os.environ.get("NO_PROXY"))


@functools.lru_cache(maxsize=256)
def _bypass_cached(lib: Lib, url: str, no_proxy: str | None, lower: str | None, upper: str | None) -> bool:
    # The environment's values are part of the key: should_bypass_proxies reads them itself.
    return bool(lib.should_bypass_proxies(url, no_proxy=no_proxy))


def _cause(exc: BaseException, lib: Lib) -> BaseException:
    """The urllib3 error a requests ConnectionError carries (the reason of a MaxRetryError)."""
    inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc
    reason = getattr(inner, "reason", None) if isinstance(inner, lib.MaxRetryError) else None
    return reason if isinstance(reason, BaseException) else inner


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""
