"""The transport an attempt goes out through: the client's choice for the node's URL, not the provider's.

The client chose the hooked transport (and with it a proxy, or none) for the provider's URL:
an HTTPS_PROXY for api.openai.com, say, while NO_PROXY covers the node. So each attempt is
sent with the transport the same client would choose for the node's URL (its mounts: the
environment's proxies with NO_PROXY when it trusts the environment, or the app's own
``proxy=`` / ``mounts=``), and directly (the client's default transport) when the
environment's NO_PROXY covers the node, whatever proxy the app gave in code: a proxy the app
chose was chosen for the provider host, and NO_PROXY is where a user says a host is reached
directly. An https node through a proxy is tunnelled (CONNECT): the proxy sees its host and
port, never a header. A client without mounts has one transport for every URL: nothing to
choose, and nothing noted.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextvars import ContextVar
from functools import partial
from types import FunctionType
from typing import Any

from ..base import Hook
from ..proxies import no_proxy_covers

# (the client, the transport it chose) of the request being sent in this thread or task.
_chosen: ContextVar[tuple[Any, Any] | None] = ContextVar("yibu_httpx_sender", default=None)


def note_choices(hook: Hook, owner: type) -> None:
    """Wrap ``owner._transport_for_url`` (a Client class's), where a client chooses a transport
    for a URL, to note its choice. With a plain function: it runs for every request of every
    client, routed or not, and binding a wrapt wrapper costs more per call than the rest of what
    it does. Put back by ``unpatch`` like any wrapped method; wrapt only when another tool's
    wrapper is there already (kept, as ``Hook.wrap`` keeps it)."""
    original = owner.__dict__["_transport_for_url"]
    if not isinstance(original, FunctionType):
        hook.wrap(owner, "_transport_for_url", _note_choice)
        return

    @functools.wraps(original)
    def _transport_for_url(client: Any, url: Any) -> Any:
        transport = original(client, url)
        if client._mounts:
            _chosen.set((client, transport))
        return transport

    hook.replace(owner, "_transport_for_url", _transport_for_url)


def _note_choice(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: Any) -> Any:
    transport = wrapped(*args, **kwargs)
    if instance._mounts:
        _chosen.set((instance, transport))
    return transport


def sender_for(instance: Any, wrapped: Callable[..., Any], method: str) -> Callable[[Any], Any]:
    """How a routed call's attempts are sent: with ``wrapped`` (the hooked transport's own method),
    or, when the client that chose that transport has mounts, with the transport it chooses for
    each node. ``method``: the transports' method, ``handle_request`` or ``handle_async_request``."""
    noted = _chosen.get()
    if noted is None:
        return wrapped
    _chosen.set(None)
    client, chosen = noted
    if chosen is not instance:
        return wrapped  # noted for another transport: this one was called some other way
    return partial(_send_via_client, client, instance, wrapped, method)


def _send_via_client(client: Any, instance: Any, wrapped: Callable[..., Any], method: str, request: Any) -> Any:
    """Send ``request`` (to a node) with the transport ``client`` chooses for its URL. Another
    transport's method is hooked too, but the node's host is not routed: it sends at once."""
    url = request.url
    transport = client._transport if no_proxy_covers(url.host, url.port) else _mounted(client, url)
    if transport is instance:
        return wrapped(request)
    return getattr(transport, method)(request)


def _mounted(client: Any, url: Any) -> Any:
    """The transport ``client`` mounts for ``url``, as its ``_transport_for_url`` chooses it (not
    called, so that choosing for a node notes nothing)."""
    for pattern, transport in client._mounts.items():
        if pattern.matches(url):
            return client._transport if transport is None else transport
    return client._transport
