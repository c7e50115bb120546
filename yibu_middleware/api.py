"""The in-code way in: ``install()`` and ``uninstall()``; both idempotent."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from . import egress, hooks, runtime
from .settings import Settings, load_settings, unknown_env_names

log = logging.getLogger("yibu_middleware")
_lock = threading.Lock()
_stderr_handler: logging.Handler | None = None


def install(settings: Settings | Mapping[str, Any] | None = None) -> None:
    """Route this process's provider traffic through the gateway.

    ``settings`` may be a :class:`Settings`, a mapping of overrides (highest
    priority, above the environment and the settings file), or None to read the
    environment and file alone. Calling it again replaces the settings in use; the
    hooks are applied once. Raises ConfigError on bad settings.
    """
    with _lock:
        resolved = read_settings(settings)
        current = runtime.Runtime(resolved)
        runtime.set_current(current)
        _configure_log_output(resolved.log)
        hooks.activate(enabled_hooks(resolved))
        egress.install(_guarded_hosts(current) if resolved.egress.block_unrouted_providers else None)


def read_settings(settings: Settings | Mapping[str, Any] | None) -> Settings:
    """The settings ``install()`` (and a composition transport) runs with: ``settings`` as they are,
    or overrides above the environment and the settings file. ConfigError on a bad one."""
    resolved = settings if isinstance(settings, Settings) else load_settings(settings)
    for name in unknown_env_names():
        log.warning("yibu-middleware: environment variable %s matches no setting; it is ignored", name)
    return resolved


def uninstall() -> None:
    """Put every patched method back exactly as it was; traffic goes where the app sends it."""
    with _lock:
        egress.uninstall()
        hooks.deactivate()
        runtime.set_current(None)
        _configure_log_output("off")


def enabled_hooks(settings: Settings) -> set[str]:
    """The hooks the settings leave on (``hooks.<name>.enabled``; ``redaction.enabled`` too for the
    logging patch)."""
    switches = settings.hooks
    enabled = {name for name in type(switches).model_fields if getattr(switches, name).enabled}
    if not settings.redaction.enabled:
        enabled.discard("logging")
    return enabled


def installed() -> bool:
    return runtime.current() is not None


def _configure_log_output(level: str) -> None:
    """``log`` setting: print our own lines to stderr without touching the app's logging.

    The logger still propagates, so the app's own handlers (a file, an aggregator) keep
    getting our lines; our stderr handler stands aside for a record that one of them
    already writes to stderr, so that a call is not printed twice (``logging.basicConfig``)."""
    global _stderr_handler
    if _stderr_handler is not None:
        log.removeHandler(_stderr_handler)
        _stderr_handler = None
    if level == "off":
        log.setLevel(logging.NOTSET)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("yibu: %(message)s"))
    handler.addFilter(_unless_the_app_prints_it)
    log.addHandler(handler)
    log.setLevel(level.upper())
    _stderr_handler = handler


def _guarded_hosts(current: runtime.Runtime) -> frozenset[str]:
    """The egress guard's hosts: providers, routed hosts (on any port) and extra ones; no node."""
    settings = current.settings
    nodes = [urlsplit(url).hostname or "" for url in settings.gateway_nodes]
    return egress.guarded_hosts(current.routes.any_port_hosts, settings.egress.extra_hosts, nodes)


def _unless_the_app_prints_it(record: logging.LogRecord) -> bool:
    """False when a handler of the app, on the way the record propagates, writes it to
    stderr too (checked per record: the app may configure its logging after install)."""
    logger: logging.Logger | None = log
    while logger is not None:
        for handler in logger.handlers:
            if handler is not _stderr_handler and record.levelno >= handler.level and _writes_to_stderr(handler):
                return False
        logger = logger.parent if logger.propagate else None
    return True


def _writes_to_stderr(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None) if isinstance(handler, logging.StreamHandler) else None
    if stream is None:
        return False
    if stream is sys.stderr or stream is sys.__stderr__:
        return True
    try:
        return bool(stream.fileno() == 2)
    except (AttributeError, OSError, ValueError):  # in memory, closed, or not a file
        return False
