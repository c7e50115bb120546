"""The per-process state of an installed middleware: settings turned into ready objects.

Built once by ``install()``; the hooks read it on every request through
``current()``. No thread starts at import or install: the optional health checker
starts with the first redirected call. A forked child (gunicorn and multiprocessing
workers) starts clean: fresh node statistics, budget and locks, and no inherited
checker thread.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Collection
from typing import TYPE_CHECKING

from .core.nodes import NodePool
from .core.plan import Hedging, RetryPolicy
from .core.policy import Rules
from .core.redact import redact_text
from .core.retry import RetryBudget
from .core.routes import Route, RouteTable
from .settings import Settings

if TYPE_CHECKING:
    from .limiter import Limiter

log = logging.getLogger("yibu_middleware")

CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


class Runtime:
    __slots__ = (
        "_checker",
        "_lock",
        "aliases",
        "budget",
        "capture_content",
        "gateway_key",
        "hedging",
        "limiter",
        "policy",
        "pool",
        "routes",
        "rules",
        "settings",
        "swapped_keys",
    )

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.routes = RouteTable(
            {host: Route(host, spec.provider, spec.strip_prefix) for host, spec in settings.routes.items()}
        )
        ejection = settings.ejection
        self.pool = NodePool(
            settings.gateway_nodes,
            weights=settings.node_weights,
            pin=settings.pin,
            eject_after=ejection.consecutive_failures,
            eject_base=ejection.base_seconds,
            eject_max=ejection.max_seconds,
        )
        retry = settings.retry
        self.policy = RetryPolicy(retry.max_attempts, retry.backoff_base, retry.backoff_max, retry.max_retry_after)
        self.budget = RetryBudget(retry.budget_ratio, retry.budget_floor)
        hedge = settings.hedge
        self.hedging = Hedging(RetryBudget(hedge.max_share, 1), hedge.min_samples) if hedge.enabled else None
        # Client-side limits (None: no limit set, nothing to pay) and policy rules.
        self.limiter: Limiter | None = None
        if settings.limits.active:
            from .limiter import Limiter  # only when a limit is set

            self.limiter = Limiter.from_settings(settings.limits, self.pool.nodes)
        self.rules = Rules.from_settings(settings.policy)
        # Message content in spans only on opt-in: read once, as OpenTelemetry's instrumentations do.
        self.capture_content = os.environ.get(CAPTURE_CONTENT_ENV, "").strip().lower() in ("1", "true", "yes", "on")
        self.gateway_key = settings.api_key.get_secret_value().encode() if settings.api_key else None
        self.aliases = dict(settings.model_aliases)
        # Provider keys swapped out at run time: kept only so they can be masked by value.
        self.swapped_keys: set[str] = set()
        self._lock = threading.Lock()
        self._checker: threading.Thread | None = None

    def remember_swapped(self, keys: Collection[str]) -> None:
        if keys and not self.swapped_keys.issuperset(keys):
            with self._lock:
                self.swapped_keys.update(keys)

    def known_secrets(self) -> tuple[str, ...]:
        secrets = tuple(self.swapped_keys)
        return (*secrets, self.gateway_key.decode()) if self.gateway_key else secrets

    def redact(self, text: str) -> str:
        redaction = self.settings.redaction
        return redact_text(text, self.known_secrets(), tuple(redaction.extra_headers), tuple(redaction.extra_patterns))

    def ensure_health_checker(self) -> None:
        """Start the active health checker on first use, if it is switched on."""
        if self._checker is not None or not self.settings.health_check.interval:
            return
        with self._lock:
            if self._checker is None:
                from .health import new_checker

                self._checker = new_checker(self)
                self._checker.start()

    def stop(self) -> None:
        self._checker = None  # the checker thread sees it is no longer current and ends

    def reset_after_fork(self) -> None:
        self.pool.reset()
        self.budget.reset()
        if self.hedging is not None:
            self.hedging.reset()
        if self.limiter is not None:
            self.limiter.reset()  # the parent's waiters and slots are not this process's
        self._lock = threading.Lock()
        self._checker = None  # threads do not survive fork; a new one starts on first use


_current: Runtime | None = None


def current() -> Runtime | None:
    return _current


def set_current(runtime: Runtime | None) -> None:
    global _current
    if _current is not None:
        _current.stop()
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
