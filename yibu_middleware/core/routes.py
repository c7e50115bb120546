"""Which requests are redirected, and where their path lands on a gateway node.

Pure functions over plain strings: no client library is imported here. The route
table is consulted for every request the hooked clients send, so ``match`` is a
single dict lookup; a request to any other host leaves after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple


class Route(NamedTuple):
    host: str
    provider: str  # "openai" or "anthropic": the wire format of errors we build for it
    strip_prefix: str  # e.g. "/v1": removed before the path is joined onto a node URL


class RouteTable:
    def __init__(self, routes: Mapping[str, Route]) -> None:
        self._by_host = {host.lower(): route for host, route in routes.items()}

    def match(self, host: str) -> Route | None:
        # Hosts reach us lower-cased from httpx's URL parser; others normalise first.
        return self._by_host.get(host)

    @property
    def hosts(self) -> list[str]:
        return list(self._by_host)


def gateway_path(route: Route, path: str) -> str:
    """The provider path with its version prefix removed, ready to join onto a node.

    ``/v1/chat/completions`` -> ``/chat/completions``; a path outside the prefix is
    kept whole, so nothing is silently dropped.
    """
    prefix = route.strip_prefix.rstrip("/")
    if prefix and (path == prefix or path.startswith(prefix + "/")):
        return path[len(prefix) :] or "/"
    return path
