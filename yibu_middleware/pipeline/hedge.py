"""Hedged attempts: a second exchange on another node when the first is slow; the first answer wins.

Client-agnostic: an exchange is a function of the attempt, and a response we do not hand
back is discarded with the adapter's ``close``. The plan decides whether and when to
hedge (``CallPlan.hedge_after`` / ``hedge``); this module only runs the two exchanges.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..core.plan import Send

if TYPE_CHECKING:
    from .call import Call, Exchange

_hedge_pool: concurrent.futures.ThreadPoolExecutor | None = None
_hedge_pool_lock = threading.Lock()


def _forget_hedge_pool() -> None:
    global _hedge_pool
    _hedge_pool = None  # its threads did not survive fork; a new pool starts on first use


os.register_at_fork(after_in_child=_forget_hedge_pool)


def hedged_sync(
    call: Call,
    first: Send,
    after: float,
    exchange: Callable[[Send], Exchange],
    close: Callable[[Any], None],
) -> Exchange:
    """Run the first exchange, and after ``after`` seconds a hedge on another node.

    The first *answer* wins: a failure that comes first is accounted for and the other
    exchange is waited for. A sync client blocks its thread, so both exchanges run on a
    shared pool (threads made as needed, up to 128)."""
    global _hedge_pool
    with _hedge_pool_lock:
        if _hedge_pool is None:
            _hedge_pool = concurrent.futures.ThreadPoolExecutor(128, thread_name_prefix="yibu-hedge")
    primary = _hedge_pool.submit(exchange, first)
    try:
        return primary.result(timeout=after)
    except concurrent.futures.TimeoutError:
        pass
    hedge = call.plan.hedge(first)
    if hedge is None:
        return primary.result()
    second = _hedge_pool.submit(exchange, hedge)
    actions = {primary: first, second: hedge}
    pending = {primary, second}
    while True:
        done, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
        winner = done.pop()
        result: Exchange = winner.result()
        if not pending or not call.failed_exchange(result):
            break
        call.note_lost(result)  # a failure first: the other may still answer
        if result.response is not None:
            close(result.response)
    for loser in pending:  # still running: its answer, when it comes, is discarded
        loser.add_done_callback(lambda future: _discard_sync(call, actions[future], future, close))
    return result


def _discard_sync(
    call: Call, action: Send, future: concurrent.futures.Future[Exchange], close: Callable[[Any], None]
) -> None:
    call.plan.abandoned(action)
    if future.exception() is None:
        lost = future.result()
        if lost.response is not None:
            close(lost.response)


async def hedged_async(
    call: Call,
    first: Send,
    after: float,
    exchange: Callable[[Send], Awaitable[Exchange]],
    aclose: Callable[[Any], Awaitable[None]],
) -> Exchange:
    """The async twin of ``hedged_sync``: the loser is cancelled outright.

    In an anyio task group, so under asyncio and trio alike (the SDKs run on both). Each
    exchange sends its outcome (its result, or the error it raised) to the waiting caller."""
    import anyio  # here: only a process with hedging on comes this way

    send, receive = anyio.create_memory_object_stream[tuple[Send, "Exchange | Exception"]](2)
    pending: dict[int, Send] = {}  # attempts not finished yet, by attempt number

    async def attempt(action: Send) -> None:
        try:
            outcome: Exchange | Exception = await exchange(action)
        except Exception as exc:  # raised to the caller below, as it was raised here
            outcome = exc
        send.send_nowait((action, outcome))  # never blocks: room for both attempts

    async def next_outcome() -> Exchange | Exception:
        action, outcome = await receive.receive()
        del pending[action.attempt]
        return outcome

    result: Exchange | Exception | None = None
    async with anyio.create_task_group() as group:
        pending[first.attempt] = first
        group.start_soon(attempt, first)
        with anyio.move_on_after(after):
            result = await next_outcome()
        if result is None:
            hedge = call.plan.hedge(first)
            if hedge is not None:
                pending[hedge.attempt] = hedge
                group.start_soon(attempt, hedge)
            while True:
                result = await next_outcome()
                if isinstance(result, Exception) or not pending or not call.failed_exchange(result):
                    break
                call.note_lost(result)  # a failure first: the other may still answer
                if result.response is not None:
                    await aclose(result.response)
        for action in pending.values():
            call.plan.abandoned(action)  # cancelled now: no verdict on its node
        group.cancel_scope.cancel()  # the library closes the half-open connection
    while True:  # an attempt that finished as the other won: its answer is discarded
        try:
            _, late = receive.receive_nowait()
        except (anyio.WouldBlock, anyio.EndOfStream):
            break
        if not isinstance(late, Exception) and late.response is not None:
            await aclose(late.response)
    if isinstance(result, Exception):
        raise result
    assert result is not None
    return result
