"""The httpx hook's fast path: a call's first attempt, sent before any loop is made for it.

Most calls need nothing up front but a node: no client-side limit to wait for, no
policy rule to check, no hedge to time, no stream to read to its first content. For
those, the loop's machinery (a ``Call``, its ``CallPlan``, the actions and exchanges
passed between them) costs more than everything else the hook does apart from the
span (``benchmarks/overhead.py --span-floor``). So the first attempt is made here, in
a straight line, from the same pieces the loop uses: ``prepare``, ``first_node``,
``start_tracing``, ``cut_timeouts``, ``clone_request``, ``log_answer``.

An answer under 300 ends the call here. Anything else (an error status, a transport
error, a traced answer that is not JSON) is handed to the loop, which adopts the
attempt (``UnderWay``) and judges it like any other: every decision about a retry
stays in ``core/plan.py``. The only one made here is "this answer ends the call",
which is the plan's own rule for a status under 300 (a redirect is the loop's to judge).

Nothing here sends or reads bytes: the sync and async halves in ``httpx_family`` do,
around it.
"""

from __future__ import annotations

import logging
import time
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..core.nodes import Node
from ..core.plan import first_node
from ..core.policy import needs_document
from ..core.request import GatewayRequest, prepare
from ..core.routes import Route
from ..runtime import Runtime
from .call import UnderWay, log, log_answer, note_swapped, start_tracing
from .httpx_call import HttpxCall, clonable, clone_request, content_type, cut_timeouts, node_url

if TYPE_CHECKING:
    from ..telemetry import CallTelemetry


class FastAttempt:
    """A call's first attempt, ready to send (``request``), and what ending the call takes."""

    __slots__ = (
        "chosen_at",
        "gateway",
        "lib",
        "node",
        "original",
        "request",
        "route",
        "runtime",
        "started",
        "telemetry",
        "trace_headers",
    )

    def __init__(
        self,
        lib: ModuleType,
        runtime: Runtime,
        route: Route,
        original: Any,
        gateway: GatewayRequest,
        node: Node,
        chosen_at: float,
        started: float,
    ) -> None:
        """``node``: from ``first_node``, at ``chosen_at`` (monotonic); ``started``: when the call
        came in (``perf_counter``)."""
        self.lib, self.runtime, self.route, self.original = lib, runtime, route, original
        self.gateway, self.node, self.chosen_at, self.started = gateway, node, chosen_at, started
        self.telemetry: CallTelemetry | None = None
        try:
            self.telemetry, self.trace_headers = start_tracing(gateway, runtime, None)
            runtime.ensure_health_checker()
            extensions = original.extensions
            own = extensions.get("timeout") or {}
            deadline = gateway.sdk_read_timeout
            if deadline is None and own.get("read") is not None:
                deadline = float(own["read"])
            # The first attempt has the whole deadline: only timeouts over it are cut.
            timeouts = cut_timeouts(own, deadline, None)
            if timeouts is not own:
                extensions = {**extensions, "timeout": timeouts}
            url, netloc = node_url(lib, node, gateway.path, gateway.query)
            self.request = clone_request(lib, original, url, netloc, extensions, gateway, self.trace_headers)
        except BaseException:
            self.abort()  # nothing was sent: the node slot first_node took is given back, the span ended
            raise

    def ends_call(self, response: Any) -> bool:
        """Does this answer end the call here? A status under 300 (the plan delivers it as it
        is), when its usage, if traced, can be read from the whole body before it is handed
        back (JSON, as ``HttpxCall.reads_whole``). The caller then reads it if traced. A 3xx
        goes to the loop, which never hands a redirect back (``Call.redirected``)."""
        if response.status_code >= 300:
            return False
        return self.telemetry is None or content_type(response, True).startswith(b"application/json")

    def answered(self, response: Any) -> Any:
        """End the call with ``response`` (see ``ends_call``), as the loop would: the node's
        latency learnt, the log line, the span ended with the answer's facts."""
        node, chosen_at = self.node, self.chosen_at
        self.runtime.pool.finished(node, max(time.monotonic() - chosen_at, 0.0), True, chosen_at=chosen_at)
        if log.isEnabledFor(logging.INFO):
            gateway = self.gateway
            where = f"{gateway.method} {gateway.route.host}{self.original.url.path}"
            log_answer(where, gateway, node.label, response.status_code, self.started, "")
        telemetry = self.telemetry
        if telemetry is not None:
            telemetry.answered(node, False)
            telemetry.reader.whole(response.content)
            telemetry.finish()
        return response

    def hand_over(self) -> HttpxCall:
        """The call's loop, going on from this attempt: its ``plan.start()`` is this attempt,
        to be judged (its response or transport error passed to ``run`` as ``resume``)."""
        under_way = UnderWay(self.telemetry, self.trace_headers, self.started, self.node, self.chosen_at)
        try:
            return HttpxCall(self.lib, self.runtime, self.original, self.route, self.gateway, under_way)
        except BaseException:
            self.abort()  # no loop took the attempt over
            raise

    def abort(self) -> None:
        """Interrupted (cancelled, or an error we do not handle): as ``Call.abort``."""
        self.runtime.pool.finished(self.node, None, None, chosen_at=self.chosen_at)
        if self.telemetry is not None:
            self.telemetry.finish(error_type="cancelled")


def first_attempt(
    lib: ModuleType, runtime: Runtime, route: Route, original: Any
) -> FastAttempt | GatewayRequest | None:
    """The call's first attempt, when nothing but a node is needed before it is sent.

    Otherwise the loop makes it: None, or the request already prepared (when it asks for a
    stream, or its model was aliased in its body), for ``HttpxCall`` to take as it is."""
    started = time.perf_counter()
    # A limit to wait for, a hedge to time, a library whose inner forms are not known.
    if runtime.limiter is not None or runtime.hedging is not None or not clonable(lib):
        return None
    try:
        body: bytes = original.content
    except lib.RequestNotRead:
        return None  # a streamed body: forwarded as it is, by the loop
    rules = runtime.rules
    if rules.allowed or needs_document(body, rules):
        return None  # a policy rule has something to check
    url = original.url
    gateway = prepare(
        route,
        original.method,
        url.path,
        url.query.decode("ascii"),
        original.headers._list,  # httpx's inner triples (see clonable)
        body,
        runtime.gateway_key,
        runtime.aliases,
    )
    if gateway.stream or gateway.body is not body:
        return gateway  # a stream to read to its first content; a body rewritten for an alias
    node = first_node(runtime.pool, runtime.budget)
    if node is None:
        return gateway  # no node: the loop's plan gives up, with its answer
    chosen_at = time.monotonic()  # the pool's clock, as CallPlan reads it when it chooses
    note_swapped(gateway, runtime)
    return FastAttempt(lib, runtime, route, original, gateway, node, chosen_at, started)
