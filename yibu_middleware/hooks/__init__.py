"""The registry of hooks (each client library's, and the logging patch), and their post-import registration.

Each hook waits for the app to import its library (wrapt post-import hooks), so
nothing here imports a client library and start-up costs nothing per library.
wrapt keeps a registered hook for the life of the process, so after
``deactivate()`` the hooks stay registered but do nothing until ``activate()``.
Each hook can be turned off on its own (``hooks.<name>.enabled``, e.g.
``YIBU_HOOKS__REQUESTS__ENABLED=false``): it is then not applied, or taken off.
"""

from __future__ import annotations

import sys
from collections.abc import Collection
from types import ModuleType

import wrapt

from .aiohttp import AiohttpHook
from .base import Hook
from .httpx import HttpxHook
from .logging import LoggingHook
from .requests import RequestsHook

_HTTPX_CLASSES = {"HTTPTransport": "handle_request", "AsyncHTTPTransport": "handle_async_request"}
_AIOHTTP_CLASSES = {"AiohttpTransport": "handle_async_request"}

# Every hook the library has, in the order `yibu doctor` lists them.
HOOKS: list[Hook] = [
    HttpxHook("httpx", "httpx", _HTTPX_CLASSES, library="httpx", distribution="httpx", minimum=(0, 27)),
    HttpxHook("httpx2", "httpx2", _HTTPX_CLASSES, library="httpx2", distribution="httpx2", minimum=(2, 0)),
    # openai's DefaultAioHttpClient and anthropic's equivalent: httpx2 clients whose
    # transport sends over aiohttp instead of HTTPTransport.
    HttpxHook("openai-aiohttp", "openai._vendor.httpx_aiohttp.transport", _AIOHTTP_CLASSES, "httpx2", "openai"),
    HttpxHook(
        "anthropic-aiohttp",
        "anthropic._vendor.httpx_aiohttp.transport",
        _AIOHTTP_CLASSES,
        "httpx2",
        "anthropic",
    ),
    RequestsHook(),
    # aiohttp itself, for apps and libraries (LiteLLM, ...) that send with a ClientSession.
    AiohttpHook(),
    # Not a client: masks keys in every log record of the process (see redaction.py).
    LoggingHook(),
]

_registered = False
_enabled: frozenset[str] = frozenset()  # the hooks to apply; empty while deactivated


def activate(enabled: Collection[str]) -> None:
    """Apply the ``enabled`` hooks (by ``Hook.setting``) to their libraries already imported, and
    to each one the app imports later; take off any other. Called again with other settings, it
    applies and takes off to match."""
    global _registered, _enabled
    _enabled = frozenset(enabled)
    for hook in HOOKS:
        if hook.setting not in _enabled:
            hook.unpatch()
    if not _registered:
        _registered = True
        for hook in HOOKS:
            # Runs at once when the module is already imported.
            wrapt.register_post_import_hook(_when_imported(hook), hook.module)
        return
    for hook in HOOKS:
        module = sys.modules.get(hook.module)
        if module is not None and hook.setting in _enabled:
            hook.apply(module)


def deactivate() -> None:
    global _enabled
    _enabled = frozenset()
    for hook in HOOKS:
        hook.unpatch()


def _when_imported(hook: Hook) -> wrapt.importer.PostImportHook:  # type: ignore[name-defined]
    def apply(module: ModuleType) -> None:
        if hook.setting in _enabled:
            hook.apply(module)

    return apply
