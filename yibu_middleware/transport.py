"""Composition instead of patching: a transport an app hands to its client explicitly.

    client = OpenAI(http_client=httpx2.Client(transport=yibu_middleware.Transport()))
    client = AsyncOpenAI(http_client=httpx2.AsyncClient(transport=yibu_middleware.AsyncTransport()))
    client = httpx.Client(transport=yibu_middleware.Transport(library="httpx"))

A request through it goes through the same pipeline as a hooked one (the httpx adapter and
the driver), with its settings read exactly as ``install()`` reads them (the argument, the
environment, the settings file), whether or not ``YIBU_ENABLED`` is set, and nothing is
patched: no other client of the process changes. A request for a host that is not routed
is sent as it is, through ``inner``. Log records are masked only where the logging patch is
on (``install()``, or ``YIBU_ENABLED``): the transport's own messages and errors always are.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any, Literal

from .api import read_settings
from .hooks.httpx import call_async, call_sync, route_of
from .runtime import Runtime
from .settings import Settings

Library = Literal["httpx2", "httpx"]


def Transport(  # a class to its user: it makes the library's transport subclass
    settings: Settings | Mapping[str, Any] | None = None, *, library: Library = "httpx2", inner: Any = None
) -> Any:
    """A sync transport for ``library``'s ``Client`` that routes as ``install()`` would.
    ``inner``: the transport attempts (and unrouted requests) are sent with; by default the
    library's ``HTTPTransport()``. Raises ConfigError on bad settings or a missing gateway key."""
    lib = importlib.import_module(library)
    runtime = _runtime(settings)
    return _transport_classes(lib)[0](lib, runtime, inner if inner is not None else lib.HTTPTransport())


def AsyncTransport(
    settings: Settings | Mapping[str, Any] | None = None, *, library: Library = "httpx2", inner: Any = None
) -> Any:
    """The async twin of :func:`Transport`, for ``AsyncClient`` (``inner``: ``AsyncHTTPTransport()``)."""
    lib = importlib.import_module(library)
    runtime = _runtime(settings)
    return _transport_classes(lib)[1](lib, runtime, inner if inner is not None else lib.AsyncHTTPTransport())


def _runtime(settings: Settings | Mapping[str, Any] | None) -> Runtime:
    return Runtime(read_settings(settings))


class _Routing:
    """What both transports share: the settings in use, and the transport they send with."""

    def __init__(self, lib: ModuleType, runtime: Runtime, inner: Any) -> None:
        self.lib, self.runtime, self.inner = lib, runtime, inner


class _SyncRouting(_Routing):
    def handle_request(self, request: Any) -> Any:
        route = route_of(self.runtime, request)
        if route is None:
            return self.inner.handle_request(request)
        return call_sync(self.lib, self.runtime, route, request, self.inner.handle_request)

    def close(self) -> None:
        self.inner.close()


class _AsyncRouting(_Routing):
    async def handle_async_request(self, request: Any) -> Any:
        route = route_of(self.runtime, request)
        if route is None:
            return await self.inner.handle_async_request(request)
        return await call_async(self.lib, self.runtime, route, request, self.inner.handle_async_request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@functools.cache
def _transport_classes(lib: ModuleType) -> tuple[type, type]:
    """Ours, mixed with the library's BaseTransport and AsyncBaseTransport (which its clients expect)."""
    return (
        type("Transport", (_SyncRouting, lib.BaseTransport), {"__module__": __name__}),
        type("AsyncTransport", (_AsyncRouting, lib.AsyncBaseTransport), {"__module__": __name__}),
    )
