"""Client-side limits: which waiting call may go to the gateway now, and when to look again.

Pure decisions with an injected clock; nothing here waits or performs I/O. ``limiter.py``
does the waiting, for sync and async callers alike, around one :class:`Admission`:

    ticket = admission.enqueue(model, estimated_tokens)
    admitted, changed = admission.pump()     # after every event: enqueue, release, cancel, a wake-up
    ticket.admitted                          -> go; later admission.release(ticket, actual_tokens)
    else ticket.recheck_at                   -> a time worth looking again, or None: wait to be woken
    wake every ticket in `admitted` and `changed` (their state moved on)

Limits live in scopes: the process's own (``limits.*``) and each configured model's
(``limits.per_model["m"].*``). A call is held by every limit of both. Each scope has:

- ``max_concurrent``: slots taken at admission, given back at release (a request pool);
- ``requests_per_second``: evenly spaced admissions (GCRA, the generic cell rate algorithm).
  Spacing, not a bucket that starts full, so that a measured rate is the limit from the first
  call, not the limit plus a burst. A call may go up to half an interval before its slot:
  so a waiter woken a little late (thread or event-loop latency) keeps the schedule instead
  of pushing every later call back, and 1,000 calls at 50/s take 20 s, not 20 s plus 1,000
  wake-up latencies. The price: at most one call more than the limit in any one second;
- ``tokens_per_minute``: a sliding 60 s window. A call reserves its estimate from admission
  until it ends; then the tokens it really used (or the estimate, when unknown) count for
  the next 60 s from its end, as the gateway counts usage when a call is billed. A call
  whose estimate alone exceeds the limit waits for an empty window, then goes alone;
- holds learnt from the gateway's answers (``observe``): ``retry-after`` on a 429, and
  the ``x-ratelimit-remaining-*`` / ``anthropic-ratelimit-*-remaining`` budgets until their
  reset, refilled linearly when the limit is given. These apply to the model of the
  answer (OpenAI's limits are per model; one model's 429 need not stop the others); an
  answer with no model holds the whole process. And they apply to the node that sent them:
  a node's 429 says nothing certain about the others, so a call is held only while every
  node is held for it, and is admitted with the nodes still held (``Ticket.avoid``), which
  its plan tries last. A budget counts the calls admitted against every node not held
  (right when the nodes share the key's limit, as a relay's usually do; cautious when not).
  Every hold lasts at most ``max_hold`` seconds (``limits.max_hold_seconds``), whatever the
  node asked: a node cannot stop the app for days with one header.

Fairness: one FIFO queue for every caller. A ticket is admitted when every limit it is
subject to has room *and* no earlier ticket is still waiting in one of its scopes. A waiting
ticket blocks later ones only in the scopes it lacks room in, not in every scope it shares
with them: a call held by model A's own limit does not hold a call to model B when the
global limits have room, even though both count against them. This avoids head-of-line
blocking across models without starving anyone: once model A has room, a call then held
by a global limit blocks every later call, so it is next. Within a scope the order is
strict: a small call never passes a large one waiting for tokens, which would starve it.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from datetime import datetime
from typing import NamedTuple

from .nodes import Clock
from .retry import retry_after, wire_number, wire_seconds

CONCURRENT = "max_concurrent"
RATE = "requests_per_second"
TOKENS = "tokens_per_minute"
GATEWAY = "gateway"  # a hold learnt from the gateway's headers

WINDOW = 60.0  # seconds: the tokens-per-minute window
RATE_SLACK = 0.5  # share of a requests_per_second interval a late admission may absorb
NO_HINT_HOLD = 1.0  # seconds: a 429 with no hint at all (new-api sends none) holds this long
MAX_LEARNT_SCOPES = 256  # models whose gateway holds are tracked without a configured limit
MAX_HOLD = 60.0  # seconds: the longest hold learnt from one answer (limits.max_hold_seconds)
MAX_HINTED_NODES = 64  # nodes whose hints one scope keeps (the configured ones, and None for all)


class Quota(NamedTuple):
    """The configured limits of one scope; None: not limited."""

    max_concurrent: int | None = None
    requests_per_second: float | None = None
    tokens_per_minute: int | None = None


class _Budget:
    """What the gateway says is left of one of its limits until a reset, refilled linearly."""

    __slots__ = ("left", "limit", "observed", "reset", "used")

    def __init__(self, left: float, limit: float | None, observed: float, reset: float) -> None:
        self.left = left
        self.limit = limit
        self.observed = observed
        self.reset = reset
        self.used = 0.0  # admitted since the observation

    def ready(self, need: float, now: float) -> float | None:
        """None: ``need`` fits now; else the time it will."""
        if now >= self.reset:
            return None
        available = self.left - self.used
        if self.limit is not None and self.limit > self.left:
            available += (self.limit - self.left) * (now - self.observed) / (self.reset - self.observed)
        if need <= available:
            return None
        if self.limit is None or self.limit <= self.left:
            return self.reset
        rate = (self.limit - self.left) / (self.reset - self.observed)
        return min(self.observed + (need + self.used - self.left) / rate, self.reset)


class _Hints:
    """What one node's answers said about one scope: a hold (a 429's retry-after), and budgets."""

    __slots__ = ("hold_until", "requests", "tokens")

    def __init__(self) -> None:
        self.hold_until = -math.inf
        self.requests: _Budget | None = None
        self.tokens: _Budget | None = None

    def ready(self, need: int, now: float) -> float | None:
        """None: a call of ``need`` tokens may go to the node now; else the time it may."""
        hold = self.hold_until
        for budget, wanted in ((self.requests, 1), (self.tokens, need)):
            if budget is not None and wanted:
                ready = budget.ready(wanted, now)
                if ready is not None:
                    hold = max(hold, ready)
        return hold if now < hold else None

    def spent(self, now: float) -> bool:
        """Nothing here holds any call any more."""
        return now >= self.hold_until and all(b is None or now >= b.reset for b in (self.requests, self.tokens))


class Scope:
    """One scope's limits and their live state: the process's, or one model's."""

    __slots__ = (
        "hints",
        "in_flight",
        "interval",
        "max_concurrent",
        "model",
        "requests",
        "reserved",
        "setting",
        "spent",
        "spent_total",
        "tat",
        "tpm",
    )

    def __init__(self, model: str | None, quota: Quota) -> None:
        self.model = model
        # The setting that configures this scope, for messages: limits / limits.per_model["m"].
        self.setting = "limits" if model is None else f'limits.per_model["{model}"]'
        self.set_quota(quota)
        self.reset()

    def set_quota(self, quota: Quota) -> None:
        """New limits for this scope; what is in flight or in the window stays counted."""
        self.max_concurrent = quota.max_concurrent
        self.interval = 1.0 / quota.requests_per_second if quota.requests_per_second else None
        self.tpm = quota.tokens_per_minute

    def reset(self) -> None:
        self.in_flight = 0
        self.tat = -math.inf  # GCRA: the theoretical time of the next admission
        self.reserved = 0  # tokens of calls in flight (their estimates)
        self.spent: deque[tuple[float, int]] = deque()  # (end time, tokens) of calls that ended
        self.spent_total = 0
        # What the gateway's answers said, per node that sent them (None: an answer of no known node).
        self.hints: dict[Hashable, _Hints] = {}

    def lacks(self, need: int, now: float) -> list[tuple[str, float | None]]:
        """The limits without room for a call of ``need`` tokens: (limit, time it will have room or None)."""
        out: list[tuple[str, float | None]] = []
        if self.max_concurrent is not None and self.in_flight >= self.max_concurrent:
            out.append((CONCURRENT, None))  # room comes with a release, not with time
        if self.interval is not None and now < self.tat - self.interval * RATE_SLACK:
            out.append((RATE, self.tat - self.interval * RATE_SLACK))
        if self.tpm is not None:
            ready = self._tokens_ready(min(need, self.tpm), now)
            if ready is not None:
                out.append((TOKENS, None if ready == math.inf else ready))
        return out  # the gateway's holds are per node: Admission._gateway weighs them across scopes

    def _tokens_ready(self, need: int, now: float) -> float | None:
        """None if ``need`` tokens fit in the window now; else when they will (inf: only after a release)."""
        assert self.tpm is not None
        spent = self.spent
        while spent and spent[0][0] <= now - WINDOW:
            self.spent_total -= spent.popleft()[1]
        over = self.reserved + self.spent_total + need - self.tpm
        if over <= 0:
            return None
        for ended, tokens in spent:
            over -= tokens
            if over <= 0:
                return ended + WINDOW
        return math.inf  # calls in flight hold too much: only a release makes room

    def admit(self, ticket: Ticket, now: float) -> None:
        self.in_flight += 1
        if self.interval is not None:
            # Admitted up to the slack before its slot, so a wake-up late by as much still
            # finds tat ahead of it and keeps the schedule (see the module notes).
            self.tat = max(self.tat, now) + self.interval
        if self.tpm is not None:
            self.reserved += min(ticket.tokens, self.tpm)
        for node, hints in self.hints.items():
            if node in ticket.avoid:
                continue  # the plan goes there last: not counted against that node's budget
            if hints.requests is not None:
                hints.requests.used += 1
            if hints.tokens is not None:
                hints.tokens.used += ticket.tokens

    def release(self, ticket: Ticket, actual: int, now: float) -> None:
        self.in_flight -= 1
        if self.tpm is not None:
            self.reserved -= min(ticket.tokens, self.tpm)
            if actual > 0:
                self.spent.append((now, actual))
                self.spent_total += actual

    def describe(self, limit: str) -> str:
        """The limit and its setting, for messages: 'limits.per_model["gpt-4o"].max_concurrent (2)'."""
        if limit == GATEWAY:
            where = "" if self.model is None else f" for model {self.model!r}"
            return (
                f"the gateway's own rate limit{where} on every node (its retry-after / x-ratelimit-* headers,"
                " each held at most limits.max_hold_seconds; followed because limits.follow_gateway_headers is on)"
            )
        value: float | None = {CONCURRENT: self.max_concurrent, TOKENS: self.tpm}.get(limit)
        if limit == RATE and self.interval:
            value = round(1.0 / self.interval, 6)
        return f"{self.setting}.{limit} ({value:g})" if value is not None else f"{self.setting}.{limit}"


class Ticket:
    """One call's place in the queue, and what the last look at it found."""

    __slots__ = (
        "admitted",
        "avoid",
        "enqueued_at",
        "generation",
        "held_by",
        "model",
        "not_before",
        "not_before_by",
        "recheck_at",
        "released",
        "scopes",
        "seq",
        "tokens",
        "wake",
    )

    def __init__(
        self, seq: int, model: str | None, tokens: int, scopes: tuple[Scope, ...], now: float, gen: int
    ) -> None:
        self.seq = seq
        self.model = model
        self.tokens = tokens
        self.scopes = scopes
        self.enqueued_at = now
        self.generation = gen
        self.admitted = False
        self.released = False
        # Set by pump() while waiting: when to look again (None: when woken), the earliest time it
        # can possibly go (rate spacing and gateway holds only grow), and the limit holding it.
        self.recheck_at: float | None = None
        self.not_before = -math.inf
        self.not_before_by: tuple[Scope, str] | None = None
        self.held_by: tuple[Scope, str] | None = None
        self.wake: Callable[[], None] | None = None  # set by the waiting layer
        # Once admitted: the nodes the gateway still holds for this call (tried last by its plan).
        self.avoid: frozenset[Hashable] = frozenset()

    def holder(self, held_by: tuple[Scope, str] | None = None) -> str:
        """The limit that held this ticket last (or ``held_by``), with its setting, for messages."""
        held_by = held_by or self.held_by
        if held_by is None:
            return "the queue"
        scope, limit = held_by
        return scope.describe(limit)


class Admission:
    """The queue and every scope of one process. Not thread-safe: the waiting layer locks."""

    __slots__ = (
        "_clock",
        "_follow",
        "_learnt",
        "_max_hold",
        "_models",
        "_nodes",
        "_queue",
        "_seq",
        "_wall",
        "generation",
        "root",
    )

    def __init__(
        self,
        quota: Quota,
        per_model: Mapping[str, Quota] | None = None,
        *,
        follow_gateway_headers: bool = True,
        nodes: Sequence[Hashable] = (),
        max_hold: float = MAX_HOLD,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
    ) -> None:
        """``nodes``: the gateway's nodes, as ``observe`` names them (none given: one gateway);
        ``max_hold``: the longest a hold learnt from one answer may last, in seconds."""
        self._clock = clock
        self._wall = wall  # only to read the dates in headers
        self._follow = follow_gateway_headers
        self._nodes: tuple[Hashable, ...] = tuple(nodes) or (None,)
        self._max_hold = max_hold
        self.root = Scope(None, quota)
        self._models = {model: Scope(model, limits) for model, limits in (per_model or {}).items()}
        self._learnt: dict[str, Scope] = {}  # scopes made up to hold the gateway's per-model hints
        self._queue: dict[int, Ticket] = {}  # insertion order is arrival order
        self._seq = 0
        self.generation = 0

    # --- the queue ----------------------------------------------------------------------------

    def enqueue(self, model: str | None, tokens: int = 0) -> Ticket:
        self._seq += 1
        ticket = Ticket(self._seq, model, max(int(tokens), 0), self._scopes(model), self._clock(), self.generation)
        self._queue[ticket.seq] = ticket
        return ticket

    def waiting(self) -> int:
        return len(self._queue)

    def pump(self) -> tuple[list[Ticket], list[Ticket]]:
        """Admit every ticket that may go now, in order; return (admitted, tickets whose recheck moved)."""
        if not self._queue:
            return [], []
        now = self._clock()
        root = self.root
        # Scopes an earlier waiting ticket lacks room in, with the limit: later tickets in them wait.
        blocked: dict[Scope, str] = {}
        admitted: list[Ticket] = []
        changed: list[Ticket] = []
        for ticket in self._queue.values():
            behind: tuple[Scope, str] | None = None
            lacking: list[tuple[Scope, str, float | None]] = []
            for scope in ticket.scopes:
                for limit, ready in scope.lacks(ticket.tokens, now):
                    lacking.append((scope, limit, ready))
                if behind is None and scope in blocked:
                    behind = (scope, blocked[scope])
            held = self._gateway(ticket, now)
            if held is not None:
                lacking.append((held[0], GATEWAY, held[1]))
            if not lacking and behind is None:
                ticket.admitted = True
                for scope in ticket.scopes:
                    scope.admit(ticket, now)
                admitted.append(ticket)
                continue
            for scope, limit, _ready in lacking:
                blocked.setdefault(scope, limit)
            self._note(ticket, behind, lacking, changed)
            if root in blocked:
                break  # every later ticket is subject to the global limits: all are behind this one
        for ticket in admitted:
            del self._queue[ticket.seq]
        return admitted, changed

    @staticmethod
    def _note(
        ticket: Ticket,
        behind: tuple[Scope, str] | None,
        lacking: list[tuple[Scope, str, float | None]],
        changed: list[Ticket],
    ) -> None:
        """Record why a ticket waits and when to look again; note it in ``changed`` if that moved."""
        times = [ready for _scope, _limit, ready in lacking if ready is not None]
        # None: an earlier ticket's admission or a release changes things, and wakes this one.
        recheck = None if behind is not None or len(times) < len(lacking) else max(times)
        for scope, limit, ready in lacking:
            if limit in (RATE, GATEWAY) and ready is not None and ready > ticket.not_before:
                ticket.not_before, ticket.not_before_by = ready, (scope, limit)
        if lacking:  # the limit that will hold it longest; one waiting on a release counts as longest
            scope, limit, _ready = max(lacking, key=lambda item: math.inf if item[2] is None else item[2])
            ticket.held_by = (scope, limit)
        else:
            ticket.held_by = behind
        if recheck is not None and recheck != ticket.recheck_at:
            changed.append(ticket)
        ticket.recheck_at = recheck

    def _gateway(self, ticket: Ticket, now: float) -> tuple[Scope, float] | None:
        """The gateway's holds on a ticket: None when some node may take it now (the nodes that
        may not are noted in ``ticket.avoid``); else the scope whose hold frees a node first, and when."""
        scopes = []
        for scope in ticket.scopes:
            if scope.hints:
                for key in [key for key, hints in scope.hints.items() if hints.spent(now)]:
                    del scope.hints[key]  # spent: a scope with no hints left costs nothing here again
                if scope.hints:
                    scopes.append(scope)
        if not scopes:
            ticket.avoid = frozenset()
            return None
        held: list[Hashable] = []
        first: tuple[Scope, float] | None = None
        for node in self._nodes:
            latest: tuple[Scope, float] | None = None  # the hold on this node that ends last
            for scope in scopes:
                for key in (node, None) if node is not None else (None,):
                    hints = scope.hints.get(key)
                    ready = hints.ready(ticket.tokens, now) if hints is not None else None
                    if ready is not None and (latest is None or ready > latest[1]):
                        latest = (scope, ready)
            if latest is None:
                continue
            held.append(node)
            if first is None or latest[1] < first[1]:
                first = latest
        ticket.avoid = frozenset(held)
        return first if len(held) == len(self._nodes) else None

    def cancel(self, ticket: Ticket) -> None:
        """A waiting ticket leaves the queue (timed out, cancelled); an admitted one is released."""
        if ticket.admitted:
            self.release(ticket, 0)
        elif ticket.generation == self.generation:
            self._queue.pop(ticket.seq, None)
        ticket.released = True

    def release(self, ticket: Ticket, actual_tokens: int | None = None) -> None:
        """The call ended: its slots back, its tokens counted. Idempotent; a ticket from before reset() is ignored."""
        if ticket.released or not ticket.admitted or ticket.generation != self.generation:
            ticket.released = True
            return
        ticket.released = True
        now = self._clock()
        actual = ticket.tokens if actual_tokens is None else max(int(actual_tokens), 0)
        for scope in ticket.scopes:
            scope.release(ticket, actual, now)

    # --- what the gateway says ----------------------------------------------------------------

    def observe(self, model: str | None, status: int, headers: Mapping[str, str], node: Hashable = None) -> None:
        """Hold back later calls as ``node``'s answer asks: retry-after on a 429, x-ratelimit-* budgets.

        Every hold ends within ``max_hold`` seconds; values that are not usable numbers are ignored."""
        if not self._follow:
            return
        now = self._clock()
        hints: _Hints | None = None
        if status == 429:
            wait = retry_after(headers, self._wall())
            hints = self._hints_for(model, node, now)
            if hints is None:
                return
            wait = NO_HINT_HOLD if wait is None else min(wait, self._max_hold)
            hints.hold_until = max(hints.hold_until, now + wait)
        for kind in ("requests", "tokens"):
            found = _budget_headers(headers, kind, self._wall)
            if found is None:
                continue
            left, limit, reset_in = found
            hints = hints or self._hints_for(model, node, now)
            if hints is None:
                return
            budget = _Budget(left, limit, now, now + min(reset_in, self._max_hold))
            if kind == "requests":
                hints.requests = budget
            else:
                hints.tokens = budget

    def _hints_for(self, model: str | None, node: Hashable, now: float) -> _Hints | None:
        """Where to note a node's hints about a model (None: too many to track)."""
        scope = self._scope_for_hints(model)
        if scope is None:
            return None
        hints = scope.hints.get(node)
        if hints is None:
            for key in [key for key, old in scope.hints.items() if old.spent(now)]:
                del scope.hints[key]
            if len(scope.hints) >= MAX_HINTED_NODES:
                return None
            hints = scope.hints[node] = _Hints()
        return hints

    def _scope_for_hints(self, model: str | None) -> Scope | None:
        if model is None:
            return self.root
        scope = self._models.get(model) or self._learnt.get(model)
        if scope is None:
            if len(self._learnt) >= MAX_LEARNT_SCOPES:
                return None  # too many model names: hints for new ones are ignored
            scope = self._learnt[model] = Scope(model, Quota())
        return scope

    def _scopes(self, model: str | None) -> tuple[Scope, ...]:
        if model is not None:
            scope = self._models.get(model) or self._learnt.get(model)
            if scope is not None:
                return (self.root, scope)
        return (self.root,)

    def set_quotas(self, quota: Quota, per_model: Mapping[str, Quota]) -> None:
        """New limits for the configured scopes (fleet mode: a share of the fleet's limits while
        Redis is away, the whole limits while it answers); pump afterwards, room may have grown."""
        self.root.set_quota(quota)
        for model, scope in self._models.items():
            scope.set_quota(per_model.get(model, Quota()))

    def reset(self) -> None:
        """Forget every ticket and count (a forked child); tickets from before are ignored on release."""
        self.generation += 1
        self._queue.clear()
        self._learnt.clear()
        self.root.reset()
        for scope in self._models.values():
            scope.reset()


# --- reading the gateway's headers ---------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """Seconds in OpenAI's reset format ('12ms', '1s', '6m0s', '1h2m3.5s') or a plain number;
    None for anything else (nan, inf, a negative number, garbage). A Unix time is left as it
    is: ``wire_seconds`` tells it apart."""
    text = text.strip()
    number = wire_number(text)
    if number is not None:
        return number
    total, at = 0.0, 0
    for part in _DURATION.finditer(text):
        if part.start() != at:
            return None
        total += float(part.group(1)) * _UNITS[part.group(2)]
        at = part.end()
    return total if at == len(text) and at and math.isfinite(total) else None


def _budget_headers(headers: Mapping[str, str], kind: str, wall: Clock) -> tuple[float, float | None, float] | None:
    """(remaining, limit or None, seconds to reset) of one gateway limit, OpenAI or Anthropic style.

    None when the answer has none, or its numbers are not usable (every one is checked)."""
    remaining = headers.get(f"x-ratelimit-remaining-{kind}")
    if remaining is not None:
        reset_text = headers.get(f"x-ratelimit-reset-{kind}")
        duration = parse_duration(reset_text) if reset_text else None
        reset = None if duration is None else wire_seconds(duration, wall())  # an epoch, as some send
        limit_text = headers.get(f"x-ratelimit-limit-{kind}")
    else:
        remaining = headers.get(f"anthropic-ratelimit-{kind}-remaining")
        if remaining is None:
            return None
        reset_text = headers.get(f"anthropic-ratelimit-{kind}-reset")
        reset = _seconds_until(reset_text, wall) if reset_text else None
        limit_text = headers.get(f"anthropic-ratelimit-{kind}-limit")
    if reset is None or reset <= 0:
        return None  # a budget with no end cannot be waited out: ignored
    left = wire_number(remaining)
    if left is None:
        return None
    limit = wire_number(limit_text) if limit_text else None
    return left, limit, reset


def _seconds_until(stamp: str, wall: Clock) -> float | None:
    """Seconds from now to an RFC 3339 time (Anthropic's reset headers)."""
    try:
        when = datetime.fromisoformat(stamp.strip().replace("Z", "+00:00"))
        if when.tzinfo is None:
            return None
        return when.timestamp() - wall()
    except (ValueError, OverflowError):
        return None


# --- estimating a request's tokens ---------------------------------------------------------------

_MAX_OUTPUT = re.compile(rb'"(?:max_tokens|max_completion_tokens|max_output_tokens)"\s*:\s*(\d{1,9})')
# Where inline data starts: a JSON value of a key ending in "data" (data, file_data), or a data URL.
# The literal "data" first lets the regex engine skip ahead quickly through long texts.
_PAYLOAD = re.compile(rb'data(?:"\s*:\s*"|:[\w/.+-]{0,100};base64,)')
MEDIA_TOKENS = 1600  # a base64 payload counts as this much: about the most one image costs
BYTES_PER_TOKEN = 4
_MEDIA_BYTES = MEDIA_TOKENS * BYTES_PER_TOKEN


def estimate_tokens(body: bytes | None) -> int:
    """Tokens a request may use, before it is sent: its bytes / 4, plus the output it asks for.

    A scan, not a parse. Inline payloads (base64 images, audio, files) longer than
    ``MEDIA_TOKENS`` * 4 bytes count as ``MEDIA_TOKENS`` each rather than by their length,
    which would overstate them a hundredfold. The estimate only has to be of the right
    size: the call's real usage replaces it when the call ends.
    """
    if not body:
        return 0
    size = len(body)
    if size > _MEDIA_BYTES:  # a smaller body cannot hold a payload worth discounting
        at = 0
        while (found := _PAYLOAD.search(body, at)) is not None:
            end = body.find(b'"', found.end())
            if end < 0:
                break
            length = end - found.end()
            if length > _MEDIA_BYTES:
                size -= length - _MEDIA_BYTES
            at = end + 1
    output = _MAX_OUTPUT.search(body)
    return size // BYTES_PER_TOKEN + (int(output.group(1)) if output else 0)
