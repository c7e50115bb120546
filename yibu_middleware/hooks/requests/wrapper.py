"""requests' wrapped ``HTTPAdapter.send`` (see ``__init__``).

Imported when requests is (by ``RequestsHook.patch``), with the pipeline it drives calls
through: a process that never imports requests never loads either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ...core.routes import DEFAULT_PORTS
from ...pipeline._sync.driver import drive
from ...pipeline.call import Call
from ...runtime import current
from .adapter import Lib, RequestsAdapter

# HTTPAdapter.send's parameters after the request, in order (requests 2.x).
_OPTIONS = ("stream", "timeout", "verify", "cert", "proxies")


def send_wrapper(lib: Lib) -> Callable[..., Any]:
    def send(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        runtime = current()
        if runtime is None:
            return wrapped(*args, **kwargs)
        request = args[0] if args else kwargs["request"]
        url = urlsplit(request.url)
        route = runtime.routes.match(url.hostname or "", url.port or DEFAULT_PORTS.get(url.scheme), url.path)
        if route is None:
            return wrapped(*args, **kwargs)
        options = dict(zip(_OPTIONS, args[1:], strict=False))
        options.update((name, value) for name, value in kwargs.items() if name != "request")
        adapter = RequestsAdapter(lib, instance, wrapped, request, url, options)
        return drive(Call(runtime, route, adapter), adapter)

    return send
