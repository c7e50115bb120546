"""Waiting for the client-side limits: one queue for the sync and async callers of a process.

``core/limits.py`` decides who may go; this module waits. Every call takes a ticket in the
same FIFO queue under one ``threading.Lock``, whether it comes from a thread (``acquire``,
blocking on its own ``threading.Event``) or from an event loop (``acquire_async``, awaiting
an anyio event, so under asyncio and trio alike, that other threads set through the loop's
own thread-safe call: ``call_soon_threadsafe``, or trio's ``run_sync_soon``). Whoever
changes the state (a new call, a release, a wake-up, a cancellation) looks at the queue
again and wakes exactly the tickets that were admitted or whose time to look again moved;
no thread is started, and no waiter polls.

A call that cannot get in within ``limits.queue_timeout`` raises :class:`QueueTimeout`
(at once, when the gateway asked to wait longer than that); the adapter turns it into a 429
the SDK does not retry. A waiter that times out or is cancelled leaves the queue, and a call
admitted at the very moment it was cancelled gives its slots back.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from .core.limits import GATEWAY, MAX_HOLD, Admission, Quota, Ticket
from .core.nodes import Clock
from .errors import YibuError

if TYPE_CHECKING:
    from .settings import LimitSettings

W = TypeVar("W", bound=Callable[[], None])  # a ticket's waiter: calling it wakes the waiting caller


class QueueTimeout(YibuError):
    """A call waited for the client-side limits longer than ``limits.queue_timeout``.

    ``status`` and ``code`` are what the adapter answers with (a 429 in the provider's format,
    with ``x-should-retry: false``); ``setting`` names the limit that held the call.
    """

    status = 429
    code = "client_rate_limited"

    def __init__(self, message: str, *, setting: str, waited: float, model: str | None) -> None:
        super().__init__(message)
        self.setting = setting
        self.waited = waited
        self.model = model


class Permit:
    """A call's admission: give it back with ``release`` (idempotent) when the call ends."""

    __slots__ = ("_limiter", "_ticket", "waited")

    def __init__(self, limiter: Limiter, ticket: Ticket, waited: float) -> None:
        self._limiter = limiter
        self._ticket = ticket
        self.waited = waited  # seconds spent in the queue

    @property
    def avoid(self) -> frozenset[Hashable]:
        """The nodes the gateway still held for this call when it was admitted: try them last."""
        return self._ticket.avoid

    def release(self, actual_tokens: int | None = None) -> None:
        """The call ended: slots back; ``actual_tokens`` (the gateway's usage) replace the estimate.

        None: the usage is unknown and the estimate stands; 0: nothing was used (never sent).
        """
        if not self._ticket.released:
            self._limiter._release(self._ticket, actual_tokens)

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()


class Limiter:
    """The client-side limits of one process, shared by every thread and event loop."""

    __slots__ = ("_admission", "_clock", "_lock", "counts_tokens", "follows_gateway", "queue_timeout")

    def __init__(
        self,
        quota: Quota,
        per_model: Mapping[str, Quota] | None = None,
        *,
        queue_timeout: float = 30.0,
        follow_gateway_headers: bool = True,
        nodes: Sequence[Hashable] = (),
        max_hold: float = MAX_HOLD,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
    ) -> None:
        """``nodes``, ``max_hold``: see ``Admission`` (the nodes as ``observe`` is told them)."""
        self._clock = clock
        self._lock = threading.Lock()
        self._admission = Admission(
            quota,
            per_model,
            follow_gateway_headers=follow_gateway_headers,
            nodes=nodes,
            max_hold=max_hold,
            clock=clock,
            wall=wall,
        )
        self.queue_timeout = queue_timeout
        # What a call must report back: its usage (a tokens-per-minute limit is set somewhere),
        # and the rate-limit headers of each answer.
        scopes = [quota, *(per_model or {}).values()]
        self.counts_tokens = any(scope.tokens_per_minute is not None for scope in scopes)
        self.follows_gateway = follow_gateway_headers

    @classmethod
    def from_settings(cls, limits: LimitSettings, nodes: Sequence[Hashable] = ()) -> Limiter | None:
        """The limiter the settings ask for; None when no limit is set (then calls pay nothing).
        ``nodes``: the gateway's nodes, whose hints hold each its own node."""
        if not limits.active:
            return None
        return cls(
            Quota(limits.max_concurrent, limits.requests_per_second, limits.tokens_per_minute),
            {
                model: Quota(spec.max_concurrent, spec.requests_per_second, spec.tokens_per_minute)
                for model, spec in limits.per_model.items()
            },
            queue_timeout=limits.queue_timeout,
            follow_gateway_headers=limits.follow_gateway_headers,
            nodes=nodes,
            max_hold=limits.max_hold_seconds,
        )

    # --- waiting for a turn: a thread blocks, a task awaits; the same queue and steps -------------

    def acquire(self, model: str | None, estimated_tokens: int = 0, timeout: float | None = None) -> Permit:
        """Wait for a turn (blocking this thread); QueueTimeout after ``timeout`` (default queue_timeout)."""
        ticket, waiter = self._enqueue(model, estimated_tokens, _ThreadWaiter)
        if waiter is None:  # admitted at once
            return Permit(self, ticket, 0.0)
        timeout = self.queue_timeout if timeout is None else timeout
        try:
            while (pause := self._pause(ticket, ticket.enqueued_at + timeout)) is not None:
                waiter.wait(pause)
                if self._look(ticket):
                    return Permit(self, ticket, self._clock() - ticket.enqueued_at)
            return self._give_up(ticket, timeout)
        except BaseException:  # KeyboardInterrupt, or anything unexpected: never leave a ticket behind
            self._leave(ticket)
            raise

    async def acquire_async(self, model: str | None, estimated_tokens: int = 0, timeout: float | None = None) -> Permit:
        """Wait for a turn without blocking the event loop (asyncio or trio); same queue as ``acquire``."""
        ticket, waiter = self._enqueue(model, estimated_tokens, _LoopWaiter)
        if waiter is None:  # admitted at once
            return Permit(self, ticket, 0.0)
        timeout = self.queue_timeout if timeout is None else timeout
        try:
            while (pause := self._pause(ticket, ticket.enqueued_at + timeout)) is not None:
                await waiter.wait(pause)
                if self._look(ticket):
                    return Permit(self, ticket, self._clock() - ticket.enqueued_at)
            return self._give_up(ticket, timeout)
        except BaseException:  # CancelledError above all: the ticket leaves the queue, slots given back
            self._leave(ticket)
            raise

    def _enqueue(
        self, model: str | None, estimated_tokens: int, make_waiter: Callable[[], W]
    ) -> tuple[Ticket, W | None]:
        """A ticket in the queue, and None when it was admitted at once; else its waiter (made under
        the lock, before anyone can wake it), which whoever changes the state wakes."""
        waiter = None
        with self._lock:
            ticket = self._admission.enqueue(model, estimated_tokens)
            woken = self._pump()
            if not ticket.admitted:
                waiter = ticket.wake = make_waiter()
        _wake(woken)
        return ticket, waiter

    # --- the gateway's answers ----------------------------------------------------------------

    def observe(self, model: str | None, status: int, headers: Mapping[str, str], node: Hashable = None) -> None:
        """Feed an answer's rate-limit headers (any status; retry-after counts on a 429); ``node``:
        the node that answered, the one its hints hold (None: every node)."""
        with self._lock:
            self._admission.observe(model, status, headers, node)
            woken = self._pump()  # a new budget may also be larger than the one a ticket waits on
        _wake(woken)

    def set_quotas(self, quota: Quota, per_model: Mapping[str, Quota]) -> None:
        """Change the limits of the configured scopes; waiters that now have room are woken."""
        with self._lock:
            self._admission.set_quotas(quota, per_model)
            woken = self._pump()
        _wake(woken)

    # --- after fork ---------------------------------------------------------------------------

    def reset(self) -> None:
        """A forked child starts with an empty queue, free slots and a new lock."""
        self._lock = threading.Lock()
        self._admission.reset()

    def waiting(self) -> int:
        """Calls in the queue now (for tests and ``yibu doctor``)."""
        with self._lock:
            return self._admission.waiting()

    # --- internals ----------------------------------------------------------------------------

    def _pump(self) -> list[Ticket]:
        """Look at the queue (lock held); the tickets to wake once the lock is released."""
        admitted, changed = self._admission.pump()
        return admitted + changed if changed else admitted

    def _look(self, ticket: Ticket) -> bool:
        if ticket.admitted:  # set, under the lock, before the wake-up that brought us here
            return True
        with self._lock:
            woken = self._pump()
            admitted = ticket.admitted
        _wake(woken)
        return admitted

    def _pause(self, ticket: Ticket, deadline: float) -> float | None:
        """Seconds to wait before looking again; None: the deadline is reached, or cannot be met."""
        now = self._clock()
        if now >= deadline or ticket.not_before > deadline:
            return None
        recheck = ticket.recheck_at
        # A time already past means the last look stopped before reaching this ticket (an earlier
        # one blocks the global limits): it is woken when that one goes.
        if recheck is None or recheck <= now:
            return deadline - now
        return min(recheck, deadline) - now

    def _give_up(self, ticket: Ticket, timeout: float) -> Permit:
        """The deadline passed: admitted at the last moment after all, or QueueTimeout."""
        with self._lock:
            woken = self._pump()
            admitted = ticket.admitted
            if not admitted:
                self._admission.cancel(ticket)
                woken += self._pump()  # the ticket may have held others back
        _wake(woken)
        waited = self._clock() - ticket.enqueued_at
        if admitted:
            return Permit(self, ticket, waited)
        raise _timeout_error(ticket, waited, ticket.not_before - ticket.enqueued_at, timeout, self.queue_timeout)

    def _leave(self, ticket: Ticket) -> None:
        with self._lock:
            self._admission.cancel(ticket)
            woken = self._pump()
        _wake(woken)

    def _release(self, ticket: Ticket, actual_tokens: int | None) -> None:
        with self._lock:
            self._admission.release(ticket, actual_tokens)
            woken = self._pump()
        _wake(woken)


def _wake(tickets: Iterable[Ticket]) -> None:
    for ticket in tickets:
        if ticket.wake is not None:
            ticket.wake()


class _ThreadWaiter:
    """A thread's wait for its ticket: woken from any thread."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self) -> None:
        self.event.set()

    def wait(self, seconds: float) -> None:
        self.event.wait(seconds)
        self.event.clear()  # before looking: a wake-up from now on is kept for the next wait


class _LoopWaiter:
    """A task's wait for its ticket, woken from any thread: its event is set in the loop's own
    thread (an event loop's objects are not thread-safe), through the loop's thread-safe call."""

    __slots__ = ("call_soon", "event")

    def __init__(self) -> None:
        import anyio  # here, not at the top: a sync app with limits set never pays its import

        self.call_soon = _loop_call_soon()
        self.event = anyio.Event()

    def __call__(self) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop or finished run: its waiter is gone, its ticket too
            self.call_soon(self._set)

    def _set(self) -> None:
        self.event.set()  # the event the waiter awaits now (it makes a new one for each wait)

    async def wait(self, seconds: float) -> None:
        import anyio

        with anyio.move_on_after(seconds):
            await self.event.wait()
        self.event = anyio.Event()  # before looking: a wake-up from now on is kept for the next wait


def _loop_call_soon() -> Callable[[Callable[[], object]], object]:
    """The running event loop's way to run a function in its thread, called from any thread:
    trio's ``run_sync_soon`` under trio (the openai and anthropic SDKs support it, through
    anyio), else asyncio's ``call_soon_threadsafe``."""
    trio = sys.modules.get("trio")  # never imported here: a trio run has imported it
    if trio is not None:
        try:
            call_soon: Callable[[Callable[[], object]], object] = trio.lowlevel.current_trio_token().run_sync_soon
        except RuntimeError:  # not in a trio run
            pass
        else:
            return call_soon
    import asyncio

    return asyncio.get_running_loop().call_soon_threadsafe


def _timeout_error(ticket: Ticket, waited: float, must_wait: float, timeout: float, configured: float) -> QueueTimeout:
    """The message names the call, the limit that held it and its setting, the wait, and the fixes."""
    target = f"model {ticket.model!r}" if ticket.model else "the gateway"
    allowed = f"limits.queue_timeout = {configured:g} s"
    if timeout < configured:
        allowed = f"{timeout:g} s, the call's own timeout, shorter than {allowed}"
    held_by = ticket.held_by
    if must_wait > waited:  # gave up early: a rate slot or a gateway hold lies beyond the deadline
        held_by = ticket.not_before_by or held_by
        why = f"it would have had to wait at least {must_wait:.1f} s in the client-side queue, over {allowed}"
    else:
        why = f"it waited {waited:.1f} s in the client-side queue, the most allowed ({allowed})"
    setting = "limits.queue_timeout"
    fix = "Raise limits.queue_timeout, or make fewer calls at a time."
    if held_by is not None:
        scope, limit = held_by
        if limit == GATEWAY:
            setting = "limits.follow_gateway_headers"
            fix = (
                "The gateway asked for this pause: make fewer calls, have the key's limit raised at the"
                " gateway, raise limits.queue_timeout, or set limits.follow_gateway_headers = false to"
                " send anyway."
            )
        else:
            setting = f"{scope.setting}.{limit}"
            fix = f"Raise {setting} or limits.queue_timeout, or make fewer calls at a time."
    return QueueTimeout(
        f"yibu-middleware: a call to {target} was not sent: {why}; it was held by {ticket.holder(held_by)}."
        f" {fix} (Nothing reached the gateway.)",
        setting=setting,
        waited=waited,
        model=ticket.model,
    )
