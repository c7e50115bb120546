"""Which requests are redirected, and where their path lands on a gateway node.

Pure functions over plain strings: no client library is imported here. The route
table is consulted for every request the hooked clients send, so ``match`` starts with
a single dict lookup on the host as the client gave it.

Hosts are compared the way DNS compares them, so that no spelling of a provider's name
goes around the routes: case-insensitively, with or without the trailing dot of a fully
qualified name (``api.openai.com.``), and after IDNA (UTS 46) encoding, so that a Unicode
spelling that encodes to a routed host (fullwidth letters, say) is that host. A route
key is either a host, which matches it on any port, or ``host:port``, which matches that
port only (and wins over the host alone); the adapters pass the port the connection goes
to, the scheme's default port when the URL names none.

Only the paths the gateway serves are routed: each provider's model API (``OPENAI_PATHS``,
``ANTHROPIC_PATHS``), plus a route's own ``paths``. Anything else on a provider host (an
identity provider's token exchange such as Anthropic's ``/v1/oauth/token``, an admin API)
carries credentials the gateway did not issue and cannot serve: it is left to go where
the app sent it, untouched (and the opt-in egress guard, ``egress.py``, refuses it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

# The first path segment, after the route's ``strip_prefix``, of each provider's model API:
# what a relay gateway serves. Every resource of the API a model key is used for is here, so
# that no such call leaves with the provider key; what is left out are endpoints that take
# other credentials (OAuth and workload-identity token exchanges, organisation admin keys).
OPENAI_PATHS = frozenset(
    {
        "assistants",
        "audio",  # speech, transcriptions, translations
        "batches",
        "chat",  # chat/completions
        "completions",
        "containers",
        "conversations",
        "embeddings",
        "evals",
        "files",
        "fine_tuning",
        "images",
        "models",
        "moderations",
        "realtime",  # client_secrets, sessions, calls: ephemeral keys are minted with the model key
        "responses",
        "threads",
        "uploads",
        "vector_stores",
        "videos",
    }
)
ANTHROPIC_PATHS = frozenset(
    {
        "messages",  # messages, messages/count_tokens, messages/batches
        "complete",
        "models",
        "files",
    }
)
PROVIDER_PATHS = {"openai": OPENAI_PATHS, "anthropic": ANTHROPIC_PATHS}

DEFAULT_PORTS = {"https": 443, "http": 80, "wss": 443, "ws": 80}


class Route(NamedTuple):
    host: str  # canonical (see ``canonical_host``)
    provider: str  # "openai" or "anthropic": the wire format of errors we build for it
    strip_prefix: str  # e.g. "/v1": removed before the path is joined onto a node URL
    port: int | None = None  # None: the host on any port
    paths: tuple[str, ...] = ()  # gateway-side path prefixes routed besides the provider's ("/" for all)


def canonical_host(host: str) -> str:
    """A host name as DNS compares it: lower-case, no trailing dot, IDNA-encoded (UTS 46).

    Raises ``ValueError`` for a name IDNA cannot encode (no client could send to it either).
    """
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name.isascii():
        import idna  # a dependency of httpx; only for the rare Unicode host

        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise ValueError(f"{host!r} is not a valid host name ({exc})") from None
    return name


class _Served(NamedTuple):
    """A route and the paths it serves, made ready for ``match``."""

    route: Route
    prefix: str  # strip_prefix without its trailing slash
    segments: frozenset[str]  # first segments served (the provider's model API)
    extra: tuple[str, ...]  # more prefixes, from the route's ``paths``
    every_path: bool  # ``paths`` holds "/"

    def serves(self, path: str) -> bool:
        prefix = self.prefix
        if prefix and (path == prefix or path.startswith(prefix + "/")):
            path = path[len(prefix) :]
        if self.every_path:
            return True
        if path.partition("/")[2].partition("/")[0] in self.segments:
            return True
        return any(path == extra or path.startswith(extra + "/") for extra in self.extra)


class RouteTable:
    def __init__(self, routes: Iterable[Route]) -> None:
        # host -> (the route for any port, or None; routes for one port each)
        self._by_host: dict[str, tuple[_Served | None, dict[int, _Served]]] = {}
        for route in routes:
            host = canonical_host(route.host)
            any_port, by_port = self._by_host.get(host, (None, {}))
            served = _Served(
                route,
                route.strip_prefix.rstrip("/"),
                PROVIDER_PATHS.get(route.provider, frozenset()),
                tuple(path.rstrip("/") for path in route.paths if path.rstrip("/")),
                any(not path.rstrip("/") for path in route.paths),
            )
            if route.port is None:
                any_port = served
            else:
                by_port[route.port] = served
            self._by_host[host] = (any_port, by_port)

    def match(self, host: str, port: int | None, path: str) -> Route | None:
        """The route of a request to ``host`` on ``port`` (the scheme's default when the URL
        names none; None when unknown) for ``path`` (without its query), or None: not routed."""
        entry = self._by_host.get(host)
        if entry is None:
            # Not as it was written: compare it as DNS would (case, trailing dot, IDNA).
            try:
                canonical = canonical_host(host)
            except ValueError:
                return None  # no client can send to it; nothing to route
            if canonical == host:
                return None
            entry = self._by_host.get(canonical)
            if entry is None:
                return None
        any_port, by_port = entry
        served = by_port.get(port, any_port) if by_port and port is not None else any_port
        if served is None or not served.serves(path):
            return None
        return served.route

    def routed_host(self, host: str, port: int | None) -> bool:
        """Whether requests to this host (and port) are routed, for some path."""
        try:
            entry = self._by_host.get(canonical_host(host))
        except ValueError:
            return False
        if entry is None:
            return False
        any_port, by_port = entry
        return any_port is not None or (port is not None and port in by_port)

    @property
    def hosts(self) -> list[str]:
        return list(self._by_host)

    @property
    def any_port_hosts(self) -> list[str]:
        """Hosts routed on every port (a provider's host; not a local server's host:port)."""
        return [host for host, (any_port, _) in self._by_host.items() if any_port is not None]


def gateway_path(route: Route, path: str) -> str:
    """The provider path with its version prefix removed, ready to join onto a node.

    ``/v1/chat/completions`` -> ``/chat/completions``; a path outside the prefix is
    kept whole, so nothing is silently dropped.
    """
    prefix = route.strip_prefix.rstrip("/")
    if prefix and (path == prefix or path.startswith(prefix + "/")):
        return path[len(prefix) :] or "/"
    return path


def parse_route_key(key: str) -> tuple[str, int | None]:
    """A route key, ``host`` or ``host:port``, as (canonical host, port or None).

    Raises ``ValueError`` with the form expected: a URL (scheme, path) is not a key, since a
    route names where requests go to, not an endpoint.
    """
    text = str(key).strip()
    if not text:
        raise ValueError("a route key is empty; expected a host such as 'api.openai.com'")
    if "://" in text or "/" in text or "?" in text or "#" in text or "@" in text:
        from urllib.parse import urlsplit

        parts = urlsplit(text if "://" in text else "//" + text)
        shown = parts.hostname or "api.example.com"
        if parts.port is not None:
            shown += f":{parts.port}"
        raise ValueError(
            f"route key {text!r} is a URL; a key is a host, or host:port, such as {shown!r}."
            " To remove a path prefix before the rest goes to the gateway, give the route"
            ' strip_prefix, e.g. {"provider": "openai", "strip_prefix": "/openai/v1"}'
        )
    host, port = text, None
    if text.startswith("["):  # [IPv6] or [IPv6]:port
        end = text.find("]")
        if end < 0 or (text[end + 1 :] and not text[end + 1 :].startswith(":")):
            raise ValueError(f"route key {text!r}: expected [IPv6 address] or [IPv6 address]:port")
        host, rest = text[1:end], text[end + 2 :]
        port_text: str | None = rest if text[end + 1 :] else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        raise ValueError(f"route key {text!r}: write an IPv6 address in brackets, e.g. '[::1]:8080'")
    else:
        port_text = None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"route key {text!r}: the port must be a number from 1 to 65535")
        port = int(port_text)
    if not host:
        raise ValueError(f"route key {text!r} has no host; expected a host such as 'api.openai.com'")
    return canonical_host(host), port


def route_key(host: str, port: int | None) -> str:
    """The canonical spelling of a route key, as the settings keep it."""
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"
