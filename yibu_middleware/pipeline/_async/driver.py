"""The driver of one call: admission, then attempts until the plan delivers or gives up.

This is the one place the loop of attempts is written. It is the async source; the sync
driver (``pipeline/_sync/driver.py``) is generated from it by ``scripts/unasync`` (as
httpcore does), and a test fails when the two differ, so they cannot drift apart.
Adapters' I/O methods have the same names in both worlds: ``await adapter.send(...)``
here is ``adapter.send(...)`` there.

One attempt is an *exchange* (send, then read an error body, a whole JSON answer, or a
stream up to its first content: I/O only), followed by a *verdict* (``Call.judge``: the
core decides what comes next). Keeping them apart is what lets a hedge run two exchanges
at once and judge only the winner. Every node slot the plan hands out is given back
exactly once: by the verdict, or by ``Call.abort`` when the call is interrupted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from ...core.plan import Deliver, GiveUp, Send
from ..adapter import AsyncAdapter
from ..call import Call, Commit, Exchange
from ..hedge import hedged_async
from ..waits import async_sleep


async def drive(call: Call, adapter: AsyncAdapter) -> Any:
    """The answer to hand back for ``call``: a node's response, or one of our own."""
    done: Exchange | None = None
    response: Any = None
    try:
        if call.needs_admission:
            refusal = await admit(call)
            if refusal is not None:
                return refusal
        action: Send | Deliver | GiveUp = call.plan.start()
        while True:
            while isinstance(action, Send):
                if action.delay:
                    await async_sleep(action.delay)
                hedge_after = call.plan.hedge_after()
                if hedge_after is None:
                    done = await exchange(call, adapter, action)
                else:
                    done = await hedged_async(
                        call, action, hedge_after, partial(exchange, call, adapter), adapter.close
                    )
                response = done.response
                action = call.judge(done)
                if isinstance(action, Send) and response is not None:
                    await adapter.close(response)
                    response = None
            # Refused or exhausted: another model, when fallbacks say so (see core/fallbacks.py).
            following = call.fallback(action, done)
            if following is None:
                break
            if response is not None:
                await adapter.close(response)
                response = None
            if call.runtime.limiter is not None:
                refusal = await readmit(call)
                if refusal is not None:
                    return refusal
            action = following
        return call.hand_back(action, done)
    except BaseException:
        # Cancelled (a client gone, a timeout around the call), or an error we do not
        # handle: no node slot may stay taken.
        call.abort()
        if response is not None:
            await adapter.close(response)
        raise


async def admit(call: Call) -> Any:
    """The policy checks, then a turn under the client-side limits (waiting for it). None to go
    on; else the answer to hand back at once, a refusal nothing was sent for."""
    refusal = call.policy_refusal()
    if refusal is None:
        refusal = call.budget_refusal()
    if refusal is not None or call.runtime.limiter is None:
        return refusal
    return await take_turn(call)


async def readmit(call: Call) -> Any:
    """A fallback's turn under the limits of its own model: the old model's turn is given back
    first. None to go on; else our refusal (a 429, nothing sent) when the turn does not come."""
    call.release_turn()
    return await take_turn(call)


async def take_turn(call: Call) -> Any:
    """Wait for the call's turn under the limits: None once it has it, or our 429 refusal."""
    limiter = call.runtime.limiter
    assert limiter is not None
    # Here, not at the top: only a process with client-side limits needs the limiter's module
    # (and its core), so a process without any does not import them at start.
    from ...limiter import QueueTimeout

    try:
        permit = await limiter.acquire_async(*call.permit_request())
    except QueueTimeout as exc:
        return call.queue_refusal(exc)
    call.admitted(permit)
    return None


async def exchange(call: Call, adapter: AsyncAdapter, action: Send) -> Exchange:
    """One attempt: sent, then read as far as judging it needs."""
    response = None
    try:
        response = await adapter.send(adapter.request_for(call, action))
        status: int = adapter.status(response)
        if 300 <= status < 400:
            redirect = call.redirected(action.node, status, adapter.header(response, "location"))
            if redirect is not None:
                await adapter.close(response)  # never followed: see Call.redirected
                return Exchange(action, None, 0, redirect)
        if status >= 400:
            await adapter.read_error_body(response)  # before judging; within bounds (see ErrorBodyReader)
        elif call.reads_whole(response):
            await adapter.read(response)
        elif call.watches_stream(response):
            failure = await commit(call, adapter, action, response)
            if failure is not None:
                await adapter.close(response)
                return Exchange(action, None, 0, call.stream_failed(failure))
        return Exchange(action, response, status, None)
    except adapter.errors as exc:
        if response is not None:
            await adapter.close(response)
        return Exchange(action, None, 0, call.failure(exc))
    except BaseException:
        if response is not None:
            await adapter.close(response)  # the driver frees the node slot
        raise


async def commit(call: Call, adapter: AsyncAdapter, action: Send, response: Any) -> str | None:
    """Read a stream to its first content (see ``core/sse.py``). None: committed, and the
    response's body replaced by one that replays what was read, then watches the rest;
    else why it failed."""
    commit = Commit(call)
    chunks: AsyncIterator[bytes] = adapter.chunks(response)
    async for chunk in chunks:  # a transport error here is the exchange's error
        if commit.took(chunk):
            break
    failure = commit.failure()
    if failure is None:
        adapter.watch(call, action.node, response, commit, chunks)
    return failure
