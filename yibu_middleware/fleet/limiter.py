"""Fleet limits: the client-side limits of every process sharing one Redis, as one.

A call first takes its turn in its own process's queue (``limiter.Limiter``: first come, first
served among the process's threads and tasks, the gateway's holds, and, while Redis answers, the
whole limits, which no single process may exceed anyway). Then, only if a fleet limit applies to
its model, one server-side script (``scripts.ADMIT``) decides for the fleet: admitted now, or
after a delay (its rate slot reserved), or not yet (it waits and asks again; the first waiter in a
scope's fleet queue goes first). A call that no fleet limit applies to never touches Redis.

While Redis does not answer (the fleet is down), the process's own queue applies each fleet
limit divided by the number of live processes last seen (their heartbeats), so the fleet as a
whole stays near its limits; when Redis answers again the whole limits come back. A call that
was admitted by Redis gives its slot back through the syncer thread, so that neither a thread nor
an event loop waits for that round trip.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any

from ..core.limits import CONCURRENT, RATE, TOKENS, Quota
from ..core.retry import retry_after
from ..limiter import Limiter, Permit, QueueTimeout
from .layout import scope_name

if TYPE_CHECKING:
    from .store import Fleet

POLL_FIRST = 0.005  # seconds between asks of the first waiter of a fleet queue, when only a release helps
POLL_OTHERS = 0.025  # the same for the others: they cannot go before it anyway

_LIMIT_NAMES = {"max_concurrent": CONCURRENT, "requests_per_second": RATE, "tokens_per_minute": TOKENS}


class FleetScope:
    """One fleet limit scope as the scripts see it: its keys and its limits as arguments."""

    __slots__ = ("args", "keys", "model", "quota", "setting")

    def __init__(self, fleet: Fleet, model: str | None, quota: Quota) -> None:
        self.model = model
        self.quota = quota
        self.setting = "limits" if model is None else f'limits.per_model["{model}"]'
        self.keys = fleet.layout.scope_keys(scope_name(model))
        interval = 1000.0 / quota.requests_per_second if quota.requests_per_second else None
        self.args = [_arg(quota.max_concurrent), _arg(interval), _arg(quota.tokens_per_minute)]

    def reserved(self, tokens: int) -> str:
        """What a call of ``tokens`` holds in this scope's token window ('' where none)."""
        tpm = self.quota.tokens_per_minute
        return "" if tpm is None else str(min(tokens, tpm))


class FleetPermit:
    """A call's admission by its process and by the fleet; ``release`` gives both back (once)."""

    __slots__ = ("_call", "_limiter", "_local", "_scopes", "_tokens", "waited")

    def __init__(
        self, limiter: FleetLimiter, local: Permit, call: str | None, scopes: tuple[FleetScope, ...], tokens: int
    ) -> None:
        self._limiter = limiter
        self._local = local
        self._call = call  # None: not admitted by Redis (no fleet limit applies, or Redis was away)
        self._scopes = scopes
        self._tokens = tokens
        self.waited = local.waited

    @property
    def avoid(self) -> frozenset[Hashable]:
        return self._local.avoid

    def release(self, actual_tokens: int | None = None) -> None:
        self._local.release(actual_tokens)
        call, self._call = self._call, None
        if call is not None:
            self._limiter.ended(call, self._scopes, self._tokens, actual_tokens)

    def __enter__(self) -> FleetPermit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Turn:
    """One call's way through the fleet's admission: what to ask Redis next, how long to pause,
    and the permit at the end. No I/O: ``acquire`` (a thread) and ``acquire_async`` (a task)
    run the same steps, each with its own way to ask and to wait."""

    __slots__ = (
        "args",
        "call",
        "deadline",
        "done",
        "keys",
        "limiter",
        "local",
        "model",
        "permit",
        "scopes",
        "started",
        "tokens",
    )

    def __init__(
        self,
        limiter: FleetLimiter,
        call: str,
        scopes: tuple[FleetScope, ...],
        model: str | None,
        tokens: int,
        deadline: float,
        local: Permit,
    ) -> None:
        self.limiter = limiter
        self.call = call
        self.scopes = scopes
        self.model = model
        self.tokens = tokens
        self.deadline = deadline
        self.local = local
        self.started = time.monotonic()
        self.done = False
        self.permit: Permit | FleetPermit = local
        self.keys = [key for scope in scopes for key in scope.keys]
        self.args: list[object] = [call, limiter.fleet.lease_ms, tokens, 0]
        for scope in scopes:
            self.args.extend(scope.args)

    def ask(self) -> tuple[list[str], list[object]]:
        """The admission script's keys and arguments; the longest delay is what is left of the deadline."""
        self.args[3] = math.floor(max(self.deadline - time.monotonic(), 0.0) * 1000)
        return self.keys, self.args

    def answered(self, answer: list[object] | None) -> float:
        """Seconds to pause: before asking again, or (done) before the call may go. QueueTimeout
        when the deadline is past or cannot be met."""
        if answer is None:  # Redis is away: the process's own (shared-out) limits decide
            self.done = True
            return 0.0
        if int(str(answer[0])) == 1:
            self.done = True
            self.limiter._started(self.call, self.scopes, self.tokens)
            self.permit = FleetPermit(self.limiter, self.local, self.call, self.scopes, self.tokens)
            return int(str(answer[1])) / 1000.0  # its rate slot, reserved
        index, limit, retry_ms, first = int(str(answer[1])), str(answer[2]), int(str(answer[3])), int(str(answer[4]))
        poll = POLL_FIRST if first else POLL_OTHERS
        pause = max(retry_ms / 1000.0, poll) if retry_ms >= 0 else poll
        left = self.deadline - time.monotonic()
        if left <= 0 or (retry_ms >= 0 and retry_ms / 1000.0 > left and limit != "queue"):
            waited = self.local.waited + time.monotonic() - self.started
            raise _fleet_timeout(self.scopes[index], limit, self.model, waited, self.limiter)
        return min(pause, left)


class FleetLimiter:
    """The limiter interface of ``limiter.Limiter`` (what the pipeline uses), for a fleet."""

    def __init__(self, fleet: Fleet, local: Limiter, quota: Quota, per_model: Mapping[str, Quota]) -> None:
        self.fleet = fleet
        self.local = local
        self.queue_timeout = local.queue_timeout
        self.counts_tokens = local.counts_tokens
        self.follows_gateway = local.follows_gateway
        self._quota = quota
        self._per_model = dict(per_model)
        self._global = FleetScope(fleet, None, quota) if _limited(quota) else None
        self._models = {model: FleetScope(fleet, model, q) for model, q in per_model.items() if _limited(q)}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self.in_flight: dict[str, tuple[tuple[FleetScope, ...], int]] = {}  # call -> scopes, tokens: renewed
        self._ending: list[tuple[str, tuple[FleetScope, ...], int, int | None]] = []  # given back by the syncer
        self._wake_syncer: threading.Event | None = None
        self.tell_hold: Callable[[str | None, Any, float | None], None] | None = None  # set by the syncer
        fleet.on_change.append(self._fleet_changed)

    # --- the limiter interface: a thread sleeps, a task awaits; the steps are the _Turn's ---------

    def acquire(
        self, model: str | None, estimated_tokens: int = 0, timeout: float | None = None
    ) -> Permit | FleetPermit:
        timeout = self.queue_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        local = self.local.acquire(model, estimated_tokens, timeout)
        turn = self._turn(model, estimated_tokens, deadline, local)
        if turn is None:
            return local
        try:
            while not turn.done:
                pause = turn.answered(self.fleet.admit(*turn.ask()))
                if pause:
                    time.sleep(pause)
        except BaseException:  # QueueTimeout, KeyboardInterrupt: nothing held is kept
            self._abandoned(turn)
            raise
        return turn.permit

    async def acquire_async(
        self, model: str | None, estimated_tokens: int = 0, timeout: float | None = None
    ) -> Permit | FleetPermit:
        import anyio

        timeout = self.queue_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        local = await self.local.acquire_async(model, estimated_tokens, timeout)
        turn = self._turn(model, estimated_tokens, deadline, local)
        if turn is None:
            return local
        try:
            while not turn.done:
                pause = turn.answered(await self.fleet.admit_async(*turn.ask()))
                if pause:
                    await anyio.sleep(pause)
        except BaseException:  # CancelledError above all: nothing held is kept
            self._abandoned(turn)
            raise
        return turn.permit

    def observe(self, model: str | None, status: int, headers: Mapping[str, str], node: Hashable = None) -> None:
        parts = self.fleet.live_processes
        if parts > 1 and any(name in headers for name in _BUDGET_HEADERS):
            # What the gateway says is left is left for the whole fleet: this process paces its
            # own calls on its share (every process reads the same budgets from its own answers).
            headers = _shared_budgets(headers, parts)
        self.local.observe(model, status, headers, node)
        if status == 429 and self.tell_hold is not None:  # one worker's 429 holds every worker
            self.tell_hold(model, node, retry_after(headers))

    def reset(self) -> None:
        self.local.reset()
        self._lock = threading.Lock()
        self.in_flight = {}
        self._ending = []

    def waiting(self) -> int:
        return self.local.waiting()

    # --- the fleet's side -----------------------------------------------------------------------

    def _scopes(self, model: str | None) -> tuple[FleetScope, ...]:
        scopes: tuple[FleetScope, ...] = () if self._global is None else (self._global,)
        if model is not None and (scope := self._models.get(model)) is not None:
            scopes += (scope,)
        return scopes

    def _turn(self, model: str | None, tokens: int, deadline: float, local: Permit) -> _Turn | None:
        """The call's way through the fleet's admission; None when no fleet limit applies to it or
        Redis is away (then its process's own turn is all it needs)."""
        scopes = self._scopes(model)
        if not scopes or not self.fleet.up:
            return None
        return _Turn(self, f"{self.fleet.process_id}:{next(self._ids)}", scopes, model, tokens, deadline, local)

    def _abandoned(self, turn: _Turn) -> None:
        """A call that will not go: its local turn back at once; in the fleet, its place in the
        queues or its slot, through the syncer (no I/O here: this runs while being cancelled)."""
        turn.local.release(0)
        self.ended(turn.call, turn.scopes, turn.tokens, 0)

    def _started(self, call: str, scopes: tuple[FleetScope, ...], tokens: int) -> None:
        with self._lock:
            self.in_flight[call] = (scopes, tokens)

    def ended(self, call: str, scopes: tuple[FleetScope, ...], tokens: int, actual: int | None) -> None:
        """A call admitted by the fleet ended (or gave up waiting): the syncer gives its lease back
        (never the caller). At once when a slot of a concurrency limit, or a place in a fleet
        queue (``actual == 0``), is waited for; else with its next tick (200 ms): a thread woken
        for every call costs more than the call's end changes."""
        with self._lock:
            self.in_flight.pop(call, None)
            self._ending.append((call, scopes, tokens, actual))
        wake = self._wake_syncer
        if wake is not None and (actual == 0 or any(scope.quota.max_concurrent is not None for scope in scopes)):
            wake.set()

    def take_ended(self) -> list[tuple[str, tuple[FleetScope, ...], int, int | None]]:
        with self._lock:
            ending, self._ending = self._ending, []
        return ending

    def give_back(self) -> None:
        """Run by the syncer: the leases of the calls that ended go back to the fleet. Those Redis
        did not take (it went away) are kept and given back when it answers again."""
        ending = self.take_ended()
        for done, (call, scopes, tokens, actual) in enumerate(ending):
            keys = [key for scope in scopes for key in scope.keys]
            args: list[object] = [call, tokens, -1 if actual is None else actual, 0]
            for scope in scopes:
                args.extend(scope.args)
            if not self.fleet.release(keys, args):
                with self._lock:
                    self._ending[:0] = ending[done:]
                return

    def renew(self) -> None:
        """Run by the syncer: the leases of this process's calls in flight go on."""
        with self._lock:
            calls = list(self.in_flight.items())
        if not calls:
            return
        for scope in {scope for _, (scopes, _) in calls for scope in scopes}:
            args: list[object] = [self.fleet.lease_ms, 0]
            for call, (scopes, tokens) in calls:
                if scope in scopes:
                    args.extend((call, scope.reserved(tokens)))
            args[1] = (len(args) - 2) // 2
            self.fleet.renew(scope.keys, args)

    def _fleet_changed(self, up: bool) -> None:
        """Redis went away: the process takes its share of each limit; it came back: the whole."""
        if up:
            self.local.set_quotas(self._quota, self._per_model)
            return
        share = max(self.fleet.live_processes, 1)
        self.local.set_quotas(
            _share(self._quota, share), {model: _share(q, share) for model, q in self._per_model.items()}
        )


_BUDGET_HEADERS = tuple(
    name
    for kind in ("requests", "tokens")
    for name in (
        f"x-ratelimit-remaining-{kind}",
        f"x-ratelimit-limit-{kind}",
        f"anthropic-ratelimit-{kind}-remaining",
        f"anthropic-ratelimit-{kind}-limit",
    )
)


def _shared_budgets(headers: Mapping[str, str], parts: int) -> dict[str, str]:
    """The answer's headers with each budget (remaining and limit) divided among ``parts`` processes."""
    shared = {name.lower(): value for name, value in headers.items()}
    for name in _BUDGET_HEADERS:
        value = shared.get(name)
        if value is None:
            continue
        try:
            number = float(value)
        except ValueError:
            continue  # not a number: left as it is, for core.limits to refuse
        if number == number and number >= 0:  # not nan
            shared[name] = str(math.floor(number / parts))
    return shared


def _limited(quota: Quota) -> bool:
    return any(value is not None for value in quota)


def _share(quota: Quota, parts: int) -> Quota:
    return Quota(
        None if quota.max_concurrent is None else max(1, quota.max_concurrent // parts),
        None if quota.requests_per_second is None else quota.requests_per_second / parts,
        None if quota.tokens_per_minute is None else max(1, quota.tokens_per_minute // parts),
    )


def _arg(value: float | None) -> str:
    return "" if value is None else repr(float(value)) if not float(value).is_integer() else str(int(value))


def _fleet_timeout(
    scope: FleetScope, limit: str, model: str | None, waited: float, limiter: FleetLimiter
) -> QueueTimeout:
    target = f"model {model!r}" if model else "the gateway"
    name = _LIMIT_NAMES.get(limit, limit)
    if name == "queue":
        why = "earlier calls of the fleet were still waiting for room"
        setting = f"{scope.setting}"
    else:
        value = getattr(scope.quota, name)
        why = f"the fleet's {scope.setting}.{name} ({value:g}) had no room"
        setting = f"{scope.setting}.{name}"
    return QueueTimeout(
        f"yibu-middleware: a call to {target} was not sent: {why} within limits.queue_timeout"
        f" ({limiter.queue_timeout:g} s); that limit is shared through Redis by every process of the app"
        f" (about {limiter.fleet.live_processes} live). Raise {setting} or limits.queue_timeout, or make fewer calls"
        " at a time. (Nothing reached the gateway.)",
        setting=setting,
        waited=waited,
        model=model,
    )
