"""Whether a proxy is skipped for a node: the environment's NO_PROXY, as urllib reads it."""

from __future__ import annotations

import functools
import os


def no_proxy_covers(host: str, port: int | None) -> bool:
    """Does the environment's NO_PROXY cover ``host`` (a node's), as urllib decides it (which
    aiohttp and the ``requests`` helpers use too)? Cached per NO_PROXY value: reading every
    environment variable, as urllib does, costs more than the rest of an attempt's choice."""
    return _no_proxy_covers(host, port, os.environ.get("no_proxy"), os.environ.get("NO_PROXY"))


@functools.lru_cache(maxsize=256)
def _no_proxy_covers(host: str, port: int | None, lower: str | None, upper: str | None) -> bool:
    no_proxy = lower if lower is not None else upper
    if not no_proxy:
        return False
    import urllib.request  # here: only a process with NO_PROXY set and a proxied client needs it

    target = host if port is None else f"{host}:{port}"
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]  # public, not in typeshed
    return bool(bypass(target, {"no": no_proxy}))
