"""yibu-middleware: send unmodified OpenAI/Anthropic apps through the yibu relay gateway.

Kept tiny on purpose: the ``.pth`` start-up line imports this package in every
Python process that has ``YIBU_ENABLED`` set, so the real work is imported only
when ``install()`` is called.

PYTEST_DONT_REWRITE: pytest marks every top-level package of a distribution with a
``pytest11`` entry point (ours offers the ``gateway_simulator`` fixture) for assertion
rewriting, and warns when one was imported before it, as the start-up line always
imports this one. Under ``filterwarnings = ["error"]`` that warning stops the app's test
run. This marker is pytest's documented opt-out; the package has no test assertions to
rewrite (the fixture's own module is imported by pytest and rewritten as usual).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["AsyncTransport", "ConfigError", "Settings", "Transport", "install", "uninstall"]

if TYPE_CHECKING:
    from .errors import ConfigError
    from .settings import Settings
    from .transport import AsyncTransport, Transport


def install(settings: Any = None) -> None:
    """Route this process's provider traffic through the gateway (see ``api.install``)."""
    from .api import install as _install

    _install(settings)


def uninstall() -> None:
    """Restore every patched method exactly (see ``api.uninstall``)."""
    from .api import uninstall as _uninstall

    _uninstall()


def __getattr__(name: str) -> Any:
    if name == "ConfigError":
        from .errors import ConfigError

        return ConfigError
    if name == "Settings":
        from .settings import Settings

        return Settings
    if name in ("Transport", "AsyncTransport"):
        from . import transport

        return getattr(transport, name)
    raise AttributeError(name)
