"""The pool of gateway nodes and the choice of the next one to try.

No I/O: callers tell the pool when an attempt starts and how it ended, and ask it
for a node; the clock and the random source are injected, so every decision can be
replayed in a test.

Choice: power of two choices over peak-EWMA latency (Finagle, Linkerd, tower).
Each node keeps a latency estimate that jumps at once to any slower sample and
decays towards faster ones (and towards zero while idle) with time constant
``tau``; its cost is ``estimate * (in_flight + 1) / weight``. Two healthy nodes are
drawn at random and the cheaper one wins, so a slow node gets less traffic without
every caller herding onto the single fastest one. A failed attempt counts as a
slow sample (``failure_penalty``), so a node that errors is avoided the same way.

Health: passive outlier ejection as in Envoy. ``eject_after`` consecutive failures
take a node out for ``eject_base * times_ejected`` seconds (at most ``eject_max``),
with +-20 % jitter so that many processes do not bring it back in step. After
that, one trial request is let through: success reinstates the node, failure
ejects it again for longer. When every candidate is out, the pool still answers
with one of them ("panic mode"): trying a bad node beats failing every call.

A pinned node (the gateway's "manual node switch") takes all traffic while it is
healthy; the others are only its fallback.

Affinity (``choose_affine``, see ``core/affinity.py``): a call with an affinity key is sent
first to the key's node on the consistent-hashing ring, passed over (for the next node on the
ring) when that node is ejected, slow (its peak-EWMA estimate well over the pool's median) or
at its bounded load; retries and hedges choose as above.

Plain classes with ``__slots__`` rather than dataclasses: these are built at
interpreter start, whose cost is budgeted.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from urllib.parse import urlsplit

from .affinity import LoadView, Remembered, Ring, Spill, place, slow_nodes

Clock = Callable[[], float]

DEFAULT_ESTIMATE = 0.05  # seconds: the start for a node when no node has a sample yet
FAILURE_PENALTY = 1.0  # seconds: a failed attempt weighs like a sample this slow


class Node:
    """One gateway node and what the pool has learnt about it. Identity is the node."""

    __slots__ = (
        "_prefix",
        "base_path",
        "base_url",
        "ejected_until",
        "estimate",
        "failed",
        "failed_at",
        "failures_in_row",
        "host",
        "in_flight",
        "label",
        "pending_since",
        "port",
        "scheme",
        "sent",
        "stamp",
        "times_ejected",
        "trial_in_flight",
        "weight",
    )

    def __init__(self, base_url: str, weight: float = 1.0) -> None:
        parts = urlsplit(base_url)
        self.base_url = base_url
        self.scheme = parts.scheme
        self.host = (parts.hostname or "").lower()
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")  # e.g. "/v1"
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6
        self.label = f"{host}:{self.port}"  # "host:port", in log lines and spans
        self._prefix = f"{self.scheme}://{self.label}{self.base_path}"  # what every path is joined to
        self.weight = weight
        self.reset()

    def reset(self) -> None:
        self.estimate: float | None = None  # seconds; None until the first sample
        self.stamp = 0.0  # clock reading of the last sample
        self.in_flight = 0
        self.pending_since = 0.0  # sum of the start times of the attempts in flight
        self.failures_in_row = 0
        self.failed_at = -math.inf  # clock reading of its last failure
        self.times_ejected = 0
        self.ejected_until = 0.0
        self.trial_in_flight = False
        self.sent = 0  # counters for `yibu doctor`, the demo and the benchmarks
        self.failed = 0

    def url_for(self, gateway_path: str, query: str) -> str:
        url = self._prefix + gateway_path
        return f"{url}?{query}" if query else url

    def __repr__(self) -> str:
        return f"Node({self.base_url!r})"


class NodePool:
    __slots__ = (
        "_clock",
        "_lock",
        "_random",
        "_ring",
        "eject_after",
        "eject_base",
        "eject_max",
        "ejections",
        "load_factor",
        "loads",
        "nodes",
        "pinned",
        "slow_factor",
        "spills",
        "tau",
    )

    def __init__(
        self,
        urls: Sequence[str],
        *,
        weights: Mapping[str, float] | None = None,
        pin: str | None = None,
        tau: float = 10.0,
        eject_after: int = 5,
        eject_base: float = 30.0,
        eject_max: float = 300.0,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        load_factor: float = 1.25,
        slow_factor: float = 3.0,
    ) -> None:
        if not urls:
            raise ValueError("a node pool needs at least one node")
        weights = weights or {}
        self.nodes = [Node(url, weights.get(url, 1.0)) for url in urls]
        self.pinned = next((node for node in self.nodes if node.base_url == pin), None)
        self.tau = tau
        self.eject_after = eject_after
        self.eject_base = eject_base
        self.eject_max = eject_max
        self._clock = clock
        self._random = rng or random.Random()
        self._lock = threading.Lock()
        # Fleet mode reads what this process learnt here, to tell the others: (node, seconds out
        # or 0.0 for "back in", times ejected). None: nobody listens, nothing is kept.
        self.ejections: list[tuple[Node, float, int]] | None = None
        # Affinity: the ring is the nodes' URLs hashed, the same in every process; made on first use
        # (hundreds of hashes: not at interpreter start).
        self._ring: Ring[Node] | None = None
        self.load_factor = load_factor
        self.slow_factor = slow_factor
        # The load the bound counts (the seam for a fleet-wide view); None: this process's in-flight calls.
        self.loads: LoadView[Node] | None = None
        # Conversations placed off their node for load, by key: they stay where they went (see place).
        self.spills: Remembered[int, Spill[Node]] = Remembered(4096)

    @property
    def ring(self) -> Ring[Node]:
        ring = self._ring
        if ring is None:
            nodes = self.nodes
            self._ring = ring = Ring(nodes, [node.base_url for node in nodes], [node.weight for node in nodes])
        return ring

    # --- choosing ---------------------------------------------------------------------------

    def choose(self, exclude: Collection[Node] = ()) -> Node | None:
        """The node for the next attempt, never one in ``exclude``; None when all are.

        The node counts as busy until the caller reports the attempt with ``finished``."""
        with self._lock:
            now = self._clock()
            candidates = [node for node in self.nodes if node not in exclude] if exclude else self.nodes
            if not candidates:
                return None
            healthy = [node for node in candidates if node.ejected_until == 0.0 or self._admits(node, now)]
            pinned = self.pinned
            if pinned is not None and pinned in healthy:
                return self._take(pinned, now)  # otherwise the others are its fallback
            pool = healthy or candidates  # panic mode: every candidate is out
            if len(pool) == 1:
                return self._take(pool[0], now)
            # Two distinct nodes drawn uniformly: two random() calls cost a tenth of sample().
            draw = self._random.random
            count = len(pool)
            i = int(draw() * count)
            j = int(draw() * (count - 1))
            first, second = pool[i], pool[j + 1 if j >= i else j]
            chosen = first if self._cost(first, now) <= self._cost(second, now) else second
            return self._take(chosen, now)

    def choose_affine(
        self, point: int, exclude: Collection[Node] = (), follow: Node | None = None
    ) -> tuple[Node | None, bool]:
        """The node for a call's first attempt by its affinity key's ``point`` (``follow``: the
        node remembered for the Responses turn it continues, preferred to the ring's), and
        whether it is the preferred node. Falls back to ``choose`` when no node on the ring
        qualifies (all ejected, slow or full)."""
        order = self.ring.order(point)
        if follow is not None:
            order = (follow, *(node for node in order if node is not follow))
        preferred = order[0]
        with self._lock:
            now = self._clock()
            pinned = self.pinned
            healthy = [node for node in self.nodes if node.ejected_until == 0.0 or self._admits(node, now)]
            eligible = [node for node in healthy if node not in exclude] if exclude else healthy
            if eligible and (pinned is None or pinned not in eligible):  # a healthy pin overrides affinity
                loads = self.loads(eligible) if self.loads is not None else [node.in_flight for node in eligible]
                # Slow is against the healthy pool, whatever this call excludes. A node with no answer
                # yet counts as fast (DEFAULT_ESTIMATE), not at the pool's mean as in ``choose``: else a
                # slow first node would look like every other and keep its conversations until all
                # nodes had been tried by other calls.
                estimates = {
                    node: DEFAULT_ESTIMATE if node.estimate is None and not node.in_flight else self._decayed(node, now)
                    for node in healthy
                }
                # A node back from ejection for its one trial is not judged by the failures that
                # ejected it: the trial decides (and, if it succeeds, restarts its estimate).
                values = estimates.values()
                slow: Collection[Node] = ()
                if max(values) > self.slow_factor * min(values):  # else none is slow: no sort
                    slow = {node for node in slow_nodes(estimates, self.slow_factor) if not node.ejected_until}
                # A node that failed within the last tau seconds is passed over too, while another
                # has not: else a node failing 30 % of its calls keeps its conversations' first
                # attempts (and spends the retry budget on them) whenever the median of the
                # estimates is itself a failing node's (two bad nodes of three).
                failing = [node for node in healthy if now - node.failed_at < self.tau and not node.ejected_until]
                if failing and len(failing) < len(healthy):
                    slow = {*slow, *failing}
                spilled = self.spills.get(point) if follow is None else None
                chosen, spill = place(
                    order,
                    eligible,
                    dict(zip(eligible, loads, strict=True)),
                    {node: node.weight for node in eligible},
                    slow,
                    self.load_factor,
                    spilled,
                )
                if spill is not spilled:
                    if spill is None:
                        self.spills.forget(point)
                    else:
                        self.spills.put(point, spill)
                if chosen is not None:
                    return self._take(chosen, now), chosen is preferred
        chosen = self.choose(exclude)
        return chosen, chosen is preferred

    def _admits(self, node: Node, now: float) -> bool:
        if node.ejected_until == 0.0:
            return True
        # Ejected: only a single trial request once the ejection time is over.
        return now >= node.ejected_until and not node.trial_in_flight

    def _take(self, node: Node, now: float) -> Node:
        if node.ejected_until and now >= node.ejected_until:
            node.trial_in_flight = True
        node.in_flight += 1
        node.pending_since += now
        node.sent += 1
        return node

    def _cost(self, node: Node, now: float) -> float:
        return self._decayed(node, now) * (node.in_flight + 1) / node.weight

    def _decayed(self, node: Node, now: float) -> float:
        if node.estimate is None:
            known = [n.estimate for n in self.nodes if n.estimate is not None]
            # A new node starts at the pool's mean: neither flooded nor starved.
            estimate = sum(known) / len(known) if known else DEFAULT_ESTIMATE
        else:
            estimate = node.estimate * math.exp(-max(now - node.stamp, 0.0) / self.tau)
        if node.in_flight:
            # Attempts still waiting are evidence too: a node whose calls have been out for
            # 150 ms is no faster than that, sample or not (this is what keeps a slow new
            # node from taking a share of traffic before its first answer comes back).
            estimate = max(estimate, now - node.pending_since / node.in_flight)
        return estimate

    # --- learning ---------------------------------------------------------------------------

    def finished(self, node: Node, seconds: float | None, ok: bool | None, chosen_at: float | None = None) -> None:
        """An attempt on ``node`` ended after ``seconds``; ``chosen_at``: when ``choose`` returned it.

        ``ok``: True for an answer (any status the node is not to blame for), False for a
        failure of the node (refused, reset, timeout, 5xx), None for neither (a 429, or an
        attempt abandoned by the caller): it only frees the in-flight slot."""
        with self._lock:
            now = self._clock()
            node.in_flight = max(node.in_flight - 1, 0)
            started = chosen_at if chosen_at is not None else now - (seconds or 0.0)
            node.pending_since = node.pending_since - started if node.in_flight else 0.0
            was_trial = node.trial_in_flight
            node.trial_in_flight = False
            if ok is None:
                return
            sample = seconds if ok and seconds is not None else max(FAILURE_PENALTY, seconds or 0.0)
            self._observe(node, sample, now)
            if ok:
                if was_trial:  # back from ejection: the failures that ejected it are not its latency
                    node.estimate = sample
                    node.failed_at = -math.inf  # ...nor a recent failure: its trial decided
                node.failures_in_row = 0
                if node.ejected_until and self.ejections is not None:
                    self.ejections.append((node, 0.0, node.times_ejected))  # back in: tell the fleet
                node.ejected_until = 0.0
                return
            node.failed += 1
            node.failed_at = now
            node.failures_in_row += 1
            if was_trial or node.failures_in_row >= self.eject_after:
                self._eject(node, now)

    def _observe(self, node: Node, sample: float, now: float) -> None:
        if node.estimate is None:
            node.estimate = sample
        else:
            decay = math.exp(-max(now - node.stamp, 0.0) / self.tau)
            blended = node.estimate * decay + sample * (1.0 - decay)
            node.estimate = max(sample, blended)  # the "peak": slower samples count at once
        node.stamp = now

    def _eject(self, node: Node, now: float) -> None:
        node.times_ejected += 1
        span = min(self.eject_base * node.times_ejected, self.eject_max)
        span *= self._random.uniform(0.8, 1.2)
        node.ejected_until = now + span
        node.failures_in_row = 0
        if self.ejections is not None:
            self.ejections.append((node, span, node.times_ejected))

    def blame(self, node: Node) -> None:
        """A failure found after the attempt ended (a stream cut mid-way)."""
        with self._lock:
            now = self._clock()
            self._observe(node, FAILURE_PENALTY, now)
            node.failed += 1
            node.failed_at = now
            node.failures_in_row += 1
            if node.failures_in_row >= self.eject_after:
                self._eject(node, now)

    def reinstate(self, node: Node) -> None:
        """An active health check saw the node answer: let it back at once, with no latency
        estimate (as a new node): the failures that ejected it are not its latency."""
        with self._lock:
            if node.ejected_until and self.ejections is not None:
                self.ejections.append((node, 0.0, node.times_ejected))
            node.estimate = None
            node.failed_at = -math.inf
            node.ejected_until = 0.0
            node.failures_in_row = 0

    # --- what other processes learnt (fleet mode) -----------------------------------------------

    def eject_for(self, node: Node, seconds: float, times: int) -> None:
        """Another process ejected ``node`` for ``seconds`` more: out here too (not told back)."""
        with self._lock:
            node.ejected_until = self._clock() + max(seconds, 0.0)
            node.times_ejected = max(node.times_ejected, times)
            node.failures_in_row = 0

    def let_back(self, node: Node) -> None:
        """Another process's trial found ``node`` well again (not told back); as ``reinstate``, with
        no latency estimate of its own (the fleet's, or its first answer, gives it one)."""
        with self._lock:
            node.estimate = None
            node.failed_at = -math.inf
            node.ejected_until = 0.0
            node.failures_in_row = 0

    def seed(self, node: Node, estimate: float) -> None:
        """The fleet's latency estimate for a node this process has no sample of yet."""
        with self._lock:
            if node.estimate is None:
                node.estimate = estimate
                node.stamp = self._clock()

    def estimates(self) -> list[tuple[Node, float]]:
        """This process's latency estimates as last learnt (not decayed while idle: an idle process
        has no news of a node, which does not make it faster); nodes with a sample only."""
        with self._lock:
            return [(node, node.estimate) for node in self.nodes if node.estimate is not None]

    def ejected(self) -> list[Node]:
        now = self._clock()
        return [node for node in self.nodes if node.ejected_until and now < node.ejected_until]

    def reset(self) -> None:
        """Forget per-process state; called in a forked child."""
        self._lock = threading.Lock()
        self._random = random.Random()
        self.spills.clear()
        for node in self.nodes:
            node.reset()
