"""The syncer: one background thread per process that keeps the fleet's shared knowledge.

Nothing on a call's path waits for Redis to learn what the fleet knows: this thread copies it
into the process's own objects (the node pool, the limiter, the retry budget), and tells the
fleet what this process learnt, every ``TICK`` (and at once when a call gives a lease back):

- heartbeats: every process is in a sorted set by its last tick; the live ones are counted, and
  that count is the share of each limit a process takes while Redis is away;
- node ejections and reinstatements, through a stream every process reads (and a hash that a new
  process reads first). A node ejected elsewhere is out here within a tick or two (well under the
  1 s the issue asks). Its ejection ends here one second after it ends where it was found, so
  that process's single trial comes first and its verdict (in again, or out for longer) reaches
  the others before they would send trials of their own;
- the gateway's 429 holds (``retry-after``), through the same stream: one worker's 429 holds
  every worker's calls to that node for what is left of it. (The ``x-ratelimit-remaining-*``
  budgets are not passed on: every process reads them from its own answers, in which the gateway
  counts every process's calls, and paces on its share: ``FleetLimiter.observe``);
- calls in flight per node and process, every tick: context affinity's load bound counts the
  fleet's (``NodePool.loads``), so one process does not pile conversations on a node that the
  others already keep busy;
- latency estimates (peak-EWMA), per node and process; a node this process has no sample of yet
  starts from the fleet's mean, so a new process does not send its first calls to a slow node;
- the retry budget: each process's requests and retries in its window; the budget is the fleet's;
- issue 18's key bench and spend counters (``shared.py``): a key benched anywhere is benched
  everywhere; budgets count the fleet's spend;
- leases: the given-back ones are released, the live ones renewed.

While Redis does not answer, it asks once a second whether it is back (``Fleet.ping``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..core.limits import NO_HINT_HOLD
from ..core.nodes import Node, NodePool
from ..core.retry import RetryBudget
from ..core.spend import PERIODS, period_start, utc_now
from .shared import SPEND_KEEP_SECONDS

if TYPE_CHECKING:
    from .limiter import FleetLimiter
    from .shared import FleetBench, FleetSpend
    from .store import Fleet

log = logging.getLogger("yibu_middleware")

TICK = 0.2  # seconds between exchanges: ejections reach every process within about two
SLOW_EVERY = 5  # ticks between the slower exchanges: heartbeats, latency, retry budget
LIVE_MS = 3000  # a process whose heartbeat is older than this is not counted as live
LATENCY_FRESH_MS = 60000  # latency estimates older than this are not the fleet's view any more
TRIAL_LEAD = 1.0  # seconds the finder of an ejection tries the node before the others do
STREAM_LENGTH = 10000  # events kept in the stream (about; trimmed by Redis)


class Syncer:
    """What one process tells the fleet and learns from it (run by ``start`` in a daemon thread)."""

    def __init__(
        self,
        fleet: Fleet,
        pool: NodePool,
        budget: RetryBudget,
        limiter: FleetLimiter | None,
        max_hold: float,
        alive: Callable[[Syncer], bool],
        bench: FleetBench | None = None,
        spend: FleetSpend | None = None,
    ) -> None:
        self.fleet = fleet
        self.pool = pool
        self.budget = budget
        self.limiter = limiter
        self.max_hold = max_hold
        self._alive = alive  # False once the runtime that made this syncer is replaced
        self.bench = bench
        self.spend = spend
        self.wake = threading.Event()
        self.holds: list[tuple[str | None, Node | None, float]] = []  # 429 holds to tell: model, node, seconds
        self._last_event = "0-0"
        self._ticks = 0
        self._renewed = 0.0
        self._nodes_by_label = {node.label: node for node in pool.nodes}
        self._ready = threading.Event()  # set after the first exchange (or the first failure)
        pool.ejections = []
        self._elsewhere: dict[str, int] = {}  # node label -> calls in flight in the other processes
        pool.loads = self.fleet_loads
        self._offset_ms = 0  # the server's clock minus this process's monotonic clock, in ms
        if limiter is not None:
            limiter._wake_syncer = self.wake
            limiter.tell_hold = self.hold

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="yibu-fleet-sync", daemon=True)
        thread.start()
        return thread

    def wait_ready(self, timeout: float) -> None:
        """The first call of a process waits (at most ``timeout``) for the fleet's view."""
        self._ready.wait(timeout)

    # --- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        last_ping = next_exchange = 0.0
        while self._alive(self):
            now = time.monotonic()
            try:
                if not self.fleet.up:
                    if now - last_ping >= 1.0:
                        last_ping = now
                        if self.fleet.ping():
                            self.fleet.came_back()
                else:
                    if self.limiter is not None:
                        self.limiter.give_back()  # woken by a call's end: its slot goes back now
                    if now >= next_exchange:
                        next_exchange = now + TICK
                        self.exchange()
            except Exception as exc:  # a failure of Redis mid-exchange: the fleet is down
                self.fleet.went_down(exc)
            self._ready.set()
            self.wake.wait(max(next_exchange - time.monotonic(), 0.001) if self.fleet.up else TICK)
            self.wake.clear()

    def exchange(self) -> None:
        """One exchange with Redis: tell what is new here, learn what is new there."""
        layout = self.fleet.layout
        client = self.fleet.client()
        first = self._ticks == 0
        slow = self._ticks % SLOW_EVERY == 0
        self._ticks += 1
        told = self._take_news()
        server_ms = self.fleet.server_ms()
        self._offset_ms = server_ms - int(time.monotonic() * 1000)
        pipe = client.pipeline(transaction=False)
        for fields in told:
            pipe.xadd(layout.events, fields, maxlen=STREAM_LENGTH, approximate=True)
            self._mirror(pipe, fields)
        me = self.fleet.process_id
        spent = self._spend(pipe, server_ms)
        for node in self.pool.nodes:
            pipe.hset(layout.load, f"{node.label}|{me}", f"{node.in_flight}|{server_ms}")
        pipe.hgetall(layout.load)
        if first:
            pipe.hgetall(layout.bench)
            pipe.hgetall(layout.ejections)
            pipe.xrevrange(layout.events, count=1)
        else:
            pipe.xread({layout.events: self._last_event}, count=500)
        answers = pipe.execute()
        self._learn_loads(answers[-4 if first else -2], server_ms, client)
        if spent is not None:
            self._learn_spend(spent, answers)
        if first:
            self._apply_bench_table(answers[-3], server_ms)
            self._apply_ejection_table(answers[-2], server_ms)
            latest = answers[-1]
            self._last_event = latest[0][0] if latest else "0-0"
        else:
            for _stream, entries in answers[-1] or []:
                for entry_id, fields in entries:
                    self._last_event = entry_id
                    self._apply(fields, server_ms - int(entry_id.split("-")[0]))
        if slow or first:
            self._slow_exchange(client, server_ms)
        now = time.monotonic()
        if self.limiter is not None and now - self._renewed >= self.fleet.lease_ms / 3000:
            self._renewed = now  # three renewals per lease: one lost to a slow answer does no harm
            self.limiter.renew()

    def _slow_exchange(self, client: Any, server_ms: int) -> None:
        layout = self.fleet.layout
        me = self.fleet.process_id
        requests, retries = self.budget.counts()
        pipe = client.pipeline(transaction=False)
        pipe.zadd(layout.processes, {me: server_ms})
        pipe.zremrangebyscore(layout.processes, "-inf", server_ms - 10 * LIVE_MS)
        pipe.zcount(layout.processes, server_ms - LIVE_MS, "+inf")
        for node, estimate in self.pool.estimates():
            pipe.hset(layout.latency, f"{node.label}|{me}", f"{estimate!r}|{server_ms}")
        pipe.hgetall(layout.latency)
        pipe.hset(layout.budget, me, f"{requests}|{retries}|{server_ms}")
        pipe.hgetall(layout.budget)
        answers = pipe.execute()
        self.fleet.live_processes = max(int(answers[2]), 1)
        self._learn_latency(answers[-3], server_ms, client)
        self._learn_budget(answers[-1], server_ms, client)

    # --- telling ---------------------------------------------------------------------------------

    def _take_news(self) -> list[dict[str, str]]:
        me = self.fleet.process_id
        news: list[dict[str, str]] = []
        ejections = self.pool.ejections
        if ejections:
            self.pool.ejections = []
            for node, seconds, times in ejections:
                kind = "eject" if seconds else "back"
                news.append(
                    {"kind": kind, "node": node.label, "ms": str(int(seconds * 1000)), "times": str(times), "from": me}
                )
        if self.bench is not None:
            for key_id, seconds, reason in self.bench.take_news():
                ms = str(int(seconds * 1000))
                news.append({"kind": "bench", "key": key_id, "ms": ms, "reason": reason[:200], "from": me})
        holds, self.holds = self.holds, []
        for model, held, seconds in holds:
            news.append(
                {
                    "kind": "hold",
                    "model": model or "",
                    "node": "" if held is None else held.label,
                    "ms": str(int(seconds * 1000)),
                    "from": me,
                }
            )
        return news

    def _mirror(self, pipe: Any, fields: dict[str, str]) -> None:
        """The ejections in force, in a hash, for processes that start later (they skip the stream)."""
        layout = self.fleet.layout
        if fields["kind"] == "eject":
            at = int(time.monotonic() * 1000) + self._offset_ms  # on the server's clock, as last read
            pipe.hset(layout.ejections, fields["node"], f"{fields['ms']}|{fields['times']}|{at}")
        elif fields["kind"] == "back":
            pipe.hdel(layout.ejections, fields["node"])
        elif fields["kind"] == "bench":
            at = int(time.monotonic() * 1000) + self._offset_ms
            pipe.hset(layout.bench, fields["key"], f"{fields['ms']}|{fields['reason']}|{at}")

    def hold(self, model: str | None, node: Node | None, headers_seconds: float | None) -> None:
        """A 429 seen here: every process holds that model's calls to that node for as long."""
        seconds = min(NO_HINT_HOLD if headers_seconds is None else headers_seconds, self.max_hold)
        if seconds > 0:
            self.holds.append((model, node, seconds))
            self.wake.set()

    # --- learning --------------------------------------------------------------------------------

    def _apply(self, fields: dict[str, str], age_ms: int) -> None:
        if fields.get("from") == self.fleet.process_id:
            return
        kind = fields.get("kind")
        node = self._nodes_by_label.get(fields.get("node", ""))
        left = (int(fields.get("ms", "0")) - max(age_ms, 0)) / 1000.0
        if kind == "eject" and node is not None and left > 0:
            self.pool.eject_for(node, left + TRIAL_LEAD, int(fields.get("times", "1")))
        elif kind == "back" and node is not None:
            self.pool.let_back(node)
        elif kind == "bench" and self.bench is not None and left > 0:
            self.bench.learn(fields.get("key", ""), left, fields.get("reason", ""))
        elif kind == "hold" and self.limiter is not None and left > 0:
            model = fields.get("model") or None
            self.limiter.local.observe(model, 429, {"retry-after-ms": str(int(left * 1000))}, node)

    def _apply_bench_table(self, table: dict[str, str], server_ms: int) -> None:
        if self.bench is None:
            return
        for key_id, value in (table or {}).items():
            try:
                ms, rest = value.split("|", 1)
                reason, at = rest.rsplit("|", 1)
                left = (int(ms) - (server_ms - int(at))) / 1000.0
            except ValueError:
                continue
            if left > 0:
                self.bench.learn(key_id, left, reason)

    def _spend(self, pipe: Any, server_ms: int) -> tuple[list[tuple[str, datetime]], int] | None:
        """This process's new spend into the fleet's counters; then the periods to read back, and
        where in the pipeline's answers their reads are."""
        if self.spend is None:
            return None
        layout = self.fleet.layout
        for model, cost, at in self.spend.take():
            for period in PERIODS:
                key = layout.spend(period, period_start(period, at).isoformat())
                pipe.hincrbyfloat(key, model, str(cost))
                pipe.expire(key, SPEND_KEEP_SECONDS[period])
        now = utc_now()
        periods = [(period, period_start(period, now)) for period in PERIODS]
        first_read = len(pipe)
        for period, start in periods:
            pipe.hgetall(layout.spend(period, start.isoformat()))
        return periods, first_read

    def _learn_spend(self, reads: tuple[list[tuple[str, datetime]], int], answers: list[Any]) -> None:
        assert self.spend is not None
        periods, first_read = reads
        totals = {
            key: {model: Decimal(value) for model, value in (answers[first_read + i] or {}).items()}
            for i, key in enumerate(periods)
        }
        self.spend.installed(totals)

    def _apply_ejection_table(self, table: dict[str, str], server_ms: int) -> None:
        # "ms|times|at": out for ms from at (the server's clock as the finder last read it).
        for label, value in (table or {}).items():
            node = self._nodes_by_label.get(label)
            try:
                ms, times, at = value.split("|")
                left = (int(ms) - (server_ms - int(at))) / 1000.0
            except ValueError:
                continue
            if node is not None and left > 0:
                self.pool.eject_for(node, left + TRIAL_LEAD, int(times))

    def fleet_loads(self, nodes: Sequence[Node]) -> list[float]:
        """The calls in flight on each node in the whole fleet: here now, elsewhere as last seen."""
        elsewhere = self._elsewhere
        return [node.in_flight + elsewhere.get(node.label, 0) for node in nodes]

    def _learn_loads(self, table: dict[str, str], server_ms: int, client: Any) -> None:
        elsewhere: dict[str, int] = {}
        # A process that stopped telling (it died): its calls are gone with it.
        for label, count in self._others(table, server_ms, LIVE_MS, LIVE_MS, self.fleet.layout.load, client):
            elsewhere[label] = elsewhere.get(label, 0) + int(count)
        self._elsewhere = elsewhere

    def _learn_latency(self, table: dict[str, str], server_ms: int, client: Any) -> None:
        views: dict[str, list[float]] = {}
        fresh, kept = LATENCY_FRESH_MS, 5 * LATENCY_FRESH_MS
        for label, estimate in self._others(table, server_ms, fresh, kept, self.fleet.layout.latency, client):
            views.setdefault(label, []).append(float(estimate))
        for label, estimates in views.items():
            node = self._nodes_by_label.get(label)
            if node is not None:
                self.pool.seed(node, sum(estimates) / len(estimates))

    def _others(
        self, table: dict[str, str], server_ms: int, fresh_ms: int, kept_ms: int, key: str, client: Any
    ) -> list[tuple[str, str]]:
        """(node label, value) of the other processes' entries ("node|process" -> "value|stamp")
        fresher than ``fresh_ms``; entries older than ``kept_ms`` (or unreadable) are deleted."""
        me = self.fleet.process_id
        found = []
        stale = []
        for field, entry in (table or {}).items():
            label, _, process = field.partition("|")
            try:
                value, stamp = entry.split("|")
                age = server_ms - int(stamp)
            except ValueError:
                stale.append(field)
                continue
            if age > kept_ms:
                stale.append(field)
            elif age <= fresh_ms and process != me:
                found.append((label, value))
        if stale:
            client.hdel(key, *stale)
        return found

    def _learn_budget(self, table: dict[str, str], server_ms: int, client: Any) -> None:
        me = self.fleet.process_id
        requests = retries = 0
        stale = []
        for process, value in (table or {}).items():
            try:
                req, ret, stamp = value.split("|")
                age = server_ms - int(stamp)
            except ValueError:
                stale.append(process)
                continue
            if age > 60000:
                stale.append(process)
            elif process != me and age <= 2 * SLOW_EVERY * TICK * 1000:
                requests += int(req)
                retries += int(ret)
        self.budget.others = (requests, retries)
        if stale:
            client.hdel(self.fleet.layout.budget, *stale)
