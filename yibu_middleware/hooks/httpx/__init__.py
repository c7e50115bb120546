"""The hook for httpx and httpx2 (same API), and the aiohttp-backed transports the SDKs ship.

It sits on the transport's ``handle_request`` / ``handle_async_request``, below the
client's auth, redirects and the SDK's own retry loop, so one call of the SDK is one call
here. A request whose host is not routed leaves after one dict lookup. A request we send
on to a node is not routed either (its host is the node's), so a transport stacked on
another hooked transport never handles a call twice. A routed request becomes a ``Call``,
driven by the pipeline's driver with this library's adapter (``adapter.py``, and the I/O
in ``_async/adapter.py`` and its generated sync twin).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from ...core.routes import DEFAULT_PORTS, Route
from ...pipeline._async.driver import drive as drive_async
from ...pipeline._sync.driver import drive
from ...pipeline.call import Call
from ...runtime import Runtime, current
from ..base import Hook
from ._async.adapter import AsyncHttpxAdapter
from ._sync.adapter import SyncHttpxAdapter
from .adapter import failure_kinds
from .sender import note_choices, sender_for

SYNC_METHOD = "handle_request"
ASYNC_METHOD = "handle_async_request"


class HttpxHook(Hook):
    def __init__(
        self,
        name: str,
        module: str,
        classes: dict[str, str],
        library: str,
        distribution: str,
        minimum: tuple[int, ...] = (),
    ) -> None:
        """``classes`` maps a transport class name in ``module`` to its request method; ``library``
        is the module whose Request/Response/exception types those methods use; ``minimum``:
        the oldest release of ``distribution`` supported."""
        super().__init__()
        self.name = name
        self.module = module
        self.classes = classes
        self.library = library
        self.distribution = distribution
        self.minimum = minimum

    def patch(self, module: ModuleType) -> None:
        lib = importlib.import_module(self.library)  # already imported by `module` itself
        for class_name, method in self.classes.items():
            owner = getattr(module, class_name)
            self.wrap(owner, method, async_wrapper(lib) if method == ASYNC_METHOD else sync_wrapper(lib))
        if module is lib:
            # Where a client chooses a transport (and so a proxy) for a URL: noted, so that each
            # attempt can be sent with the transport the client chooses for the node's URL.
            for client_class in ("Client", "AsyncClient"):
                note_choices(self, getattr(lib, client_class))


def route_of(runtime: Runtime, request: Any) -> Route | None:
    """The route of an httpx request for ``runtime``: None for a host (or path) not routed."""
    url = request.url
    return runtime.routes.match(url.host, url.port or DEFAULT_PORTS.get(url.scheme), url.path)


def call_sync(lib: ModuleType, runtime: Runtime, route: Route, request: Any, send: Callable[[Any], Any]) -> Any:
    """A routed request through the pipeline; ``send`` sends one attempt (see ``sender.py``).
    Shared by the hook and the composition transport (``yibu_middleware.transport``)."""
    adapter = SyncHttpxAdapter(lib, failure_kinds(lib), request, send)
    return drive(Call(runtime, route, adapter), adapter)


async def call_async(lib: ModuleType, runtime: Runtime, route: Route, request: Any, send: Callable[[Any], Any]) -> Any:
    """The async twin of ``call_sync``."""
    adapter = AsyncHttpxAdapter(lib, failure_kinds(lib), request, send)
    return await drive_async(Call(runtime, route, adapter), adapter)


def sync_wrapper(lib: ModuleType) -> Callable[..., Any]:
    def handle_request(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: Any) -> Any:
        request = args[0] if args else kwargs["request"]
        runtime = current()
        route = None if runtime is None else route_of(runtime, request)
        if runtime is None or route is None:
            return wrapped(*args, **kwargs)
        return call_sync(lib, runtime, route, request, sender_for(instance, wrapped, SYNC_METHOD))

    return handle_request


def async_wrapper(lib: ModuleType) -> Callable[..., Any]:
    async def handle_async_request(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: Any
    ) -> Any:
        request = args[0] if args else kwargs["request"]
        runtime = current()
        route = None if runtime is None else route_of(runtime, request)
        if runtime is None or route is None:
            return await wrapped(*args, **kwargs)
        return await call_async(lib, runtime, route, request, sender_for(instance, wrapped, ASYNC_METHOD))

    return handle_async_request
