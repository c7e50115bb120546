"""Adapter for httpx and httpx2 (same API), and the aiohttp-backed transports the SDKs ship.

The hook sits on the transport's ``handle_request`` / ``handle_async_request``, below
the client's auth, redirects and the SDK's own retry loop, so one call of the SDK is
one call here. The sync and async wrappers are the same loop, once with ``await``;
every decision is made by the core (routes, request, plan).

A request whose host is not routed leaves after one dict lookup. A request we send
on to a node is not routed either (its host is the node's), so a transport stacked
on another hooked transport never handles a call twice.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from ..core.plan import CallPlan, Deliver, Failure, GiveUp, Send
from ..core.request import GatewayRequest, prepare
from ..runtime import Runtime, current
from .base import Hook

log = logging.getLogger("yibu_middleware.calls")


class HttpxFamilyHook(Hook):
    def __init__(self, name: str, module: str, classes: dict[str, str], library: str, distribution: str) -> None:
        """``classes`` maps a class name in ``module`` to its request method; ``library``
        is the module whose Request/Response/exception types those methods use."""
        super().__init__()
        self.name = name
        self.module = module
        self.classes = classes
        self.library = library
        self.distribution = distribution

    def patch(self, module: ModuleType) -> None:
        lib = importlib.import_module(self.library)  # already imported by `module` itself
        for class_name, method in self.classes.items():
            owner = getattr(module, class_name)
            if method == "handle_async_request":
                self.wrap(owner, method, _async_wrapper(lib))
            else:
                self.wrap(owner, method, _sync_wrapper(lib))


def _sync_wrapper(lib: ModuleType) -> Callable[..., Any]:
    def handle_request(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: Any) -> Any:
        runtime = current()
        request = args[0] if args else kwargs["request"]
        route = runtime.routes.match(request.url.host) if runtime else None
        if route is None or runtime is None:
            return wrapped(*args, **kwargs)
        call = _Call(lib, runtime, request, prepare_from(lib, runtime, request, route))
        action: Send | Deliver | GiveUp = call.plan.start()
        response = None
        while isinstance(action, Send):
            try:
                response = wrapped(call.request_for(action.node))
            except lib.TransportError as exc:
                action = call.failed(action, exc)
                continue
            action = call.plan.on_response(action.node, response.status_code)
        return call.finish(action, response)

    return handle_request


def _async_wrapper(lib: ModuleType) -> Callable[..., Any]:
    async def handle_async_request(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: Any
    ) -> Any:
        runtime = current()
        request = args[0] if args else kwargs["request"]
        route = runtime.routes.match(request.url.host) if runtime else None
        if route is None or runtime is None:
            return await wrapped(*args, **kwargs)
        call = _Call(lib, runtime, request, prepare_from(lib, runtime, request, route))
        action: Send | Deliver | GiveUp = call.plan.start()
        response = None
        while isinstance(action, Send):
            try:
                response = await wrapped(call.request_for(action.node))
            except lib.TransportError as exc:
                action = call.failed(action, exc)
                continue
            action = call.plan.on_response(action.node, response.status_code)
        return call.finish(action, response)

    return handle_async_request


def prepare_from(lib: ModuleType, runtime: Runtime, request: Any, route: Any) -> GatewayRequest:
    try:
        body: bytes | None = request.content
    except lib.RequestNotRead:
        body = None  # a streamed body: forwarded as it is, and never replayed
    url = request.url
    return prepare(
        route,
        request.method,
        url.path,
        url.query.decode("ascii"),
        request.headers.raw,
        body,
        runtime.gateway_key,
        runtime.aliases,
    )


class _Call:
    """The state one call carries between attempts; shared by the sync and async loops."""

    __slots__ = ("gateway", "last_error", "lib", "original", "plan", "runtime", "started")

    def __init__(self, lib: ModuleType, runtime: Runtime, original: Any, gateway: GatewayRequest) -> None:
        self.lib = lib
        self.runtime = runtime
        self.original = original
        self.gateway = gateway
        self.plan = CallPlan(runtime.pool, runtime.max_attempts, replayable=gateway.body is not None)
        self.last_error: Exception | None = None
        self.started = time.perf_counter()
        runtime.remember_swapped(gateway.swapped_keys)

    def request_for(self, node: Any) -> Any:
        gateway = self.gateway
        url = node.url_for(gateway.path, gateway.query)
        if gateway.body is None:
            return type(self.original)(
                gateway.method,
                url,
                headers=gateway.headers,
                stream=self.original.stream,
                extensions=self.original.extensions,
            )
        return type(self.original)(
            gateway.method,
            url,
            headers=gateway.headers,
            content=gateway.body,
            extensions=self.original.extensions,
        )

    def failed(self, action: Send, exc: Exception) -> Send | GiveUp:
        self.last_error = exc
        if isinstance(exc, self.lib.ConnectTimeout):
            failure = Failure.CONNECT_TIMEOUT
        elif isinstance(exc, self.lib.ConnectError):
            failure = Failure.CONNECT
        else:
            failure = Failure.OTHER
        return self.plan.on_error(action.node, failure, self.runtime.redact(str(exc)))

    def finish(self, action: Deliver | GiveUp, response: Any) -> Any:
        elapsed_ms = (time.perf_counter() - self.started) * 1000
        gateway = self.gateway
        where = f"{self.original.method} {gateway.route.host}{self.original.url.path}"
        if isinstance(action, Deliver):
            if log.isEnabledFor(logging.INFO):
                failovers = "; ".join(f"{s.node.label} {s.outcome}" for s in self.plan.failovers)
                log.info(
                    "%s model=%s -> %s %s in %.1f ms%s",
                    where,
                    _model_note(gateway),
                    action.node.label,
                    response.status_code,
                    elapsed_ms,
                    f" (failover from: {failovers})" if failovers else "",
                )
            return response
        error: Any = self.last_error
        assert error is not None  # GiveUp only ever follows a failed attempt
        message = self.runtime.redact(
            f"yibu-middleware: {where} got no answer from the gateway ({self.plan.summary()}); {action.reason}"
        )
        log.warning("%s", message)
        if len(self.plan.steps) == 1 and not isinstance(error, self.lib.ConnectError):
            error.add_note(message)  # one attempt that may have been sent: the error as it came
            raise error
        # The same exception type the client would have raised, so the SDK maps it to its
        # usual error (APIConnectionError, APITimeoutError), with every node's story in it.
        try:
            replacement = type(error)(message, request=self.original)
        except TypeError:
            replacement = self.lib.ConnectError(message, request=self.original)
        raise replacement from error


def _model_note(gateway: GatewayRequest) -> str:
    if gateway.requested_model != gateway.model:
        return f"{gateway.requested_model}->{gateway.model}"
    return str(gateway.model)
