"""One redirected call, whatever client sent it: its state, and the verdict on each attempt.

The driver (``pipeline/_async/driver.py``, and the sync one generated from it) runs a call's
attempts; everything it needs to know or decide between them is here, and none of it sends or
reads bytes: the request prepared once for the gateway, the call's plan, its span and trace
headers, the verdict on each attempt, the answer we give when no node answered or a rule
refused the call, and the log line. Decisions are the core's (``core/plan.py``,
``core/policy.py``); the client library's objects are its adapter's (``pipeline/adapter.py``).
So routing, node choice, retries, redaction and tracing cannot drift apart between clients.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple, cast
from urllib.parse import urljoin, urlsplit

from ..core.affinity import AffinityKey, affinity_key, with_prompt_cache_key
from ..core.error_bodies import annotate, error_body
from ..core.genai import ResponseReader
from ..core.keys import key_refusal
from ..core.nodes import Node
from ..core.plan import AttemptLimits, CallPlan, Deliver, GiveUp, Send, attempt_limits
from ..core.policy import ParsedBody, check, describe_gateway_refusal, needs_document
from ..core.request import CREDENTIAL_HEADERS, GatewayRequest, prepare, read_body
from ..core.retry import Kind, classify_status, gateway_code
from ..core.routes import Route
from ..core.sse import StreamWatch
from ..runtime import Runtime
from .adapter import Adapter, content_type, is_event_stream
from .observers import AffinityNote, CallObserver, LimitsTurn, LogLine, SpendCount

if TYPE_CHECKING:
    from decimal import Decimal
    from types import ModuleType

    from ..fleet import FleetPermit
    from ..limiter import Permit, QueueTimeout
    from ..telemetry import CallTelemetry

log = logging.getLogger("yibu_middleware.calls")

# Headers describing a body we re-encode when we hand back a response of our own.
BODY_HEADERS = frozenset({"content-length", "content-encoding", "transfer-encoding"})
# Retry hints of an answer that is not a 429: none are read (shared, never written).
_NO_HINTS: Mapping[str, str] = MappingProxyType({})


class Failure(NamedTuple):
    """An attempt that gave no response to judge: a transport error, or a stream that failed
    before its first content, already mapped to the core's terms."""

    kind: Kind
    detail: str  # masked: it can quote the gateway's error text
    timeout: bool  # a timeout: if no node answers at all, the client's timeout error is raised (see give_up)


class Exchange(NamedTuple):
    """What one attempt's I/O produced, before any decision about it."""

    action: Send
    response: Any  # the client's response (to judge, then hand back or close), or None
    status: int  # its status; 0 without a response
    failure: Failure | None


class Call:
    """The state one call carries between attempts, whatever library sent it."""

    __slots__ = (
        "_keyed",
        "_over",
        "_parsed",
        "adapter",
        "affinity",
        "cost",
        "first_model",
        "gateway",
        "headers",
        "legs",
        "observers",
        "plan",
        "reader",
        "runtime",
        "started",
        "timed_out",
        "ttft",
    )

    def __init__(self, runtime: Runtime, route: Route, adapter: Adapter) -> None:
        """``adapter``: the client library's, around the app's request (see ``Adapter``)."""
        self.runtime = runtime
        self.adapter = adapter
        self.started = time.perf_counter()
        self._over = False
        body = adapter.body
        if runtime.key_files is not None:
            runtime.key_files.check()  # a rotated key file: its keys before this call chooses one
        # One parse of the body, shared by aliasing and the policy checks (made only if needed),
        # for a call a rule has something to check in: a model allow-list, or a body that may
        # carry media. Any other call skips the checks.
        rules = runtime.rules
        self._parsed = ParsedBody(body) if rules.allowed or needs_document(body, rules) else None
        self.gateway: GatewayRequest = prepare(
            route,
            adapter.method,
            adapter.path,
            adapter.query,
            adapter.headers,
            body,
            runtime.gateway_key,
            runtime.aliases,
            self._parsed,
        )
        note_swapped(self.gateway, runtime)
        runtime.ensure_health_checker()
        runtime.ensure_fleet_syncer()
        # Context affinity: the conversation's key picks the first attempt's node (core/affinity.py).
        self.affinity: AffinityKey | None = None
        follow: Node | None = None
        remembered = runtime.affinity
        if remembered is not None and self.gateway.method == "POST":
            self.affinity = key = affinity_key(self.gateway.path, self.gateway.body, self.gateway.model)
            if key is not None:
                follow = remembered.get(key.follow) if key.follow else None
                if runtime.settings.affinity.set_prompt_cache_key:
                    self.gateway = with_cache_key(self.gateway, key)
        deadline = self.gateway.sdk_read_timeout
        self.plan = CallPlan(
            runtime.pool,
            runtime.budget,
            runtime.policy,
            replayable=body is not None,
            timeout=deadline if deadline is not None else adapter.own_timeout(),
            hedging=runtime.hedging,
            affinity=None if self.affinity is None else self.affinity.point,
            follow=follow,
            keys=runtime.keys,
            model=self.gateway.model,
        )
        # Model fallbacks: the model the call was sent with first, and each leg before the current
        # one (its model, its plan, what made the call leave it).
        self.first_model = self.gateway.model
        self.legs: tuple[tuple[str | None, CallPlan, str], ...] = ()
        self.ttft = runtime.settings.stream.first_token_timeout if self.gateway.stream else None
        self.timed_out = False  # the last failure was a timeout: see give_up
        # The response is read for its usage (and ids) when a span or a token limit wants it.
        limiter = runtime.limiter
        spend = runtime.spend
        self.reader = ResponseReader() if spend is not None or (limiter is not None and limiter.counts_tokens) else None
        self.cost: Decimal | None = None  # USD, once the call ended, when it was priced
        note = AffinityNote.for_call(self.gateway, self.affinity, remembered)
        if note is not None and self.reader is None:
            self.reader = ResponseReader()  # the answer's id: the node a later turn names
        telemetry, trace_headers = start_tracing(self.gateway, runtime, self.reader)
        # The headers every attempt sends: the gateway's, with the call's trace context in place
        # of any the app sent itself (an outer instrumentation's ``traceparent``), never twice.
        self.headers = with_trace_headers(self.gateway.headers, trace_headers)
        # A pooled key's headers, made when an attempt first sends that key (see headers_for).
        self._keyed: dict[bytes, tuple[tuple[bytes, bytes], ...]] | None = None
        # What watches the call go by (see observers.py): its span, its log line, its turn.
        self.observers: list[CallObserver] = []
        if spend is not None:
            self.observers.append(SpendCount(spend))  # first: the span reads the call's cost
        if telemetry is not None:
            self.reader = telemetry.reader
            self.observers.append(telemetry)
        if log.isEnabledFor(logging.INFO):
            self.observers.append(LogLine())
        if note is not None:
            self.observers.append(note)

    @property
    def where(self) -> str:
        """The call in a few words, for log lines and error messages: "POST api.openai.com/v1/..."."""
        return f"{self.gateway.method} {self.gateway.route.host}{self.adapter.path}"

    def headers_for(self, action: Send) -> tuple[tuple[bytes, bytes], ...]:
        """The headers of one attempt: the call's, with the attempt's pooled key in every
        credential header when it has one (the key is chosen per attempt, so that a retry after
        the gateway refused a key sends the next one)."""
        key = action.key
        if key is None or key.value == self.runtime.gateway_key:
            return self.headers
        keyed = self._keyed
        if keyed is None:
            keyed = self._keyed = {}
        headers = keyed.get(key.value)
        if headers is None:
            headers = keyed[key.value] = with_key(self.headers, key.value)
        return headers

    # --- client-side limits and policy (the driver waits for a permit) -----------------------

    @property
    def needs_admission(self) -> bool:
        """A rule has something to check, a client-side limit applies, or a budget is set."""
        runtime = self.runtime
        return (
            self._parsed is not None
            or runtime.limiter is not None
            or (runtime.spend is not None and runtime.spend.budgets.any)
        )

    def budget_refusal(self) -> Any:
        """Our refusal of a call a spend budget stops (a 429 in the provider's format, nothing
        sent), or None."""
        spend = self.runtime.spend
        if spend is None:
            return None
        refusal = spend.refusal(self.gateway.model)
        if refusal is None:
            return None
        return self.refuse(429, "yibu_budget_exceeded", refusal.message(self.gateway.model))

    def policy_refusal(self) -> Any:
        """Our refusal of a call a policy rule forbids (nothing is sent), or None."""
        if self._parsed is None:
            return None
        gateway = self.gateway
        parsed = self._parsed
        rules = self.runtime.rules
        violation = check(gateway.route.provider, gateway.path, parsed, gateway.model, rules, parsed.raw is None)
        self._parsed = None  # the parse is not needed any more: let a large document go
        if violation is None:
            return None
        return self.refuse(violation.status, violation.code, violation.message)

    def permit_request(self) -> tuple[str | None, int, float]:
        """What the call asks the client-side limits for: (model, tokens it may use, seconds it may
        wait). Tokens are estimated before it is sent (its real usage replaces them at the end)."""
        limiter = self.runtime.limiter
        assert limiter is not None
        estimate = 0
        if limiter.counts_tokens:
            from ..core.limits import estimate_tokens  # here: only a process with a token limit needs it

            estimate = estimate_tokens(self.gateway.body)
        left = self.plan.timeout_left()
        wait = limiter.queue_timeout if left is None else min(limiter.queue_timeout, left)
        return self.gateway.model, estimate, wait

    def admitted(self, permit: Permit | FleetPermit) -> None:
        """The limits' turn was given: kept until ``finish``. The nodes the gateway asked to wait
        are tried last (the limiter was given the pool's nodes)."""
        self.observers.append(LimitsTurn(permit))
        self.plan.avoid = cast(frozenset[Node], permit.avoid)

    def queue_refusal(self, exc: QueueTimeout) -> Any:
        """Our answer to a call that waited too long for its turn under the limits."""
        return self.refuse(exc.status, exc.code, str(exc))

    def refuse(self, status: int, code: str, message: str) -> Any:
        """Our own answer to a call that is not sent: in the provider's format, never retried."""
        message = self.runtime.redact(message)
        log.warning("%s: %s", self.where, message)
        self.finish(error_type=code)
        body = error_body(self.gateway.route.provider, status, message, code)
        return self.adapter.answer(
            status, [("content-type", "application/json"), ("x-should-retry", "false")], body, None
        )

    def release_turn(self) -> None:
        """Give back the call's turn under the limits (a fallback takes one for its own model)."""
        for observer in list(self.observers):
            if isinstance(observer, LimitsTurn):
                observer.ended(self, None, None)
                self.observers.remove(observer)

    def finish(self, error_type: str | None = None) -> None:
        """The call is over: reached on every path (a failed answer or our own handed back, a
        body read or closed, a stream ended, broken or closed, an abort); only the first
        time counts: its observers are told (the span ends, the limits' turn is given back)."""
        if self._over:
            return
        self._over = True
        facts = self.reader.done() if self.reader is not None else None  # the answer's, read once
        for observer in self.observers:
            observer.ended(self, facts, error_type)

    # --- reading a response before the verdict ----------------------------------------------

    def reads_whole(self, response: Any) -> bool:
        """A JSON answer whose usage is wanted (a span, a token limit) is read whole before it
        is handed back, as the SDK would read it at once anyway: cheaper than watching its
        body go by, and a connection lost while reading it can still be retried."""
        return (
            self.reader is not None
            and not self.gateway.stream
            and content_type(self.adapter, response).startswith("application/json")
        )

    def watches_stream(self, response: Any) -> bool:
        """An uncompressed event stream answering a request that asked for one."""
        return self.gateway.stream and is_event_stream(self.adapter, response)

    # --- one attempt's verdict --------------------------------------------------------------

    def failure(self, exc: BaseException) -> Failure:
        """A transport error, in the core's terms."""
        adapter = self.adapter
        return Failure(adapter.kind_of(exc), self.runtime.redact(adapter.describe(exc)), adapter.is_timeout(exc))

    def redirected(self, node: Node, status: int, location: str | None) -> Failure | None:
        """The failure a node's redirect is (None: ``status`` is no redirect).

        A gateway call is never redirected off the gateway. The hook sits below each client's
        redirect handling, so a 3xx handed back would be followed by the client itself, with the
        app's own headers (its provider key, unswapped: ``x-api-key``, ``api-key``) and the
        prompt, to whatever host the node names, and that host's answer would reach the app as
        the model's. A gateway has no reason to redirect an API call: a 3xx means a misconfigured
        or hostile node. So it is a failed attempt, as a 5xx is (the next node is tried, and the
        node is blamed), never handed back: answering it without its Location instead would only
        give the app a 3xx it cannot use. The attempt's outcome names the redirect and where it
        pointed (scheme, host and port only). 304 is no redirect (it has no Location to follow)."""
        if not 300 <= status < 400 or status == 304:
            return None
        where = ""
        if location:
            try:
                target = urlsplit(urljoin(node.base_url, location.strip()))
            except ValueError:  # a hostile node's Location need not parse
                where = " to a malformed Location"
            else:
                # Scheme, host and port only (never userinfo, a path or a query), and not at any length.
                where = f" to {target.scheme[:16]}://{target.netloc.rpartition('@')[2][:200]}"
        detail = self.runtime.redact(f"{status} redirect{where}, not followed (a gateway call stays on the gateway)")
        return Failure(Kind.NODE_FAILED, detail, False)

    def stream_failed(self, why: str) -> Failure:
        """A stream that failed before its first content (see ``Commit.failure``)."""
        # The gateway's own error text can quote a key: masked like everything else.
        detail = self.runtime.redact(f"stream failed before its first content: {why}")
        return Failure(Kind.NODE_FAILED, detail, "timeout" in why)

    def judge(self, done: Exchange) -> Send | Deliver | GiveUp:
        """Report one exchange to the plan; its answer is what to do next."""
        following = self._judge(done)
        if self.observers:
            step = self.plan.steps[-1] if self.plan.steps else None
            retried = self.retried or isinstance(following, Send)
            for observer in self.observers:
                observer.attempt_ended(self, done.action, step.outcome if step is not None else "", retried)
        return following

    def _judge(self, done: Exchange) -> Send | Deliver | GiveUp:
        failure = done.failure
        if failure is not None:
            self.timed_out = failure.timeout
            return self.plan.failed(done.action, failure.kind, failure.detail)
        status = done.status
        limiter = self.runtime.limiter
        if limiter is not None and limiter.follows_gateway:
            # Slow down before the gateway says no: its rate-limit headers hold back later calls.
            headers = {name.lower(): value for name, value in self.adapter.response_headers(done.response)}
            limiter.observe(self.gateway.model, status, headers, done.action.node)
        if status < 400:
            return self.plan.answered(done.action, status, _NO_HINTS, None)
        # Error bodies are read before deciding: a gateway code can make a 5xx final.
        body = self.adapter.error_body(done.response)
        if done.action.key is not None:
            refusal = key_refusal(status, gateway_code(body))
            if refusal is not None:  # a spent or rejected pooled key: the next key, at once
                return self.plan.key_refused(done.action, status, refusal)
        hints = retry_hints(self.adapter, done.response) if status == 429 else _NO_HINTS  # only a 429's hints count
        return self.plan.answered(done.action, status, hints, body)

    # --- model fallbacks ---------------------------------------------------------------------

    def fallback(self, action: Deliver | GiveUp, done: Exchange | None) -> Send | GiveUp | None:
        """The first attempt of a fallback leg, when the call's final answer is one its fallbacks
        are for (``core/fallbacks.py``); None to hand the answer back as it is.

        The fallback is the same request with only ``model`` changed, under the same deadline
        (what is left of it) and retry budget (one retry is spent on it), with the key pool of
        its own model; the driver gives it a turn under its model's limits. A stream reaches
        here only before its first content (a delivered stream is no final answer)."""
        fallbacks = self.runtime.fallbacks
        if fallbacks is None or self.first_model is None or self.gateway.body is None:
            return None
        if not fallbacks.covers(self.first_model):
            return None
        left = self.plan.timeout_left()
        if left is not None and left <= 0:
            return None
        from ..core.fallbacks import trigger_of  # only a process with fallbacks needs it

        if isinstance(action, GiveUp):
            if self.timed_out or action.kind is Kind.FINAL:
                return None  # a timeout used the deadline up; a one-shot body cannot go again
            trigger = trigger_of(0, None, exhausted=True)
        else:
            if not action.final or done is None or done.response is None:
                return None
            body = self.adapter.error_body(done.response)
            exhausted = classify_status(done.status, body) in (Kind.RATE_LIMITED, Kind.NODE_FAILED)
            trigger = trigger_of(done.status, body, exhausted)
        if trigger is None:
            return None
        tried = [model for model, _, _ in self.legs if model is not None]
        current = self.gateway.model
        model = fallbacks.next_model(self.first_model, [*tried, current or ""], trigger)
        if model is None:
            return None
        spend = self.runtime.spend
        if spend is not None and spend.refusal(model) is not None:
            return None  # a fallback a budget stops is not made
        _, sent, new_body, _ = read_body(self.gateway.body, {current or "": model})
        if sent != model or not self.runtime.budget.try_spend():
            return None  # the body's model could not be rewritten, or retries are spent
        if not self.retried and done is not None and self.plan.steps:
            # The one attempt so far was told as a call's only one (no event): it is one of several now.
            for observer in self.observers:
                observer.attempt_ended(self, done.action, self.plan.steps[-1].outcome, True)
        self.legs = (*self.legs, (current, self.plan, trigger.value))
        self.gateway = self.gateway._replace(body=new_body, model=model)
        runtime = self.runtime
        self.plan = CallPlan(
            runtime.pool,
            runtime.budget,
            runtime.policy,
            replayable=True,
            timeout=left,
            hedging=runtime.hedging,
            keys=runtime.keys,
            model=model,
        )
        self.timed_out = False
        for observer in self.observers:
            observer.fell_back(self, current, model, trigger.value)
        return self.plan.start()

    @property
    def retried(self) -> bool:
        """More than one attempt, or more than one model."""
        return bool(self.legs) or self.plan.retried

    def summary(self) -> str:
        """Every node tried, and with fallbacks every model: "gpt-5.2: a:443: 404; then (model_refused)
        gpt-5.1: b:443: 200"."""
        if not self.legs:
            return self.plan.summary()
        parts = []
        reason = ""
        for model, plan, why in self.legs:
            parts.append(f"{f'then ({reason}) ' if reason else ''}{model}: {plan.summary()}")
            reason = why
        parts.append(f"then ({reason}) {self.gateway.model}: {self.plan.summary()}")
        return "; ".join(parts)

    @property
    def models_tried(self) -> list[str]:
        return [*(model or "" for model, _, _ in self.legs), self.gateway.model or ""]

    def abort(self) -> None:
        """The call was interrupted (cancelled, or an error we do not handle)."""
        self.plan.release_all()
        self.finish(error_type="cancelled")

    def failed_exchange(self, done: Exchange) -> bool:
        """Did this exchange fail (so that a hedge still running should be waited for)?
        (A redirect is an exchange's failure already: see ``redirected``.)"""
        return done.failure is not None or done.status == 429 or done.status >= 500

    def note_lost(self, done: Exchange) -> None:
        """A failed exchange whose sibling (hedge or primary) is still running: account for it only."""
        failure = done.failure
        if failure is not None:
            self.plan.record_failure(done.action, failure.kind, failure.detail)
        else:
            kind = Kind.RATE_LIMITED if done.status == 429 else Kind.NODE_FAILED
            self.plan.record_failure(done.action, kind, str(done.status))

    def attempt_limits(self) -> AttemptLimits:
        """What the next attempt may take (see ``core.plan.attempt_limits``)."""
        return attempt_limits(self.plan.timeout_left(), self.ttft)

    def first_token_overdue(self, started: float) -> bool:
        return self.ttft is not None and time.monotonic() - started > self.ttft

    # --- the end ----------------------------------------------------------------------------

    def deliver(self, action: Deliver, done: Exchange) -> Any:
        """The response to hand back; a failed one is marked so that the SDK does not retry it.

        A successful one is returned as it is: its adapter hands it over (and calls
        ``finish`` when its body has been read or closed)."""
        response, status = done.response, done.status
        event_stream = self.watches_stream(response)  # only a stream asked for is one
        if self.reader is not None:
            self.reader.sse = event_stream
        for observer in self.observers:
            observer.answered(self, action.node, status, event_stream)
        if not action.final:
            return response
        # A node can quote the key it was sent (a 401's "Incorrect API key provided: ..."):
        # what we hand back is masked like a log line, or the app's exception would hold it.
        body = masked_body(self.adapter.error_body(response), self.runtime.redact)
        if self.reader is not None:
            self.reader.chunk(body)
        explained = describe_gateway_refusal(status, gateway_code(body))
        keys = self.runtime.keys
        if keys is not None and self.plan.keys_exhausted:
            explained = (f"{explained} " if explained else "") + keys.explain_all_benched(self.plan.model)
        if explained is not None:
            # A quota or permission refusal: retrying cannot help, the log and span say what to do.
            explained = self.runtime.redact(explained)
            log.warning("%s: %s", self.where, explained)
            for observer in self.observers:
                observer.note(self, explained)
            body = annotate(body, f"yibu-middleware: {explained}") or body
        self.finish(error_type=str(status))
        if self.retried:
            body = annotate(body, f"yibu-middleware tried: {self.summary()}") or body
        redact = self.runtime.redact
        headers = [(k, redact(v)) for k, v in self.adapter.response_headers(response) if k.lower() not in BODY_HEADERS]
        headers.append(("x-should-retry", "false"))
        return self.adapter.answer(status, headers, body, response)

    def give_up(self, action: GiveUp) -> Any:
        """No node gave an answer to hand back.

        When the call's deadline ran out, or its last attempt timed out waiting for an answer,
        the client's own timeout exception is raised, naming the nodes tried: what the
        library alone raises when a request runs out of time (httpx's and httpx2's
        ``ReadTimeout``, which the openai and anthropic SDKs raise as ``APITimeoutError``;
        requests' ``ReadTimeout``; aiohttp's ``SocketTimeoutError``), so that an app's handling
        of timeouts, and the SDK's own retry of a timeout (``max_retries``), work as without
        the middleware. A 504 of our own would turn a timeout into an ``InternalServerError``
        the app does not expect from one.

        Otherwise (nodes refused, unreachable within their connect timeout, dropped or
        redirected), the library answers for the gateway
        with a 503 in the provider's format, with ``x-should-retry: false``, so that the
        openai/anthropic SDKs raise at once instead of running retry rounds of their own over
        nodes just found dead."""
        summary = self.summary()
        if self.timed_out or self.plan.timeout_left() == 0:
            message = self.runtime.redact(
                f"yibu-middleware: {self.where} timed out: no gateway node answered in time ({summary});"
                f" {action.reason}"
            )
            log.warning("%s", message)
            self.finish(error_type="timeout")
            raise self.adapter.timeout_error(message)
        message = self.runtime.redact(
            f"yibu-middleware: {self.where} got no answer from the gateway ({summary}); {action.reason}"
        )
        log.warning("%s", message)
        self.finish(error_type="yibu_no_answer")
        body = error_body(self.gateway.route.provider, 503, message, "yibu_no_answer")
        return self.adapter.answer(503, [("content-type", "application/json"), ("x-should-retry", "false")], body, None)

    def hand_back(self, action: Deliver | GiveUp, done: Exchange | None) -> Any:
        """The caller's answer, once the plan delivers or gives up."""
        if isinstance(action, GiveUp):
            return self.give_up(action)
        assert done is not None  # a Deliver follows an answer
        delivered = self.deliver(action, done)
        return delivered if action.final else self.adapter.handed_back(self, action, delivered)

    def stream_broke(self, node: Node, detail: str) -> str:
        """A stream broke after its first content: too late to retry, but the node is blamed.
        Returns the message of the error the caller gets (each adapter raises its own type)."""
        self.plan.stream_cut(node)
        return self.runtime.redact(
            f"yibu-middleware: the stream of {self.where} from gateway node {node.label} broke after its first content"
            f" ({detail}); the answer is incomplete and was not retried, to avoid repeating what was already read"
        )


def with_cache_key(gateway: GatewayRequest, key: AffinityKey) -> GatewayRequest:
    """The request with ``prompt_cache_key`` added from the affinity key (``affinity.set_prompt_cache_key``):
    OpenAI chat and Responses bodies only, and never one that has the field anywhere (the key
    reads only the body's head and tail: the whole body is searched before it is changed)."""
    body = gateway.body
    if (
        key.has_cache_key
        or body is None
        or gateway.route.provider != "openai"
        or not gateway.path.endswith(("/chat/completions", "/responses"))
        or b'"prompt_cache_key"' in body
    ):
        return gateway
    return gateway._replace(body=with_prompt_cache_key(body, key.cache_key))


def retry_hints(adapter: Adapter, response: Any) -> Mapping[str, str]:
    """A 429's ``retry-after`` / ``retry-after-ms`` headers."""
    hints = {}
    for name in ("retry-after", "retry-after-ms"):
        value = adapter.header(response, name)
        if value is not None:
            hints[name] = value
    return hints


def masked_body(body: bytes, redact: Callable[[str], str]) -> bytes:
    """An error body with every secret in it masked (``redact``: the runtime's), still valid JSON
    when it was: the masks are plain text, but an app's ``redaction.extra_patterns`` may span a
    quote, so a body that no longer parses is masked string by string instead."""
    text = body.decode("utf-8", "surrogateescape")
    masked = redact(text)
    if masked == text:
        return body  # nothing to mask (the common case): the node's bytes as they came
    if body.lstrip()[:1] in (b"{", b"["):
        try:
            json.loads(masked)
        except (ValueError, RecursionError):
            try:
                document = json.loads(body)
            except (ValueError, RecursionError):
                pass  # not JSON after all (or too deep to walk): masked as text
            else:
                return json.dumps(_masked_strings(document, redact)).encode()
    return masked.encode("utf-8", "surrogateescape")


def _masked_strings(value: Any, redact: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_masked_strings(item, redact) for item in value]
    if isinstance(value, dict):
        return {redact(key): _masked_strings(item, redact) for key, item in value.items()}
    return value


def note_swapped(gateway: GatewayRequest, runtime: Runtime) -> None:
    """What a call's request tells the process before its first attempt: the provider keys it
    swapped out (masked in every log line from now on), and a retry of the SDK's own, which
    costs retry budget like one of ours."""
    runtime.remember_swapped(gateway.swapped_keys)
    if gateway.sdk_retried:
        runtime.budget.record_retry()


def with_key(headers: tuple[tuple[bytes, bytes], ...], key: bytes) -> tuple[tuple[bytes, bytes], ...]:
    """``headers`` with ``key`` in each credential header (``Authorization`` as a Bearer token)."""
    out = []
    for name, value in headers:
        lower = name.lower()
        if lower == b"authorization":
            value = b"Bearer " + key
        elif lower in CREDENTIAL_HEADERS:
            value = key
        out.append((name, value))
    return tuple(out)


def with_trace_headers(
    headers: tuple[tuple[bytes, bytes], ...], trace_headers: list[tuple[bytes, bytes]]
) -> tuple[tuple[bytes, bytes], ...]:
    if not trace_headers:
        return headers
    replaced = {name.lower() for name, _ in trace_headers}
    # A list, not a generator: resuming a generator for each of a dozen headers costs twice as much.
    return (*[header for header in headers if header[0].lower() not in replaced], *trace_headers)


def start_tracing(
    gateway: GatewayRequest, runtime: Runtime, reader: ResponseReader | None
) -> tuple[CallTelemetry | None, list[tuple[bytes, bytes]]]:
    """A call's span (None when nothing records it) and the W3C trace headers of its attempts,
    so that the gateway's logs join the trace: our span's, or (when an instrumentation already
    spans this call) the current one's. ``reader``: see ``CallTelemetry.start``."""
    if "opentelemetry.trace" not in sys.modules:  # no OpenTelemetry imported: no SDK, no spans
        return None, []
    tracing = _telemetry or _load_telemetry()
    telemetry = tracing.CallTelemetry.start(gateway, runtime.redact, reader, runtime.capture_content)
    if telemetry is not None:
        return telemetry, telemetry.trace_headers()
    return None, tracing.current_trace_headers()


# What a stream may send before its first content, held (to replay) until then: past this the
# node is given up, as a failed attempt. Before content come a few small events (a role chunk,
# message_start, keep-alives); the largest, the Responses API's response.created, echoes the
# request's instructions and tools, so the request's own size is allowed on top. A node that
# sends only keep-alives or empty events, or one endless event, is cut here instead of growing
# the process's memory.
MAX_HELD_BEFORE_CONTENT = 1024 * 1024


class Commit:
    """Reading an event stream up to its first content (the commit point; see ``core/sse.py``).

    Shared by every adapter, sync and async: each feeds it the chunks it reads and, once
    committed, replays ``read`` to the caller before the rest of the stream."""

    __slots__ = ("call", "cap", "held", "read", "started", "watch")

    def __init__(self, call: Call) -> None:
        self.call = call
        self.watch = StreamWatch()
        self.read: list[bytes] = []  # replayed to the caller once committed
        self.held = 0  # bytes in ``read``
        self.cap = MAX_HELD_BEFORE_CONTENT + len(call.gateway.body or b"")
        self.started = time.monotonic()

    def took(self, chunk: bytes) -> bool:
        """Note one chunk; True when reading can stop."""
        self.read.append(chunk)
        self.held += len(chunk)
        watch = self.watch
        watch.feed(chunk)
        return (
            watch.committed or bool(watch.error) or self.held > self.cap or self.call.first_token_overdue(self.started)
        )

    def failure(self) -> str | None:
        """None when the stream committed; else why it failed before its first content."""
        watch = self.watch
        if watch.error:
            return watch.error
        if watch.committed:
            return None
        if self.held > self.cap:
            return (
                f"{self.held} bytes came with no content, more than the {self.cap} held before a stream's first"
                " content (1 MiB plus the request's size)"
            )
        if self.call.first_token_overdue(self.started):
            return "no content within stream.first_token_timeout"
        return "the stream ended with no content"


_telemetry: ModuleType | None = None


def _load_telemetry() -> ModuleType:
    """``telemetry``, imported on the first call made once the app has imported OpenTelemetry
    (an import statement on every call would cost more than the span's attributes)."""
    global _telemetry
    from .. import telemetry

    _telemetry = telemetry
    return telemetry
