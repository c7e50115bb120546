"""The hook for requests: ``HTTPAdapter.send`` wrapped in place.

``HTTPAdapter.send`` is where a Session (and ``requests.get``/``post``, which make one)
hands a prepared request to urllib3: below the session's auth, cookies, redirects and
hooks, so one call of the app is one call here, as with httpx's transport. A request
whose host is not routed leaves after its URL is split and looked up. Attempts call the
original method directly with the node's URL, which is not routed either, so a request
is never handled twice, whatever runs on top of requests. A redirect from a node is a
failed attempt: ``Session.send``, above the hook, would follow it with the app's own
headers.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from ...core.routes import DEFAULT_PORTS
from ...pipeline._sync.driver import drive
from ...pipeline.call import Call
from ...runtime import current
from ..base import Hook
from .adapter import Lib, RequestsAdapter

# HTTPAdapter.send's parameters after the request, in order (requests 2.x).
_OPTIONS = ("stream", "timeout", "verify", "cert", "proxies")


class RequestsHook(Hook):
    name = "requests"
    module = "requests"
    distribution = "requests"
    minimum = (2, 28)

    def patch(self, module: ModuleType) -> None:
        adapters = importlib.import_module("requests.adapters")  # already imported by requests itself
        lib = Lib(module, importlib.import_module("urllib3"))
        self.wrap(adapters.HTTPAdapter, "send", _send_wrapper(lib))


def _send_wrapper(lib: Lib) -> Callable[..., Any]:
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
