"""``yibu doctor``: what is configured, from where, what is hooked, and how the nodes answer."""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import sys
import time
from typing import Any

from pydantic import BaseModel

from .core.redact import mask, redact_text
from .errors import ConfigError
from .settings import Settings, load_settings, unknown_env_names

# Client libraries worth reporting: those hooked (where), and those that travel over them.
LIBRARIES = [
    ("httpx", "at HTTPTransport / AsyncHTTPTransport"),
    ("httpx2", "at HTTPTransport / AsyncHTTPTransport"),
    ("requests", "at HTTPAdapter.send"),
    ("aiohttp", "at ClientSession._request (a client middleware of ours, innermost)"),
    ("openai", "travels over httpx2 (or a given httpx client, or its aiohttp transport)"),
    ("anthropic", "travels over httpx2 (or a given httpx client, or its aiohttp transport)"),
    ("langchain-openai", "travels over openai"),
    ("litellm", "travels over openai, httpx or aiohttp"),
]


def doctor(timeout: float = 3.0) -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(exc)
        return 2
    print("Settings (highest source first: install() argument, env YIBU_*, settings file, default)")
    for name, value in _setting_rows(settings):
        print(f"  {name:<30} {value:<48} {settings.origin(name)}")
    for unknown in unknown_env_names():
        print(f"  warning: {unknown} matches no setting and is ignored")

    print("\nClient libraries (hooked when the app imports them)")
    hooked = _check_hooks(settings)
    for distribution, how in LIBRARIES:
        version = _version(distribution)
        if version is None:
            print(f"  {distribution:<18} not installed")
            continue
        landed = hooked.get(distribution)
        state = how if landed is None else f"hooked {how}" if landed else f"NOT HOOKED ({how})"
        aiohttp = hooked.get(f"{distribution}-aiohttp")
        if aiohttp is not None:
            state += "; its aiohttp transport: " + ("hooked" if aiohttp else "unavailable (aiohttp not installed)")
        print(f"  {distribution:<18} {version:<10} {state}")

    print("\nGateway nodes")
    reachable = 0
    for url in settings.gateway_nodes:
        ok, report = _probe(url, settings, timeout)
        reachable += ok
        print(f"  {url:<40} {report}")
    if not reachable:
        print("\nNo gateway node answered: calls would fail. Check nodes/base_url and the network.")
        return 1
    return 0


def _setting_rows(settings: Settings) -> list[tuple[str, str]]:
    """Every setting, nested ones as ``group.name``; the key masked."""
    rows = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if name == "api_key":
            rows.append((name, mask(value.get_secret_value()) if value else "(not set: callers' keys pass through)"))
        elif isinstance(value, BaseModel) and name != "routes":
            rows.extend((f"{name}.{sub}", _shown(getattr(value, sub))) for sub in type(value).model_fields)
        elif name == "routes":
            rows.append((name, ", ".join(f"{host}={spec.provider}" for host, spec in value.items()) or "(none)"))
        elif name == "nodes" and not value:
            rows.append((name, "(not set: base_url is the only node)"))
        else:
            rows.append((name, _shown(value)))
    return rows


def _shown(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key}={item}" for key, item in value.items()) or "(none)"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value) or "(none)"
    return "(not set)" if value is None else str(value)


def _check_hooks(settings: Settings) -> dict[str, bool]:
    """Install in this process, import each installed library, and see whether its hook landed."""
    from . import api, hooks

    api.install(settings)
    try:
        for hook in hooks.HOOKS:
            if _version(hook.distribution) is not None:
                # The SDKs' aiohttp transports need aiohttp, an optional extra.
                with contextlib.suppress(ImportError):
                    importlib.import_module(hook.module)
        return {hook.name: hook.patched for hook in hooks.HOOKS}
    finally:
        api.uninstall()


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _probe(url: str, settings: Settings, timeout: float) -> tuple[bool, str]:
    import httpx

    headers: dict[str, Any] = {}
    if settings.api_key:
        headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
    started = time.perf_counter()
    try:
        with httpx.Client(timeout=timeout, trust_env=False) as client:
            response = client.get(f"{url}/models", headers=headers)
    except httpx.HTTPError as exc:
        return False, redact_text(f"unreachable: {type(exc).__name__} {exc}")
    elapsed = (time.perf_counter() - started) * 1000
    verdict = {401: "key rejected", 403: "key not allowed"}.get(response.status_code, "")
    return True, f"reachable: GET /models {response.status_code} in {elapsed:.1f} ms {verdict}".rstrip()


if __name__ == "__main__":
    sys.exit(doctor())
