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

from collections.abc import Callable, Iterable
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
        name = _idna(host, name)
    return name


def _idna(host: str, name: str) -> str:
    """IDNA 2008 with UTS 46 mapping, as httpx, requests and yarl encode hosts (the idna package,
    which httpx depends on); the standard library's IDNA 2003 codec if it is missing."""
    try:
        import idna
    except ImportError:  # pragma: no cover - httpx brings it
        try:
            return name.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"{host!r} is not a valid host name ({exc})") from None
    try:
        return str(idna.encode(name, uts46=True).decode("ascii"))
    except idna.IDNAError as exc:
        raise ValueError(f"{host!r} is not a valid host name ({exc})") from None


class _Served:
    """A route and the paths it serves, made ready for ``match``; remembers its answers."""

    __slots__ = ("every_path", "extra", "on_unrouted", "prefix", "route", "seen", "segments", "told")

    def __init__(self, route: Route, on_unrouted: Callable[[Route, str], None] | None = None) -> None:
        self.route = route
        self.on_unrouted = on_unrouted
        self.told: set[str] = set()  # the first segments on_unrouted was told of (bounded)
        self.prefix = route.strip_prefix.rstrip("/")
        self.segments = PROVIDER_PATHS.get(route.provider, frozenset())  # the provider's model API
        self.extra = tuple(path.rstrip("/") for path in route.paths if path.rstrip("/"))  # more prefixes
        self.every_path = any(not path.rstrip("/") for path in route.paths)  # paths holds "/"
        # path -> this route or None: a client asks for the same few paths again and again.
        # Bounded: an app's paths may hold ids.
        self.seen: dict[str, Route | None] = {}

    def route_for(self, path: str) -> Route | None:
        found = self.seen.get(path, _UNSEEN)
        if found is _UNSEEN:
            found = self.route if self._serves(path) else None
            if found is None and self.on_unrouted is not None:
                self._tell(path)
            if len(self.seen) >= 1024:
                self.seen.clear()
            self.seen[path] = found
        return found  # type: ignore[return-value]

    def _tell(self, path: str) -> None:
        """Once per first segment: a provider path left to go where the app sent it."""
        prefix = self.prefix
        rest = path[len(prefix) :] if prefix and path.startswith(prefix + "/") else path
        segment = "/" + rest.partition("/")[2].partition("/")[0]  # never the rest: it may hold ids
        if segment not in self.told and len(self.told) < 64 and self.on_unrouted is not None:
            self.told.add(segment)
            self.on_unrouted(self.route, segment)

    def _serves(self, path: str) -> bool:
        path = gateway_path(self.route, path)
        if self.every_path:
            return True
        if path.partition("/")[2].partition("/")[0] in self.segments:
            return True
        return any(path == extra or path.startswith(extra + "/") for extra in self.extra)


_UNSEEN: object = object()


class _Host:
    __slots__ = ("any_port", "by_port")

    def __init__(self) -> None:
        self.any_port: _Served | None = None  # a host key: every port
        self.by_port: dict[int, _Served] = {}  # host:port keys


class RouteTable:
    def __init__(self, routes: Iterable[Route], on_unrouted: Callable[[Route, str], None] | None = None) -> None:
        """``on_unrouted(route, segment)``: told once per first path segment (``/skills``) of a
        routed host that is not routed, for the log: such a request goes to the provider."""
        self._hosts: dict[str, _Host] = {}  # by canonical name
        for route in routes:
            host = self._hosts.setdefault(canonical_host(route.host), _Host())
            if route.port is None:
                host.any_port = _Served(route, on_unrouted)
            else:
                host.by_port[route.port] = _Served(route, on_unrouted)
        # The lookup ``match`` starts with: the canonical names, then each other spelling met
        # (``API.OpenAI.com.``) once it has been compared as DNS would (bounded).
        self._lookup: dict[str, _Host] = dict(self._hosts)
        self._others: set[str] = set()  # names met that are canonical and not routed (bounded)

    def match(self, host: str, port: int | None, path: str) -> Route | None:
        """The route of a request to ``host`` on ``port`` (the scheme's default when the URL
        names none; None when unknown) for ``path`` (without its query), or None: not routed."""
        entry = self._lookup.get(host)
        if entry is None:
            if host in self._others:
                return None
            entry = self._compare(host)
            if entry is None:
                return None
        by_port = entry.by_port
        served = by_port.get(port, entry.any_port) if by_port and port is not None else entry.any_port
        return None if served is None else served.route_for(path)

    def _compare(self, host: str) -> _Host | None:
        """A name not met before, compared as DNS would (case, trailing dot, IDNA)."""
        try:
            canonical = canonical_host(host)
        except ValueError:
            return None  # no client can send to it; nothing to route
        entry = self._hosts.get(canonical)
        if entry is None:
            if canonical == host:
                if len(self._others) >= 1024:
                    self._others.clear()
                self._others.add(host)
            return None
        if len(self._lookup) < len(self._hosts) + 256:
            self._lookup[host] = entry  # another spelling of a routed host
        return entry

    @property
    def hosts(self) -> list[str]:
        return list(self._hosts)

    @property
    def any_port_hosts(self) -> list[str]:
        """Hosts routed on every port (a provider's host; not a local server's host:port)."""
        return [name for name, host in self._hosts.items() if host.any_port is not None]


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
