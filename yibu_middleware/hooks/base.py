"""A hook: the patches one client library needs, applied and removed symmetrically.

A hook is applied when its module is first imported by the app (post-import hook),
never by importing the library ourselves. Methods are wrapped in place with wrapt,
so classes stay the same objects and the SDKs' ``isinstance`` checks keep working;
``unpatch()`` puts back the very function objects that were there before.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import wrapt

from ..errors import YibuError

log = logging.getLogger("yibu_middleware")

Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]


class Hook:
    """Base class. Subclasses set ``name`` and ``module`` and implement ``patch``."""

    name: str = ""  # shown by `yibu doctor`, e.g. "httpx2"
    module: str = ""  # the import that triggers patching, e.g. "httpx2"
    distribution: str = ""  # the installed distribution it belongs to, for version reports
    # The oldest release of ``distribution`` the hook supports (README, "Supported client
    # libraries"); an older one stops the import with a message, as a changed shape does.
    minimum: tuple[int, ...] = ()

    def __init__(self) -> None:
        # (owner, attribute, original) for every wrapped method: the idempotency
        # sentinel and what unpatch() restores.
        self._originals: list[tuple[type, str, Any]] = []

    @property
    def setting(self) -> str:
        """Its switch in the settings: ``hooks.<setting>.enabled``."""
        return self.name.replace("-", "_")

    @property
    def patched(self) -> bool:
        return bool(self._originals)

    def patch(self, module: ModuleType) -> None:
        raise NotImplementedError

    def apply(self, module: ModuleType) -> None:
        """Patch once. A failure stops the app's import with a clear error rather than
        letting its traffic go straight to the provider unnoticed."""
        if self.patched:
            return
        self.check_version()
        try:
            self.patch(module)
        except Exception as exc:
            self.unpatch()
            raise YibuError(
                f"yibu-middleware cannot hook {self.name} ({type(exc).__name__}: {exc}). This version of"
                f" {self.distribution or self.name} may be unsupported; see the README's supported versions,"
                " or unset YIBU_ENABLED to run without the middleware."
            ) from exc
        log.debug("hooked %s", self.name)

    def check_version(self) -> None:
        """Refuse a release older than ``minimum``: its traffic would not go out unrouted unnoticed."""
        if not self.minimum or not self.distribution:
            return
        installed = installed_version(self.distribution)
        if installed is None:
            return  # no version to read: its shape is checked by patch() alone
        if release(installed) < self.minimum:
            oldest = ".".join(map(str, self.minimum))
            raise YibuError(
                f"yibu-middleware supports {self.distribution} {oldest} or newer, and {installed} is installed:"
                f" upgrade it (pip install '{self.distribution}>={oldest}'), or run without this hook"
                f" (YIBU_HOOKS__{self.setting.upper()}__ENABLED=false: its requests are then not routed)."
            )

    def unpatch(self) -> None:
        for owner, attribute, original in reversed(self._originals):
            setattr(owner, attribute, original)
        self._originals.clear()

    def wrap(self, owner: type, attribute: str, wrapper: Wrapper) -> None:
        # KeyError if the library changed shape. Another tool's wrapper (OpenTelemetry,
        # ddtrace) may already be there: we wrap around it and restore it on unpatch.
        original = owner.__dict__[attribute]
        wrapt.wrap_function_wrapper(owner, attribute, wrapper)
        self._originals.append((owner, attribute, original))

    def replace(self, owner: type, attribute: str, function: Callable[..., Any]) -> None:
        """Put a plain function in place of a method, where a wrapt wrapper would cost too much
        per call (see ``httpx/sender.py``); restored by ``unpatch`` like a wrapped one."""
        original = owner.__dict__[attribute]
        setattr(owner, attribute, function)
        self._originals.append((owner, attribute, original))


def installed_version(distribution: str) -> str | None:
    """The release of ``distribution`` the app runs: the ``__version__`` of its top-level module,
    imported by the time its hook applies (every hooked library has one: httpx, httpx2, requests,
    aiohttp, openai, anthropic). The package metadata only for one that lacks it: reading that
    scans the path and parses a METADATA file, about 4 M instructions a library at start-up."""
    version = getattr(sys.modules.get(distribution), "__version__", None)
    if isinstance(version, str):
        return version
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None  # imported from a path, not installed


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: "2.32.3" -> (2, 32, 3), "3.12.0rc1" -> (3, 12, 0)."""
    match = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(part) for part in match.group().split(".")) if match else ()
