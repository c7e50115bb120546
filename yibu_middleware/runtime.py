"""The per-process state of an installed middleware: settings turned into ready objects.

Built once by ``install()``; the hooks read it on every request through
``current()``. A forked child starts with fresh node counters (gunicorn and
multiprocessing workers must not inherit a parent's view of the nodes).
"""

from __future__ import annotations

import logging
import os
import threading

from .core.nodes import NodePool
from .core.redact import redact_text
from .core.routes import Route, RouteTable
from .settings import Settings

log = logging.getLogger("yibu_middleware")


class Runtime:
    __slots__ = (
        "_lock",
        "aliases",
        "gateway_key",
        "max_attempts",
        "pool",
        "routes",
        "settings",
        "swapped_keys",
    )

    def __init__(
        self,
        settings: Settings,
        routes: RouteTable,
        pool: NodePool,
        gateway_key: bytes | None,
        aliases: dict[str, str],
        max_attempts: int,
    ) -> None:
        self.settings = settings
        self.routes = routes
        self.pool = pool
        self.gateway_key = gateway_key
        self.aliases = aliases
        self.max_attempts = max_attempts
        # Provider keys swapped out at run time: kept only so they can be masked by value.
        self.swapped_keys: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        routes = {host: Route(host, spec.provider, spec.strip_prefix) for host, spec in settings.routes.items()}
        key = settings.api_key.get_secret_value().encode() if settings.api_key else None
        return cls(
            settings=settings,
            routes=RouteTable(routes),
            pool=NodePool(settings.gateway_nodes),
            gateway_key=key,
            aliases=dict(settings.model_aliases),
            max_attempts=settings.retry.max_attempts,
        )

    def remember_swapped(self, keys: list[str]) -> None:
        if keys:
            with self._lock:
                self.swapped_keys.update(keys)

    def known_secrets(self) -> tuple[str, ...]:
        secrets = tuple(self.swapped_keys)
        return (*secrets, self.gateway_key.decode()) if self.gateway_key else secrets

    def redact(self, text: str) -> str:
        return redact_text(text, self.known_secrets())

    def reset_after_fork(self) -> None:
        self.pool.reset()
        self._lock = threading.Lock()


_current: Runtime | None = None


def current() -> Runtime | None:
    return _current


def set_current(runtime: Runtime | None) -> None:
    global _current
    _current = runtime


def _after_fork_in_child() -> None:
    # Never raise in a fork hook: a crash here would kill a worker before it starts.
    try:
        if _current is not None:
            _current.reset_after_fork()
    except Exception:  # pragma: no cover - defensive
        log.exception("yibu-middleware: resetting state after fork failed")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
