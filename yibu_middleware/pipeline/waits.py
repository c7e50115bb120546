"""Waiting out a retry's back-off, in a sync and in an async call (named apart for ``scripts/unasync``)."""

from __future__ import annotations

import time


def sleep(seconds: float) -> None:
    time.sleep(seconds)


async def async_sleep(seconds: float) -> None:
    import anyio  # here: a call that waits is rare, and anyio runs under trio as under asyncio

    await anyio.sleep(seconds)
