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
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

from .core.affinity import Remembered
from .core.nodes import Node, NodePool
from .core.plan import Hedging, RetryPolicy
from .core.policy import Rules
from .core.redact import KnownValues, redact_text
from .core.retry import RetryBudget
from .core.routes import Route, RouteTable, parse_route_key
from .errors import ConfigError
from .settings import Settings, default_keys_of, gateway_key_of, model_keys

if TYPE_CHECKING:
    from .core.fallbacks import Fallbacks
    from .core.keys import GatewayKey, KeyRing
    from .fleet import Fleet, FleetLimiter, Syncer
    from .fleet.shared import FleetSpend
    from .keyfiles import KeyFiles
    from .limiter import Limiter
    from .spend import SpendTracker

log = logging.getLogger("yibu_middleware")

CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


class Runtime:
    __slots__ = (
        "_checker",
        "_extra_headers",
        "_extra_patterns",
        "_lock",
        "_syncer",
        "affinity",
        "aliases",
        "budget",
        "capture_content",
        "fallbacks",
        "fleet",
        "gateway_key",
        "hedging",
        "key_files",
        "keys",
        "known_values",
        "last_swapped",
        "limiter",
        "policy",
        "pool",
        "routes",
        "rules",
        "settings",
        "spend",
    )

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # redact() runs for every log record: its settings as the tuples redact_text takes, made once.
        self._extra_headers = tuple(settings.redaction.extra_headers)
        self._extra_patterns = tuple(settings.redaction.extra_patterns)
        self.routes = RouteTable(
            (
                Route(host, spec.provider, spec.strip_prefix, port, spec.paths)
                for (host, port), spec in ((parse_route_key(key), spec) for key, spec in settings.routes.items())
            ),
            _unrouted_path,
        )
        ejection = settings.ejection
        self.pool = NodePool(
            settings.gateway_nodes,
            weights=settings.node_weights,
            pin=settings.pin,
            eject_after=ejection.consecutive_failures,
            eject_base=ejection.base_seconds,
            eject_max=ejection.max_seconds,
            load_factor=settings.affinity.load_factor,
            slow_factor=settings.affinity.slow_factor,
        )
        # Context affinity: which node produced a Responses answer, or served a conversation's
        # last turn (a later turn that names it goes there); None: affinity is off.
        self.affinity: Remembered[str, Node] | None = Remembered(4096) if settings.affinity.enabled else None
        retry = settings.retry
        self.policy = RetryPolicy(retry.max_attempts, retry.backoff_base, retry.backoff_max, retry.max_retry_after)
        self.budget = RetryBudget(retry.budget_ratio, retry.budget_floor)
        hedge = settings.hedge
        self.hedging = Hedging(RetryBudget(hedge.max_share, 1), hedge.min_samples) if hedge.enabled else None
        self.gateway_key = gateway_key_of(settings)  # ConfigError without a key or keys.pass_through
        # Client-side limits (None: no limit set, nothing to pay) and policy rules.
        self.limiter: Limiter | FleetLimiter | None = None
        if settings.limits.active:
            from .limiter import Limiter  # only when a limit is set

            self.limiter = Limiter.from_settings(settings.limits, self.pool.nodes)
        # Fleet mode (state.redis_url): limits and node knowledge shared through Redis.
        self.fleet: Fleet | None = None
        self._syncer: Syncer | None = None
        if settings.state.active:
            self.fleet, self.limiter = _fleet_of(settings, self.gateway_key, self.limiter)
        self.rules = Rules.from_settings(settings.policy)
        # Spend tracking (None: no price, budget, ledger or spend.track set; nothing to pay).
        self.spend: SpendTracker | None = None
        if settings.spend_active:
            from .spend import SpendTracker

            self.spend = SpendTracker(settings, store=_fleet_spend() if self.fleet is not None else None)
        # Model fallbacks (None: none configured; a call then looks at nothing).
        self.fallbacks: Fallbacks | None = None
        if settings.fallbacks or settings.context_fallbacks:
            from .core.fallbacks import Fallbacks, Trigger

            self.fallbacks = Fallbacks(
                settings.fallbacks,
                settings.context_fallbacks,
                [Trigger(name) for name in settings.fallback_on],
                self.rules.model_allowed,
            )
        # Message content in spans only on opt-in: read once, as OpenTelemetry's instrumentations do.
        self.capture_content = os.environ.get(CAPTURE_CONTENT_ENV, "").strip().lower() in ("1", "true", "yes", "on")
        self.aliases = dict(settings.model_aliases)
        # Secrets masked by exact value: the gateway key, and the provider keys swapped out at
        # run time (the most recently used ones only, so memory stays bounded).
        self.known_values = KnownValues(settings.redaction.remembered_keys)
        if settings.api_key:
            self.known_values.add(settings.api_key.get_secret_value(), pinned=True, any_shape=True)
        password = _redis_password(settings)
        if password:
            self.known_values.add(password, pinned=True, any_shape=True)
        # A key pool (None: one key, or none; nothing to choose per attempt, nothing to pay).
        self.keys: KeyRing | None = None
        self.key_files: KeyFiles | None = None
        if settings.api_keys or settings.api_key_file or settings.api_keys_file or settings.keys_by_model:
            self._pool_keys(settings)
        self.last_swapped: Collection[str] = ()
        self._lock = threading.Lock()
        self._checker: threading.Thread | None = None

    def _pool_keys(self, settings: Settings) -> None:
        from .core.keys import KeyRing
        from .keyfiles import KeyFiles

        fixed = default_keys_of(settings, with_files=False)
        by_model = model_keys(settings)
        bench = None
        if self.fleet is not None:  # a key benched in one process is benched in all
            from .fleet.shared import FleetBench

            bench = FleetBench()
        self.keys = KeyRing(fixed, by_model, settings.keys.bench_seconds, bench=bench)
        self.pin_keys([*fixed, *(key for keys in by_model.values() for key in keys)])
        files = [(field, path) for field in ("api_key_file", "api_keys_file") if (path := getattr(settings, field))]
        if files:
            self.key_files = KeyFiles(files, fixed, self.keys, self.pin_keys)
            self.keys.replace_default(self.key_files.default_keys())
        first = self.keys.first
        self.gateway_key = first.value if first is not None else self.gateway_key

    def pin_keys(self, keys: Iterable[GatewayKey]) -> None:
        """Every gateway key, of every pool and file, is masked by value wherever it appears."""
        for key in keys:
            self.known_values.add(key.value.decode("ascii"), pinned=True, any_shape=True)

    def remember_swapped(self, keys: Collection[str]) -> None:
        """Called by every call with the provider keys it swapped out: cheap when the keys are
        those of the call before (the usual case: one key per process)."""
        if keys and keys != self.last_swapped:
            self.known_values.remember(keys)
            self.last_swapped = keys

    def redact(self, text: str) -> str:
        return redact_text(text, self.known_values, self._extra_headers, self._extra_patterns)

    def ensure_health_checker(self) -> None:
        """Start the active health checker on first use, if it is switched on."""
        if self._checker is not None or not self.settings.health_check.interval:
            return
        with self._lock:
            if self._checker is None:
                from .health import new_checker

                self._checker = new_checker(self)
                self._checker.start()

    def ensure_fleet_syncer(self) -> None:
        """Fleet mode: start the syncer with the first call, which waits (briefly) for the fleet's view."""
        if self._syncer is not None or self.fleet is None:
            return
        with self._lock:
            if self._syncer is not None:
                return
            from .fleet import FleetLimiter, Syncer
            from .fleet.shared import FleetBench, FleetSpend

            bench = self.keys.bench if self.keys is not None else None
            spend = self.spend.store if self.spend is not None else None

            self._syncer = syncer = Syncer(
                self.fleet,
                self.pool,
                self.budget,
                self.limiter if isinstance(self.limiter, FleetLimiter) else None,
                self.settings.limits.max_hold_seconds,
                alive=self.syncer_is,
                bench=bench if isinstance(bench, FleetBench) else None,
                spend=spend if isinstance(spend, FleetSpend) else None,
            )
            syncer.start()
        syncer.wait_ready(2 * self.fleet.timeout + 0.05)

    def syncer_is(self, syncer: Syncer) -> bool:
        """Is ``syncer`` this runtime's still (not stopped, not from before a fork)?"""
        return self._syncer is syncer

    def checker_is(self, thread: threading.Thread) -> bool:
        """Is ``thread`` this runtime's health checker still (not stopped)?"""
        return self._checker is thread

    def stop(self) -> None:
        self._checker = None  # the checker thread sees it is no longer this runtime's and ends
        self._syncer = None  # so does the fleet syncer

    def reset_after_fork(self) -> None:
        self.pool.reset()
        if self.affinity is not None:
            self.affinity.clear()
        self.budget.reset()
        if self.hedging is not None:
            self.hedging.reset()
        if self.limiter is not None:
            self.limiter.reset()  # the parent's waiters and slots are not this process's
        self._lock = threading.Lock()
        self.known_values.after_fork()
        if self.keys is not None:
            self.keys.bench.clear()  # the parent's bench: a fleet store would keep it, a process's does not
        if self.key_files is not None:
            self.key_files.after_fork()
        if self.spend is not None:
            self.spend.after_fork()
            if self.fleet is not None:
                from .fleet.shared import FleetSpend

                if isinstance(self.spend.store, FleetSpend):
                    self.spend.store.clear()  # nothing unsent from the parent
        self._checker = None  # threads do not survive fork; a new one starts on first use
        if self.fleet is not None:
            self.fleet.after_fork()  # a process of its own in the fleet, with its own connections
            self._syncer = None


def _fleet_of(
    settings: Settings, gateway_key: bytes | None, limiter: Limiter | None
) -> tuple[Fleet, Limiter | FleetLimiter | None]:
    """The fleet link (no I/O yet), and the limiter over it when a limit is set."""
    try:
        import redis  # noqa: F401  (the extra's package: named in the error when missing)
    except ImportError:
        raise ConfigError(
            "invalid yibu-middleware settings:\n- state.redis_url is set (fleet mode), but the redis package is"
            " not installed: pip install redis (what the package's redis extra installs), or unset"
            " YIBU_STATE__REDIS_URL to keep every limit in the process."
        ) from None
    from .core.limits import Quota
    from .fleet import Fleet, FleetLimiter

    fleet = Fleet(settings.state, gateway_key)
    if limiter is None:
        return fleet, None
    limits = settings.limits
    quota = Quota(limits.max_concurrent, limits.requests_per_second, limits.tokens_per_minute)
    per_model = {
        model: Quota(spec.max_concurrent, spec.requests_per_second, spec.tokens_per_minute)
        for model, spec in limits.per_model.items()
    }
    return fleet, FleetLimiter(fleet, limiter, quota, per_model)


def _fleet_spend() -> FleetSpend:
    from .fleet.shared import FleetSpend

    return FleetSpend()


def _redis_password(settings: Settings) -> str | None:
    """The password in state.redis_url, masked by value in every log line as the keys are."""
    url = settings.state.redis_url
    if url is None:
        return None
    from urllib.parse import unquote, urlsplit

    try:
        password = urlsplit(url.get_secret_value()).password
    except ValueError:
        return None
    return unquote(password) if password and len(password) >= 4 else None


def _unrouted_path(route: Route, segment: str) -> None:
    """Told once per path (its first segment) of a routed host that routing leaves alone."""
    host = route.host if route.port is None else f"{route.host}:{route.port}"
    log.warning(
        "yibu-middleware: requests to %s%s%s... are not routed: %s is not a %s model API path the gateway"
        " serves, so they go to the provider as the app sent them (egress.block_unrouted_providers refuses"
        " them instead). If the gateway serves it, add it to the route: routes.%s.paths = [%r]",
        host,
        route.strip_prefix.rstrip("/"),
        segment,
        segment,
        route.provider,
        host,
        segment,
    )


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
