"""One call's attempts: which node next, after how long, and when to stop.

Plain code with no I/O, shared by every adapter, sync and async. A driver asks
for an action, performs it and reports what happened:

    action = plan.start()
    while isinstance(action, Send):
        sleep(action.delay); try the node within plan.timeout_left()
        transport error          -> action = plan.failed(action, kind, detail)
        response                 -> action = plan.answered(action, status, headers, body)
        stream, before content   -> action = plan.failed(action, Kind.NODE_FAILED, detail)
    Deliver -> hand the response back (``final``: it is a failure the SDK must not retry)
    GiveUp  -> answer with an error of our own (no node gave a response to hand back)

The rules (each from the shared notes on resilience):
- a connection that failed before anything was sent is retried on another node at once,
  and costs no retry budget (it cost the gateway nothing);
- 5xx, 529 and read timeouts go to another node; only when no untried node is left is
  there a wait, with full jitter;
- 429 goes to another node at once, or waits its ``retry-after`` when none is left (a
  ``retry-after`` longer than ``max_retry_after`` is then handed back to the caller);
- 4xx and gateway quota/permission errors are never retried;
- every retry must fit in the call's deadline, ``max_attempts`` and the process-wide
  retry budget; a one-shot request body is never sent twice (but one that a connection
  refused before anything was sent is still whole, and goes to the next node).

Attempts are told apart by ``Send.attempt`` (a hedge and a retry may share a node), and
every node slot an attempt takes is given back exactly once: when it is judged, when it
is abandoned (a hedge that lost), or by ``release_all`` when the call is interrupted.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import NamedTuple

from .keys import GatewayKey, KeyRing
from .nodes import Clock, Node, NodePool
from .retry import Kind, RetryBudget, classify_status, full_jitter, retry_after

# One source of jitter for every call: seeding a new Random costs more than the rest of a plan.
_JITTER = random.Random()


class RetryPolicy(NamedTuple):
    max_attempts: int = 3
    backoff_base: float = 0.1
    backoff_max: float = 2.0
    max_retry_after: float = 20.0


class Hedging:
    """Process-wide hedging state: recent times to an answer, and the hedge share.

    A hedge is sent after the observed 95th percentile, so about one first attempt in
    twenty would qualify; the budget keeps hedges under ``max_share`` of requests
    ("The Tail at Scale", Dean and Barroso, 2013)."""

    __slots__ = ("_budget", "_count", "_lock", "_p95", "_samples", "min_samples")

    def __init__(self, budget: RetryBudget, min_samples: int = 20, size: int = 256) -> None:
        self._budget = budget
        self._samples: deque[float] = deque(maxlen=size)
        self._p95: float | None = None
        self._count = 0
        self._lock = threading.Lock()
        self.min_samples = min_samples

    def observe(self, seconds: float) -> None:
        with self._lock:
            self._samples.append(seconds)
            self._count += 1
            # Recomputed at min_samples and every 8 answers after: a sort of 256 floats is cheap,
            # but not on every answer.
            if self._count >= self.min_samples and (self._count - self.min_samples) % 8 == 0:
                ordered = sorted(self._samples)
                self._p95 = ordered[int(len(ordered) * 0.95) - 1]

    def delay(self) -> float | None:
        return self._p95

    def record_request(self) -> None:
        self._budget.record_request()

    def try_spend(self) -> bool:
        return self._budget.try_spend()

    def reset(self) -> None:
        self._samples.clear()
        self._p95 = None
        self._count = 0
        self._lock = threading.Lock()
        self._budget.reset()


class Send(NamedTuple):
    node: Node
    delay: float  # seconds to wait before sending
    why: str  # "" for the first attempt, else why this is a retry (or "hedge")
    attempt: int  # unique within the call: a hedge and a retry may share a node
    key: GatewayKey | None = None  # the pooled key this attempt sends (None: the call's one key)


class Deliver(NamedTuple):
    node: Node
    final: bool  # a failed answer handed back: the caller's SDK must not retry it


class GiveUp(NamedTuple):
    kind: Kind  # of the last failure
    reason: str


class AttemptLimits(NamedTuple):
    """Seconds one attempt may take, from the call's deadline: each adapter cuts its library's own
    timeouts to these (a timeout the app set lower is kept)."""

    every: float | None  # connect, write, pool: what is left of the deadline (None: no deadline)
    read: float | None  # reads: the same, and for a stream not past its first-token timeout


def attempt_limits(left: float | None, first_token: float | None) -> AttemptLimits:
    """``left``: what is left of the call's deadline; ``first_token``: a stream's first-token
    timeout (None when the call is no stream, or it has none)."""
    if first_token is None:
        return AttemptLimits(left, left)
    return AttemptLimits(left, first_token if left is None else min(left, first_token))


class Step(NamedTuple):
    """One attempt and how it ended: "200", "503", "connection failed: ...", ..."""

    node: Node
    outcome: str
    waited: float


class CallPlan:
    __slots__ = (
        "_attempts",
        "_budget",
        "_clock",
        "_deadline",
        "_hedging",
        "_key_switches",
        "_keys",
        "_policy",
        "_pool",
        "_replayable",
        "_rng",
        "_starts",
        "affinity",
        "avoid",
        "follow",
        "model",
        "preferred",
        "refused_keys",
        "steps",
    )

    def __init__(
        self,
        pool: NodePool,
        budget: RetryBudget,
        policy: RetryPolicy,
        *,
        replayable: bool,
        timeout: float | None,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        hedging: Hedging | None = None,
        affinity: int | None = None,
        follow: Node | None = None,
        keys: KeyRing | None = None,
        model: str | None = None,
    ) -> None:
        """``keys``: the process's key pools, when it has several keys (each attempt then takes one
        for ``model``: see ``key_refused``)."""
        self._pool = pool
        self._keys = keys
        self.model = model
        self.refused_keys: tuple[str, ...] = ()  # ids of the keys the gateway refused in this call
        self._key_switches = 0
        self._budget = budget
        self._policy = policy
        self._replayable = replayable
        self._clock = clock
        self._rng = rng or _JITTER
        self._deadline = None if timeout is None else clock() + timeout
        # attempt -> (its node, when it was chosen, its delay), while it is in flight
        self._starts: dict[int, tuple[Node, float, float]] = {}
        self._attempts = 0
        self._hedging = hedging
        self.steps: list[Step] = []
        # Nodes tried only when no other is left: those the gateway asked to wait (set on admission).
        self.avoid: frozenset[Node] = frozenset()
        # Context affinity (core/affinity.py): the call's point on the ring, and the node that
        # produced the Responses answer it continues; they choose the first attempt only.
        self.affinity = affinity
        self.follow = follow
        self.preferred: bool | None = None  # the first attempt went to the key's preferred node
        budget.record_request()
        if hedging is not None:
            hedging.record_request()

    # --- actions ------------------------------------------------------------------------------

    def start(self) -> Send | GiveUp:
        if self.affinity is not None:
            return self._start_affine(self.affinity)
        node = self._pool.choose(exclude=self.avoid) if self.avoid else None
        if node is None:  # no node but held ones (or none held)
            node = self._pool.choose()
        if node is None:
            return GiveUp(Kind.NOT_SENT, "no gateway node is configured")
        return self._send(node, 0.0, "")

    def _start_affine(self, point: int) -> Send | GiveUp:
        node, self.preferred = self._pool.choose_affine(point, self.avoid, self.follow)
        if node is None and self.avoid:  # no node but held ones
            node, self.preferred = self._pool.choose_affine(point, (), self.follow)
        if node is None:
            return GiveUp(Kind.NOT_SENT, "no gateway node is configured")
        return self._send(node, 0.0, "")

    def timeout_left(self) -> float | None:
        """Seconds left in the call's deadline (for the attempt's own timeouts)."""
        return None if self._deadline is None else max(self._deadline - self._clock(), 0.0)

    def failed(self, action: Send, kind: Kind, detail: str) -> Send | GiveUp:
        """The attempt raised, or its stream failed before the first content."""
        self.record_failure(action, kind, detail)
        following = self._next(kind, None)
        return following if isinstance(following, Send) else GiveUp(kind, following)

    def record_failure(self, action: Send, kind: Kind, detail: str) -> None:
        """Account for a failed attempt without deciding what comes next (a hedge that lost)."""
        # A refused request (FINAL) or a 429 says nothing about the node's health.
        self._finish(action, ok=None if kind in (Kind.FINAL, Kind.RATE_LIMITED) else False)
        self.steps.append(Step(action.node, f"{kind.value}: {detail}" if detail else kind.value, action.delay))

    def answered(self, action: Send, status: int, headers: Mapping[str, str], body: bytes | None) -> Send | Deliver:
        """The node answered with ``status`` (``body`` read only for error statuses)."""
        kind = classify_status(status, body)
        self._finish(action, ok=None if kind in (Kind.RATE_LIMITED, Kind.FINAL) else kind is None)
        self.steps.append(Step(action.node, str(status), action.delay))
        node = action.node
        if kind is None:
            return Deliver(node, final=False)
        if kind is Kind.FINAL:
            return Deliver(node, final=True)
        following = self._next(kind, retry_after(headers) if kind is Kind.RATE_LIMITED else None)
        return following if isinstance(following, Send) else Deliver(node, final=True)

    def key_refused(self, action: Send, status: int, reason: str) -> Send | Deliver:
        """The gateway refused the attempt's pooled key (``core.keys.key_refusal``): the key is
        benched, and the call is sent again at once, to the same node, with the next key of its
        pool that is not benched. That costs neither the retry budget nor one of
        ``retry.max_attempts`` (the gateway did no work, and a spent key is no sign of load);
        it is bounded by the pool's size. With no key left, the gateway's answer is handed back
        (``Deliver(final=True)``), and the call explains it (``KeyRing.explain_all_benched``)."""
        assert action.key is not None and self._keys is not None
        self._finish(action, ok=None)  # says nothing about the node
        self.steps.append(Step(action.node, f"{status} key {action.key.masked} refused ({reason})", action.delay))
        self._keys.refused(action.key, reason)
        self.refused_keys = (*self.refused_keys, action.key.id)
        following = self._keys.ready(self.model, self.refused_keys) if self._replayable else None
        if following is None:
            return Deliver(action.node, final=True)
        self._key_switches += 1
        return self._send(action.node, 0.0, "key refused", following)

    @property
    def keys_exhausted(self) -> bool:
        """The gateway refused a pooled key in this call and no other was left to send."""
        return bool(self.refused_keys)

    def release_all(self) -> None:
        """The call ended abnormally (cancelled, or an unexpected error): free every slot it holds."""
        for attempt in list(self._starts):
            self._release(attempt)

    # --- hedging -------------------------------------------------------------------------------

    def hedge_after(self) -> float | None:
        """Seconds after which the first attempt gets a hedge on another node; None: no hedge."""
        if self._hedging is None or not self._replayable or self.steps:
            return None
        return self._hedging.delay()

    def hedge(self, primary: Send) -> Send | None:
        """The hedge attempt, if the hedge share and another node allow one."""
        assert self._hedging is not None
        if not self._hedging.try_spend():
            return None
        node = self._pool.choose(exclude={primary.node, *self.avoid})  # a held node is no use to a hedge either
        return None if node is None else self._send(node, 0.0, "hedge")

    def abandoned(self, action: Send) -> None:
        """An attempt cancelled because the other one answered first: no verdict on its node."""
        self._release(action.attempt)

    def stream_cut(self, node: Node) -> None:
        """A stream broke after its first content: too late to retry, but the node is to blame."""
        self._pool.blame(node)

    # --- reporting ----------------------------------------------------------------------------

    @property
    def retried(self) -> bool:
        return len(self.steps) > 1

    def summary(self) -> str:
        parts = []
        for step in self.steps:
            waited = f" after waiting {step.waited:.2f} s" if step.waited else ""
            parts.append(f"{step.node.label}: {step.outcome}{waited}")
        return "; ".join(parts)

    # --- internals ----------------------------------------------------------------------------

    def _send(self, node: Node, delay: float, why: str, key: GatewayKey | None = None) -> Send:
        self._attempts = attempt = self._attempts + 1
        self._starts[attempt] = (node, self._clock(), delay)
        if key is None and self._keys is not None:
            key = self._keys.choose(self.model, self.refused_keys)
        return Send(node, delay, why, attempt, key)

    def _finish(self, action: Send, ok: bool | None) -> None:
        held = self._starts.pop(action.attempt, None)
        if held is None:
            return  # already released
        node, chosen_at, delay = held
        seconds = max(self._clock() - chosen_at - delay, 0.0)
        self._pool.finished(node, seconds, ok, chosen_at=chosen_at)
        if ok and self._hedging is not None:
            self._hedging.observe(seconds)

    def _release(self, attempt: int) -> None:
        held = self._starts.pop(attempt, None)
        if held is not None:
            self._pool.finished(held[0], None, None, chosen_at=held[1])

    def _next(self, kind: Kind, wait_hint: float | None) -> Send | str:
        """The retry for a failure of ``kind``, or why there is none."""
        policy = self._policy
        if kind is Kind.FINAL:
            return "the request was refused; retrying cannot help"
        if not self._replayable and kind is not Kind.NOT_SENT:
            # A connection that failed before anything was sent never read the body: even a
            # one-shot body (a generator, an upload) is still whole, and goes to the next node.
            return "not retried: the request body is a one-shot stream that cannot be sent again"
        if len(self.steps) - self._key_switches >= policy.max_attempts:
            return f"retry.max_attempts ({policy.max_attempts}) reached"
        tried = {step.node for step in self.steps}
        node = self._pool.choose(exclude=tried.union(self.avoid))
        delay = 0.0
        if node is None:  # every node was tried: the same ones again, after a pause
            if wait_hint is not None and wait_hint > policy.max_retry_after:
                return (
                    f"the gateway asked to wait {wait_hint:.0f} s,"
                    f" over retry.max_retry_after ({policy.max_retry_after:.0f} s)"
                )
            node = self._pool.choose()
            if node is None:
                return "no gateway node is configured"
            delay = (
                wait_hint
                if wait_hint is not None
                else full_jitter(len(self.steps) - 1, policy.backoff_base, policy.backoff_max, self._rng)
            )
        left = self.timeout_left()
        if left is not None and delay >= left:
            self._pool.finished(node, None, None, chosen_at=self._clock())
            return "the call's deadline would pass before the next attempt"
        if kind is not Kind.NOT_SENT and not self._budget.try_spend():
            self._pool.finished(node, None, None, chosen_at=self._clock())
            return "the retry budget is spent (too many recent retries; see retry.budget_ratio)"
        return self._send(node, delay, kind.value)
