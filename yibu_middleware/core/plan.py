"""One call's attempts: which node next, after how long, and when to stop.

Plain code with no I/O, shared by every adapter, sync and async. A driver asks
for an action, performs it and reports what happened:

    action = plan.start()
    while isinstance(action, Send):
        sleep(action.delay); try the node within plan.timeout_left()
        transport error          -> action = plan.failed(node, kind, detail)
        response                 -> action = plan.answered(node, status, headers, body)
        stream, before content   -> action = plan.failed(node, Kind.NODE_FAILED, detail)
    Deliver -> hand the response back (``final``: it is a failure the SDK must not retry)
    GiveUp  -> answer with an error of our own (no node gave a response to hand back)

The rules (each from the shared notes on resilience):
- a connection that failed before anything was sent is retried on another node at once,
  and costs no retry budget (it cost the gateway nothing);
- 5xx, 529 and read timeouts go to another node; only when no untried node is left is
  there a wait, with full jitter;
- 429 goes to another node at once, or waits its ``retry-after`` when none is left; a
  ``retry-after`` longer than ``max_retry_after`` is handed back to the caller;
- 4xx and gateway quota/permission errors are never retried;
- every retry must fit in the call's deadline, ``max_attempts`` and the process-wide
  retry budget; a one-shot request body is never sent twice.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import NamedTuple

from .nodes import Clock, Node, NodePool
from .retry import Kind, RetryBudget, classify_status, full_jitter, retry_after


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

    __slots__ = ("_budget", "_lock", "_p95", "_samples", "min_samples")

    def __init__(self, budget: RetryBudget, min_samples: int = 20, size: int = 256) -> None:
        self._budget = budget
        self._samples: deque[float] = deque(maxlen=size)
        self._p95: float | None = None
        self._lock = threading.Lock()
        self.min_samples = min_samples

    def observe(self, seconds: float) -> None:
        with self._lock:
            self._samples.append(seconds)
            if len(self._samples) >= self.min_samples and len(self._samples) % 8 == 0:
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
        self._lock = threading.Lock()
        self._budget.reset()


class Send(NamedTuple):
    node: Node
    delay: float  # seconds to wait before sending
    why: str  # "" for the first attempt, else why this is a retry


class Deliver(NamedTuple):
    node: Node
    final: bool  # a failed answer handed back: the caller's SDK must not retry it


class GiveUp(NamedTuple):
    kind: Kind  # of the last failure
    reason: str


class Step(NamedTuple):
    """One attempt and how it ended: "200", "503", "connection failed: ...", ..."""

    node: Node
    outcome: str
    waited: float


class CallPlan:
    __slots__ = (
        "_budget",
        "_clock",
        "_deadline",
        "_hedging",
        "_pending_wait",
        "_policy",
        "_pool",
        "_replayable",
        "_rng",
        "_starts",
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
    ) -> None:
        self._pool = pool
        self._budget = budget
        self._policy = policy
        self._replayable = replayable
        self._clock = clock
        self._rng = rng or random.Random()
        now = clock()
        self._deadline = None if timeout is None else now + timeout
        self._starts: dict[Node, float] = {}  # when each attempt in flight was sent
        self._hedging = hedging
        self._pending_wait = 0.0
        self.steps: list[Step] = []
        budget.record_request()
        if hedging is not None:
            hedging.record_request()

    # --- actions ------------------------------------------------------------------------------

    def start(self) -> Send | GiveUp:
        node = self._pool.choose()
        if node is None:
            return GiveUp(Kind.NOT_SENT, "no gateway node is configured")
        return self._send(node, 0.0, "")

    def timeout_left(self) -> float | None:
        """Seconds left in the call's deadline (for the attempt's own timeouts)."""
        return None if self._deadline is None else max(self._deadline - self._clock(), 0.0)

    def failed(self, node: Node, kind: Kind, detail: str) -> Send | GiveUp:
        """The attempt raised, or its stream failed before the first content."""
        self._finish(node, ok=False if kind is not Kind.RATE_LIMITED else None)
        self.steps.append(Step(node, f"{kind.value}: {detail}" if detail else kind.value, self._pending_wait))
        following = self._next(kind, None)
        return following if isinstance(following, Send) else GiveUp(kind, following)

    def answered(self, node: Node, status: int, headers: Mapping[str, str], body: bytes | None) -> Send | Deliver:
        """The node answered with ``status`` (``body`` read only for error statuses)."""
        kind = classify_status(status, body)
        self._finish(node, ok=None if kind is Kind.RATE_LIMITED else kind is not Kind.NODE_FAILED)
        self.steps.append(Step(node, str(status), self._pending_wait))
        if kind is None:
            return Deliver(node, final=False)
        if kind is Kind.FINAL:
            return Deliver(node, final=True)
        following = self._next(kind, retry_after(headers) if kind is Kind.RATE_LIMITED else None)
        return following if isinstance(following, Send) else Deliver(node, final=True)

    # --- hedging -------------------------------------------------------------------------------

    def hedge_after(self) -> float | None:
        """Seconds after which the first attempt gets a hedge on another node; None: no hedge."""
        if self._hedging is None or not self._replayable or self.steps:
            return None
        return self._hedging.delay()

    def hedge(self, primary: Node) -> Send | None:
        """The hedge attempt, if the hedge share and another node allow one."""
        assert self._hedging is not None
        if not self._hedging.try_spend():
            return None
        node = self._pool.choose(exclude=(primary,))
        return None if node is None else self._send(node, 0.0, "hedge")

    def abandoned(self, node: Node) -> None:
        """An attempt cancelled because the other one answered first: no verdict on its node."""
        self._starts.pop(node, None)
        self._pool.finished(node, None, None)

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

    def _send(self, node: Node, delay: float, why: str) -> Send:
        self._pending_wait = delay
        self._starts[node] = self._clock() + delay
        return Send(node, delay, why)

    def _finish(self, node: Node, ok: bool | None) -> None:
        started = self._starts.pop(node, None)
        seconds = None if started is None else self._clock() - started
        self._pool.finished(node, seconds, ok)
        if ok and seconds is not None and self._hedging is not None:
            self._hedging.observe(seconds)

    def _next(self, kind: Kind, wait_hint: float | None) -> Send | str:
        """The retry for a failure of ``kind``, or why there is none."""
        policy = self._policy
        if kind is Kind.FINAL:
            return "the request was refused; retrying cannot help"
        if not self._replayable:
            return "not retried: the request body is a one-shot stream that cannot be sent again"
        if len(self.steps) >= policy.max_attempts:
            return f"retry.max_attempts ({policy.max_attempts}) reached"
        if wait_hint is not None and wait_hint > policy.max_retry_after:
            return (
                f"the gateway asked to wait {wait_hint:.0f} s,"
                f" over retry.max_retry_after ({policy.max_retry_after:.0f} s)"
            )
        tried = {step.node for step in self.steps}
        node = self._pool.choose(exclude=tried)
        delay = 0.0
        if node is None:  # every node was tried: the same ones again, after a pause
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
            self._pool.finished(node, None, None)
            return "the call's deadline would pass before the next attempt"
        if kind is not Kind.NOT_SENT and not self._budget.try_spend():
            self._pool.finished(node, None, None)
            return "the retry budget is spent (too many recent retries; see retry.budget_ratio)"
        return self._send(node, delay, kind.value)
