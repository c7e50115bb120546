"""One redirected call made with httpx or httpx2: translation between their objects and the core.

Everything here is shared by the sync and async loops in ``httpx_family``; nothing
here sends or reads bytes. Decisions (which node, whether to retry, how long to
wait) are the core's: this module only turns httpx requests, responses and
exceptions into the core's plain data and back.
"""

from __future__ import annotations

import logging
import sys
import time
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple

from ..core.errors import annotate, error_body
from ..core.plan import CallPlan, Deliver, GiveUp, Send
from ..core.request import GatewayRequest, prepare
from ..core.retry import Kind
from ..core.routes import Route
from ..runtime import Runtime

if TYPE_CHECKING:
    from ..telemetry import CallTelemetry

log = logging.getLogger("yibu_middleware.calls")

# The length of a streamed request body (dropped by prepare(), which cannot know the body);
# copied when the body is forwarded as it is. Transfer-Encoding is never dropped.
_FRAMING = ("content-length",)
# Headers describing a body we re-encode when we hand back a response of our own.
_BODY_HEADERS = frozenset({"content-length", "content-encoding", "transfer-encoding"})


class Exchange(NamedTuple):
    """What one attempt's I/O produced, before any decision about it."""

    action: Send
    response: Any  # a response to judge, or None
    error: Exception | None  # the transport error it raised
    stream_failure: str | None  # why its stream failed before the first content


class HttpxCall:
    """The state one call carries between attempts."""

    __slots__ = (
        "_original_body",
        "gateway",
        "lib",
        "original",
        "plan",
        "runtime",
        "started",
        "telemetry",
        "timed_out",
        "trace_headers",
        "ttft",
        "where",
    )

    def __init__(self, lib: ModuleType, runtime: Runtime, original: Any, route: Route) -> None:
        self.lib = lib
        self.runtime = runtime
        self.original = original
        self.started = time.perf_counter()
        try:
            body: bytes | None = original.content
        except lib.RequestNotRead:
            body = None  # a streamed body: forwarded as it is, and never replayed
        self._original_body = body
        url = original.url
        headers = original.headers
        self.gateway: GatewayRequest = prepare(
            route,
            original.method,
            url.path,
            url.query.decode("ascii"),
            headers.raw,
            body,
            runtime.gateway_key,
            runtime.aliases,
        )
        runtime.remember_swapped(self.gateway.swapped_keys)
        retry_count, read_timeout = _stainless(headers.raw)
        if retry_count not in (b"0", b""):
            runtime.budget.record_retry()  # the SDK retrying on its own still costs budget
        self.plan = CallPlan(
            runtime.pool,
            runtime.budget,
            runtime.policy,
            replayable=body is not None,
            timeout=_deadline(original, read_timeout),
            hedging=runtime.hedging,
        )
        self.ttft = runtime.settings.stream.first_token_timeout if self.gateway.stream else None
        self.where = f"{original.method} {route.host}{url.path}"
        self.timed_out = False  # the last failure was a timeout: answered with 504, else 503
        self.telemetry: CallTelemetry | None = None
        self.trace_headers: list[tuple[bytes, bytes]] = []
        if "opentelemetry.trace" in sys.modules:  # no OpenTelemetry imported: no SDK, no spans
            from ..telemetry import CallTelemetry, current_trace_headers

            self.telemetry = CallTelemetry.start(self.gateway, runtime.redact)
            # W3C trace context, so that the gateway's logs join the trace: our span's, or
            # (when an instrumentation already spans this call) the current one's.
            self.trace_headers = self.telemetry.traceparent() if self.telemetry else current_trace_headers()

    # --- per attempt ------------------------------------------------------------------------

    def request_for(self, action: Send) -> Any:
        """The request for one attempt: the node's URL, and timeouts cut to the deadline."""
        runtime = self.runtime
        runtime.ensure_health_checker()
        gateway = self.gateway
        extensions = dict(self.original.extensions)
        extensions["timeout"] = self._timeouts(extensions.get("timeout") or {})
        url = _url(self.lib, action.node.url_for(gateway.path, gateway.query))
        headers = [*gateway.headers, *self.trace_headers] if self.trace_headers else gateway.headers
        if gateway.body is not None and gateway.body is self._original_body and _clonable(self.lib):
            return self._clone(url, headers, extensions, gateway.body)
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

    def _clone(self, url: Any, headers: list[tuple[bytes, bytes]], extensions: dict[str, Any], body: bytes) -> Any:
        """The app's request with the node's URL and our headers, its body object reused.

        Building a request from scratch re-encodes the body and normalises every header
        twice, a fifth of the hook's own cost; the body is the same bytes as the app's
        (neither aliased nor streamed), so the original's body stream is shared."""
        original = self.original
        request = object.__new__(type(original))
        request.__dict__.update(original.__dict__)
        request.url = url
        request.headers = self.lib.Headers([*headers, (b"Host", url.netloc), (b"Content-Length", b"%d" % len(body))])
        request.extensions = extensions
        return request

    def _timeouts(self, original: dict[str, float | None]) -> dict[str, float | None]:
        left = self.plan.timeout_left()
        timeouts = dict(original)
        if left is not None:
            for name in ("connect", "read", "write", "pool"):
                current = timeouts.get(name)
                timeouts[name] = left if current is None else min(current, left)
        if self.ttft is not None:
            read = timeouts.get("read")
            timeouts["read"] = self.ttft if read is None else min(read, self.ttft)
        return timeouts

    def judge(self, done: Exchange) -> Send | Deliver | GiveUp:
        """Report one exchange to the plan; its answer is what to do next."""
        following = self._judge(done)
        if self.telemetry is not None:
            step = self.plan.steps[-1] if self.plan.steps else None
            outcome = step.outcome if step is not None else ""
            self.telemetry.attempt(done.action.node, outcome, done.action.why, done.action.delay)
        return following

    def _judge(self, done: Exchange) -> Send | Deliver | GiveUp:
        action = done.action
        if done.error is not None:
            self.timed_out = isinstance(done.error, self.lib.TimeoutException)
            return self.plan.failed(action, self.kind_of(done.error), self._detail(done))
        if done.stream_failure is not None:
            self.timed_out = "timeout" in done.stream_failure
            return self.plan.failed(action, Kind.NODE_FAILED, self._detail(done))
        response = done.response
        status = response.status_code
        body = response.content if status >= 400 else None
        headers: dict[str, str] = {}
        if status == 429:  # only a 429's wait hints are read
            hints = ("retry-after", "retry-after-ms")
            headers = {name: response.headers[name] for name in hints if name in response.headers}
        return self.plan.answered(action, status, headers, body)

    def abort(self) -> None:
        """The call was interrupted (cancelled, or an error we do not handle)."""
        self.plan.release_all()
        if self.telemetry is not None:
            self.telemetry.finish(error_type="cancelled")

    def failed_exchange(self, done: Exchange) -> bool:
        """Did this exchange fail (so that a hedge still running should be waited for)?"""
        if done.error is not None or done.stream_failure is not None:
            return True
        status = int(done.response.status_code)
        return status == 429 or status >= 500

    def note_lost(self, done: Exchange) -> None:
        """A failed exchange whose sibling (hedge or primary) is still running: account for it only."""
        if done.error is not None:
            self.plan.record_failure(done.action, self.kind_of(done.error), self._detail(done))
        elif done.stream_failure is not None:
            self.plan.record_failure(done.action, Kind.NODE_FAILED, self._detail(done))
        else:
            status = int(done.response.status_code)
            self.plan.record_failure(done.action, Kind.RATE_LIMITED if status == 429 else Kind.NODE_FAILED, str(status))

    def _detail(self, done: Exchange) -> str:
        if done.error is not None:
            return self.runtime.redact(str(done.error) or type(done.error).__name__)
        # The gateway's own error text can quote a key: masked like everything else.
        return self.runtime.redact(f"stream failed before its first content: {done.stream_failure}")

    def kind_of(self, exc: Exception) -> Kind:
        lib = self.lib
        if isinstance(exc, lib.PoolTimeout):
            return Kind.FINAL  # our own connection pool is full: no node is to blame, none would help
        if isinstance(exc, (lib.ConnectError, lib.ConnectTimeout)):
            return Kind.NOT_SENT
        if isinstance(exc, (lib.TimeoutException, lib.NetworkError, lib.RemoteProtocolError)):
            return Kind.NODE_FAILED
        return Kind.FINAL

    def wants_body(self, response: Any) -> bool:
        """Error bodies are read before deciding: a gateway code can make a 5xx final."""
        return int(response.status_code) >= 400

    def watches_stream(self, response: Any) -> bool:
        """An uncompressed event stream of a request that asked for one."""
        return (
            self.gateway.stream
            and response.status_code == 200
            and response.headers.get("content-type", "").startswith("text/event-stream")
            and "content-encoding" not in response.headers
        )

    def first_token_overdue(self, started: float) -> bool:
        return self.ttft is not None and time.monotonic() - started > self.ttft

    # --- the end ----------------------------------------------------------------------------

    def deliver(self, action: Deliver, response: Any) -> Any:
        """The response to hand back; a failed one is marked so that the SDK does not retry it."""
        self._log(action.node.label, response.status_code)
        telemetry = self.telemetry
        if telemetry is not None:
            telemetry.answered(action.node, response.status_code, self.watches_stream(response))
        if not action.final:
            return response  # the span ends when the body is read: see httpx_family's traced stream
        body = response.content
        if telemetry is not None:
            telemetry.chunk(body)
            telemetry.finish(error_type=str(response.status_code))
        if self.plan.retried:
            body = annotate(body, f"yibu-middleware tried: {self.plan.summary()}") or body
        headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _BODY_HEADERS]
        headers.append(("x-should-retry", "false"))
        return self.lib.Response(response.status_code, headers=headers, content=body, extensions=response.extensions)

    def give_up(self, action: GiveUp) -> Any:
        """No node gave an answer to hand back: answer for the gateway, in the provider's format.

        A response rather than an exception, with ``x-should-retry: false``, so that the
        openai/anthropic SDKs raise at once instead of running retry rounds of their own."""
        status = 504 if self.timed_out else 503
        message = self.runtime.redact(
            f"yibu-middleware: {self.where} got no answer from the gateway ({self.plan.summary()}); {action.reason}"
        )
        log.warning("%s", message)
        if self.telemetry is not None:
            self.telemetry.finish(error_type="timeout" if self.timed_out else "yibu_no_answer")
        body = error_body(self.gateway.route.provider, status, message, "yibu_no_answer")
        return self.lib.Response(
            status,
            headers=[("content-type", "application/json"), ("x-should-retry", "false")],
            content=body,
        )

    def _log(self, node: str, status: int) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        elapsed_ms = (time.perf_counter() - self.started) * 1000
        gateway = self.gateway
        model = (
            gateway.model if gateway.requested_model == gateway.model else f"{gateway.requested_model}->{gateway.model}"
        )
        retried = f" (tried: {self.plan.summary()})" if self.plan.retried else ""
        log.info("%s model=%s -> %s %s in %.1f ms%s", self.where, model, node, status, elapsed_ms, retried)


# The request attributes a clone copies (httpx since 0.18, and httpx2): checked once per
# library, so that a release that changes them falls back to the constructor.
_REQUEST_FIELDS = frozenset({"method", "url", "headers", "extensions", "stream", "_content"})
_clonable_libs: dict[str, bool] = {}


def _clonable(lib: ModuleType) -> bool:
    known = _clonable_libs.get(lib.__name__)
    if known is None:
        probe = lib.Request("POST", "http://127.0.0.1/", content=b"{}")
        known = _clonable_libs[lib.__name__] = set(vars(probe)) == _REQUEST_FIELDS
    return known


_urls: dict[tuple[str, str], Any] = {}


def _url(lib: ModuleType, text: str) -> Any:
    """Parsed URL objects, reused: parsing is a third of building a request, and a process
    sends to few distinct node URLs. Bounded, for apps that put ids in their paths."""
    key = (lib.__name__, text)  # httpx and httpx2 have URL types of their own
    url = _urls.get(key)
    if url is None:
        if len(_urls) > 512:
            _urls.clear()
        url = _urls[key] = lib.URL(text)
    return url


def _stainless(raw: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
    """The openai/anthropic SDKs' retry count and read timeout headers, in one pass."""
    retry_count = read_timeout = b""
    for name, value in raw:
        if name[:12].lower() == b"x-stainless-":
            lower = name.lower()
            if lower == b"x-stainless-retry-count":
                retry_count = value
            elif lower == b"x-stainless-read-timeout":
                read_timeout = value
    return retry_count, read_timeout


def _deadline(request: Any, stated: bytes) -> float | None:
    """The whole call's time limit: the SDK's stated read timeout, else the request's own."""
    if stated:
        try:
            return float(stated)
        except ValueError:
            pass
    timeout = (request.extensions.get("timeout") or {}).get("read")
    return float(timeout) if timeout is not None else None


def stream_error(call: HttpxCall, node: str, detail: str) -> Exception:
    """The error a caller gets when a stream breaks after its first content."""
    error: Exception = call.lib.RemoteProtocolError(
        call.runtime.redact(
            f"yibu-middleware: the stream of {call.where} from gateway node {node} broke after its first content"
            f" ({detail}); the answer is incomplete and was not retried, to avoid repeating what was already read"
        ),
        request=call.original,
    )
    return error
