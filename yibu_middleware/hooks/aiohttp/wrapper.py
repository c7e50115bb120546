"""aiohttp's wrapped ``ClientSession._request`` and the middleware of ours it adds (see ``__init__``).

Imported when aiohttp is (by ``AiohttpHook.patch``), with the pipeline it drives calls
through: a process that never imports aiohttp never loads either.
"""

from __future__ import annotations

import functools
from typing import Any

from ...pipeline._async.driver import drive
from ...pipeline.call import Call
from ...runtime import current
from .adapter import AiohttpAdapter, Lib


def request_wrapper(lib: Lib) -> Any:
    async def _request(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if current() is None:
            return await wrapped(*args, **kwargs)
        # Ours goes last in the chain (innermost): the app's own middlewares see the call once,
        # as the app made it. Per-request middlewares replace the session's, as aiohttp has it.
        given = kwargs.get("middlewares")
        chain = instance._middlewares if given is None else given
        # Where the request's proxy comes from: the app's own (in code), else the environment's
        # (trust_env), else none; the node's is chosen by the same rule (AiohttpAdapter.node_proxy).
        explicit = kwargs.get("proxy") is not None or getattr(instance, "_default_proxy", None) is not None
        proxy_source = "explicit" if explicit else "environment" if instance._trust_env else ""
        ours = functools.partial(middleware, lib, kwargs.get("timeout", instance.timeout), proxy_source)
        kwargs["middlewares"] = (*chain, ours)
        return await wrapped(*args, **kwargs)

    return _request


async def middleware(lib: Lib, timeout: Any, proxy_source: str, request: Any, handler: Any) -> Any:
    """Our middleware: a request for a routed host becomes a call; any other passes through."""
    runtime = current()
    route = (
        runtime.routes.match(request.url.raw_host or "", request.url.port, request.url.path)
        if runtime is not None
        else None
    )
    if route is None or runtime is None:
        return await handler(request)
    body = request.body  # a Payload, or b"" when there is none
    data: bytes | None
    if isinstance(body, bytes):
        data = body
    elif isinstance(body, lib.BytesPayload):
        data = bytes(await body.as_bytes())  # bytes, str and json= bodies
    else:
        data = None  # a file, a stream or a multipart form: forwarded as it is, and never replayed
    adapter = AiohttpAdapter(lib, request, handler, data, timeout, proxy_source)
    return await drive(Call(runtime, route, adapter), adapter)
