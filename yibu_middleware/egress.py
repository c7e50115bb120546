"""The egress guard (``egress.block_unrouted_providers``, off by default): nothing in this
process reaches an LLM provider's host except through the gateway.

Routing works on the HTTP clients it hooks. Traffic that is not theirs (the openai
Realtime websocket, a raw socket, ``http.client``/``urllib``, a client library we do not
hook) or that routing leaves alone on purpose (a provider path the gateway does not serve,
such as an OAuth token exchange) would go straight to the provider. With the guard on,
Python's audit hooks (PEP 578) see every name lookup and connect made through the
``socket`` module; one for a known provider host is refused before any DNS query or
connection, with an :class:`EgressBlocked` (a ``PermissionError``) naming the host and the
setting, and a warning is logged.

Hosts guarded: ``PROVIDER_HOSTS``, every routed host, and ``egress.extra_hosts``; never a
gateway node (routed calls go to the nodes, so they are never refused). Names compare as
DNS compares them (case, trailing dot, IDNA).

A bare ``sock.connect((name, port))`` is the one case refused only after the name was looked
up: CPython resolves the name inside ``connect`` before the audit event; the connection is
still refused. Clients (``socket.create_connection``, asyncio, httpx, urllib3, aiohttp,
websockets) look the name up first, and are refused before any query.

What an audit hook cannot see, and the guard therefore cannot stop: connections made
outside Python's socket module (gRPC's C core, which resolves and connects in C; a C
library's own sockets), a name resolved by such a resolver and then connected to by
address (aiohttp with aiodns), and traffic through an HTTP proxy (the process connects to
the proxy; the provider's name is only inside the CONNECT request).

An audit hook cannot be removed (by design): the hook is added the first time the guard is
switched on, and does nothing once it is off again (``uninstall``, or settings without it).
A process that never turns the guard on never has the hook.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterable
from typing import Any

from .core.routes import canonical_host

log = logging.getLogger("yibu_middleware")

SETTING = "egress.block_unrouted_providers"

# The API hosts of the LLM providers most used from Python, OpenAI-compatible or not.
PROVIDER_HOSTS = frozenset(
    {
        "api.openai.com",
        "api.anthropic.com",
        "generativelanguage.googleapis.com",
        "aiplatform.googleapis.com",
        "api.mistral.ai",
        "api.deepseek.com",
        "api.groq.com",
        "api.x.ai",
        "api.cohere.com",
        "api.cohere.ai",
        "openrouter.ai",
        "api.together.xyz",
        "api.together.ai",
        "api.fireworks.ai",
        "api.perplexity.ai",
        "api.moonshot.cn",
        "api.moonshot.ai",
        "dashscope.aliyuncs.com",
        "dashscope-intl.aliyuncs.com",
        "open.bigmodel.cn",
        "api.z.ai",
        "api.minimax.chat",
        "api.minimaxi.com",
        "api.baichuan-ai.com",
        "api.lingyiwanwu.com",
        "ark.cn-beijing.volces.com",
        "qianfan.baidubce.com",
        "api.siliconflow.cn",
        "api.cerebras.ai",
        "api.sambanova.ai",
        "api.ai21.com",
        "api.voyageai.com",
        "api.replicate.com",
        "api-inference.huggingface.co",
        "router.huggingface.co",
        "api.elevenlabs.io",
        "api.assemblyai.com",
        "api.deepinfra.com",
        "api.novita.ai",
        "api.hyperbolic.xyz",
        "api.lambda.ai",
        "api.nebius.ai",
        "inference.baseten.co",
    }
)

_NAME_EVENTS = frozenset({"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex"})
_ADDRESS_EVENTS = frozenset({"socket.connect", "socket.connect_ex", "socket.sendto", "socket.sendmsg"})


class EgressBlocked(PermissionError):
    """A connection to an LLM provider's host that does not go through the gateway."""


# The guarded names while the guard is on; None when off (the hook then returns at once).
_blocked: frozenset[str] | None = None
_hook_added = False
_lock = threading.Lock()


def guarded_hosts(routed: Iterable[str], extra: Iterable[str], nodes: Iterable[str]) -> frozenset[str]:
    """Provider hosts, routed hosts and the extra ones, less the gateway nodes' hosts."""
    names = {canonical_host(host) for host in (*PROVIDER_HOSTS, *routed, *extra)}
    return frozenset(names - {canonical_host(host) for host in nodes})


def install(hosts: frozenset[str] | None) -> None:
    """Guard these hosts (None or empty: the guard is off)."""
    global _blocked
    if not hosts:
        _blocked = None
        return
    ensure_hook()
    _blocked = hosts


def uninstall() -> None:
    global _blocked
    _blocked = None


def active() -> bool:
    return _blocked is not None


def ensure_hook() -> None:
    """Add the audit hook, once per process (it cannot be taken out again)."""
    global _hook_added
    with _lock:
        if not _hook_added:
            sys.addaudithook(_audit)
            _hook_added = True


def _audit(event: str, args: tuple[Any, ...]) -> None:
    # Called for every audit event of the process (imports, opens, ...): the guard off, or
    # any event but a socket's, returns after one global read and a set lookup.
    blocked = _blocked
    if blocked is None:
        return
    if event in _NAME_EVENTS:
        host = args[0]
    elif event in _ADDRESS_EVENTS:
        address = args[1] if len(args) > 1 else None
        if not isinstance(address, tuple) or not address:
            return  # a Unix socket, or an address family with no host name
        host = address[0]
    else:
        return
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str) or not host:
        return
    name = host if host in blocked else _canonical(host)
    if name in blocked:
        _refuse(name, event)


def _canonical(host: str) -> str:
    try:
        return canonical_host(host)
    except ValueError:
        return host


def _refuse(host: str, event: str) -> None:
    message = (
        f"yibu-middleware egress guard: refused a connection to {host}, an LLM provider's host, that"
        " does not go through the gateway (setting: egress.block_unrouted_providers = true). Send this"
        " traffic with a client the middleware routes (httpx, httpx2, requests, aiohttp) to a routed"
        " path, or add a route for it; or turn the guard off."
    )
    log.warning("%s [%s]", message, event)
    raise EgressBlocked(message)
