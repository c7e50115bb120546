"""The hook for aiohttp: ``ClientSession._request`` wrapped in place, the attempts run as a client middleware.

Every way of sending with a session (``session.post(...)``, ``async with
session.post(...)``, ``session.request``, ``aiohttp.request``) goes through
``ClientSession._request``. It builds the final request (session headers merged,
``json=``/``data=`` encoded, auth and cookies applied) and passes it down a chain of
client middlewares (aiohttp 3.12+) to the function that connects and sends. The hook
adds one middleware of ours at the end of that chain, the innermost, so it sees each
request exactly as it goes on the wire, below the app's own middlewares, redirects
and timeouts, like the transports hooked for httpx. A request whose host is not routed
passes straight through it; one to a node (openai's ``DefaultAioHttpClient`` sends
over aiohttp after the httpx-family hook routed it) is not routed either, so a call
is never handled twice.
"""

from __future__ import annotations

from types import ModuleType

from ..base import Hook


class AiohttpHook(Hook):
    name = "aiohttp"
    module = "aiohttp"
    distribution = "aiohttp"
    minimum = (3, 12, 2)

    def patch(self, module: ModuleType) -> None:
        # Imported here, when aiohttp is: the wrapper brings the adapter and the pipeline.
        from .adapter import Lib
        from .wrapper import request_wrapper

        self.wrap(module.ClientSession, "_request", request_wrapper(Lib(module)))
