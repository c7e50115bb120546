"""The registry of client-library hooks, and their post-import registration.

Each hook waits for the app to import its library (wrapt post-import hooks), so
nothing here imports a client library and start-up costs nothing per library.
wrapt keeps a registered hook for the life of the process, so after
``deactivate()`` the hooks stay registered but do nothing until ``activate()``.
"""

from __future__ import annotations

import sys
from types import ModuleType

import wrapt

from .aiohttp_hook import AiohttpHook
from .base import Hook
from .httpx_family import HttpxFamilyHook
from .requests_hook import RequestsHook

_HTTPX_CLASSES = {"HTTPTransport": "handle_request", "AsyncHTTPTransport": "handle_async_request"}
_AIOHTTP_CLASSES = {"AiohttpTransport": "handle_async_request"}

# Every hook the library has, in the order `yibu doctor` lists them.
HOOKS: list[Hook] = [
    HttpxFamilyHook("httpx", "httpx", _HTTPX_CLASSES, library="httpx", distribution="httpx"),
    HttpxFamilyHook("httpx2", "httpx2", _HTTPX_CLASSES, library="httpx2", distribution="httpx2"),
    # openai's DefaultAioHttpClient and anthropic's equivalent: httpx2 clients whose
    # transport sends over aiohttp instead of HTTPTransport.
    HttpxFamilyHook("openai-aiohttp", "openai._vendor.httpx_aiohttp.transport", _AIOHTTP_CLASSES, "httpx2", "openai"),
    HttpxFamilyHook(
        "anthropic-aiohttp",
        "anthropic._vendor.httpx_aiohttp.transport",
        _AIOHTTP_CLASSES,
        "httpx2",
        "anthropic",
    ),
    RequestsHook(),
    # aiohttp itself, for apps and libraries (LiteLLM, ...) that send with a ClientSession.
    AiohttpHook(),
]

_registered = False
_active = False


def activate() -> None:
    """Patch every hooked library already imported, and each one the app imports later."""
    global _registered, _active
    _active = True
    if not _registered:
        _registered = True
        for hook in HOOKS:
            # Runs at once when the module is already imported.
            wrapt.register_post_import_hook(_when_imported(hook), hook.module)
        return
    for hook in HOOKS:
        module = sys.modules.get(hook.module)
        if module is not None:
            hook.apply(module)


def deactivate() -> None:
    global _active
    _active = False
    for hook in HOOKS:
        hook.unpatch()


def _when_imported(hook: Hook) -> wrapt.importer.PostImportHook:  # type: ignore[name-defined]
    def apply(module: ModuleType) -> None:
        if _active:
            hook.apply(module)

    return apply
