"""Fail closed: while ``offline()`` is active, no name but loopback is resolved and no socket
connects beyond loopback, so a test whose request was not routed fails here, locally,
instead of reaching a provider on the internet.

It is a Python audit hook (``socket.getaddrinfo``, ``socket.connect``, ...), raised inside
the socket module before any lookup or connect: the real clients run unchanged. Audit hooks
cannot be removed, so the hook is added once and does nothing outside ``offline()``. The
middleware's egress guard is made to hook first, so that its refusals are the ones seen
when it is on.
"""

from __future__ import annotations

import ipaddress
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from yibu_middleware import egress


class WouldReachInternet(OSError):
    """A test's request was about to leave loopback: it was not routed as the test expects."""


_active = 0
_lock = threading.Lock()
_added = False
attempts: list[str] = []  # hosts a request tried to reach, while offline


def _loopback(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if host is None or host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if not _active:
        return
    if event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex"):
        host = args[0]
    elif event in ("socket.connect", "socket.connect_ex", "socket.sendto"):
        address = args[1]
        if not isinstance(address, tuple):
            return  # a Unix socket
        host = address[0]
    else:
        return
    if not _loopback(host):
        attempts.append(str(host))
        raise WouldReachInternet(f"test isolation: refused to reach {host!r} (only loopback is allowed)")


@contextmanager
def offline() -> Iterator[list[str]]:
    """While active, only loopback is reachable; yields the hosts that were refused."""
    global _active, _added
    with _lock:
        if not _added:
            egress.ensure_hook()  # the guard's hook runs first: its refusals are what a test sees
            sys.addaudithook(_hook)
            _added = True
        _active += 1
    attempts.clear()
    restore = _threaded_aiohttp_resolver()
    try:
        yield attempts
    finally:
        restore()
        with _lock:
            _active -= 1


def _threaded_aiohttp_resolver() -> Any:
    """aiohttp resolves with aiodns (c-ares, unseen by audit hooks) when it is installed: make it
    use the standard library's resolver meanwhile, which the hook sees."""
    try:
        import aiohttp.connector
        import aiohttp.resolver
    except ImportError:
        return lambda: None
    before = aiohttp.connector.DefaultResolver
    aiohttp.connector.DefaultResolver = aiohttp.resolver.ThreadedResolver  # type: ignore[misc]

    def restore() -> None:
        aiohttp.connector.DefaultResolver = before  # type: ignore[misc]

    return restore
