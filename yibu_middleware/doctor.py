"""``yibu doctor``: what is configured, from where, what is hooked, and how the nodes answer."""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import os
import sys
import time
from typing import Any, NamedTuple

from pydantic import BaseModel

from .api import enabled_hooks
from .core.redact import mask, mask_userinfo, redact_text
from .errors import ConfigError
from .settings import (
    ENV_PREFIX,
    TRUE_WORDS,
    KeySettings,
    Settings,
    default_keys_of,
    gateway_key_of,
    load_settings,
    model_keys,
    unknown_env_names,
)

ENABLED_ENV = ENV_PREFIX + "ENABLED"

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
    """Print the report; exit status 2 when the app would not start (bad settings, no key),
    1 when a node is wrong for it (rejects the key, wrong path) or none answers, else 0."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(_safe(str(exc)))
        print("\nRouting: OFF. This process's app would not start: the settings above are invalid.")
        return 2
    routed, why = _routing(settings)
    print(f"Routing: {'ON' if routed else 'OFF'}. {why}\n")
    print("Settings (highest source first: install() argument, env YIBU_*, settings file, default)")
    for name, value in _setting_rows(settings):
        if name == "enabled":  # the setting's value alone is not whether the app is routed
            value = ("on" if settings.enabled else "off") + ("" if routed else " (not routed: see Routing above)")
        print(_safe(f"  {name:<30} {value:<48} {settings.origin(name)}"))
    for unknown in unknown_env_names():
        print(f"  warning: {unknown} matches no setting and is ignored")
    _print_keys(settings)

    print("\nClient libraries (hooked when the app imports them)")
    hooked = _check_hooks(settings)
    enabled = enabled_hooks(settings)
    for distribution, how in LIBRARIES:
        version = _version(distribution)
        if version is None:
            print(f"  {distribution:<18} not installed")
            continue
        landed = hooked.get(distribution)
        if landed is not None and distribution not in enabled:
            state = f"NOT HOOKED: turned off (hooks.{distribution}.enabled = false): its requests are not routed"
        else:
            state = how if landed is None else f"hooked {how}" if landed else f"NOT HOOKED ({how})"
        aiohttp = hooked.get(f"{distribution}-aiohttp")
        if aiohttp is not None:
            if f"{distribution}_aiohttp" not in enabled:
                state += f"; its aiohttp transport: turned off (hooks.{distribution}_aiohttp.enabled = false)"
            else:
                state += "; its aiohttp transport: " + ("hooked" if aiohttp else "unavailable (aiohttp not installed)")
        print(f"  {distribution:<18} {version:<10} {state}")
    masking = "on" if "logging" in enabled else "OFF (hooks.logging.enabled or redaction.enabled is false)"
    print(f"  {'(log records)':<29} keys masked in every log record: {masking}")

    _fleet_section(settings)

    print("\nGateway nodes")
    probes = [_probe(url, settings, timeout) for url in settings.gateway_nodes]
    for url, probe in zip(settings.gateway_nodes, probes, strict=True):
        print(_safe(f"  {url:<40} {probe.report}"))
    if not any(probe.reachable for probe in probes):
        print("\nNo gateway node answered: calls would fail. Check nodes/base_url and the network.")
    elif any(probe.wrong for probe in probes):
        print("\nA node above is wrong for this app (see its line): calls to it would fail.")
    if _key_missing(settings):
        return 2
    return 1 if any(probe.wrong for probe in probes) or not any(probe.reachable for probe in probes) else 0


def _fleet_section(settings: Settings) -> None:
    """Fleet mode: whether Redis answers, and the fleet's live view (as ``yibu status``)."""
    if not settings.state.active:
        print("\nFleet mode: off (state.redis_url unset): limits and node knowledge are per process")
        return
    print("\nFleet mode (state.redis_url)")
    try:
        import redis  # noqa: F401
    except ImportError:
        print("  the redis package is not installed: pip install redis (the package's redis extra)")
        return
    from .fleet import Fleet
    from .fleet.status import fleet_report

    try:
        key = gateway_key_of(settings)
    except ConfigError:
        key = None
    fleet = Fleet(settings.state, key)
    fleet.timeout = max(fleet.timeout, 1.0)
    answered, lines = fleet_report(settings, fleet)
    for line in lines:
        print(_safe("  " + line.lstrip() if line.startswith("Redis") else line))
    if not answered:
        print(
            "  Calls would not fail: each process would go on alone with its share of each limit until Redis answers."
        )


def _print_keys(settings: Settings) -> None:
    """Each gateway key of every pool, masked, with where it is configured and its state (the
    bench of this process: a fresh one here, so "ready" unless the doctor runs in the app)."""
    from .core.keys import KeyRing
    from .runtime import current

    if not (settings.api_keys or settings.api_key_file or settings.api_keys_file or settings.keys_by_model):
        return
    runtime = current()
    ring = runtime.keys if runtime is not None and runtime.keys is not None else None
    if ring is None:
        ring = KeyRing(default_keys_of(settings), model_keys(settings), settings.keys.bench_seconds)
    print("\nGateway keys (masked; pool, where configured, weight, state)")
    for state in ring.states():
        print(_safe(f"  {state.masked:<18} {state.pool:<14} {state.source:<40} weight {state.weight:g}  {state.state}"))


def _routing(settings: Settings) -> tuple[bool, str]:
    """Whether an app started in this environment would be routed, and why (not)."""
    word = os.environ.get(ENABLED_ENV)
    if _key_missing(settings):
        return False, (
            "This process's app would not start: there is no gateway key. Set YIBU_API_KEY, or"
            " YIBU_KEYS__PASS_THROUGH=1 if the app's own keys are gateway keys already."
        )
    pooled = len(default_keys_of(settings)) + sum(len(keys) for keys in model_keys(settings).values())
    keys = (
        f"gateway key pool of {pooled} keys (see Gateway keys below)"
        if pooled > 1
        else f"gateway key {mask(settings.api_key.get_secret_value())} ({settings.origin('api_key')})"
        if settings.api_key
        else "gateway key from the key file (see Gateway keys below)"
        if pooled
        else "callers' own keys pass through (keys.pass_through)"
    )
    if word is None or word.strip().lower() not in TRUE_WORDS:
        state = "is not set" if word is None or not word.strip() else f"is {word.strip()!r}"
        return False, (
            f"This process's app would not be routed: {ENABLED_ENV} {state} (the settings file cannot switch"
            f" it on). Set {ENABLED_ENV}=1, start it with `yibu run`, or call yibu_middleware.install() in the"
            f" app; then it would be routed with the {keys}."
        )
    return True, f"This process's app would be routed ({ENABLED_ENV}={word.strip()}), with the {keys}."


def _key_missing(settings: Settings) -> bool:
    try:
        gateway_key_of(settings)
    except ConfigError:
        return True
    return False


def _safe(text: str) -> str:
    """Keys and a URL's user:password masked, whatever the line holds."""
    return mask_userinfo(redact_text(text))


def _setting_rows(settings: Settings) -> list[tuple[str, str]]:
    """Every setting, nested ones as ``group.name``; the key masked."""
    rows = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if name == "api_key":
            unset = "(not set: callers' keys pass through)" if settings.keys.pass_through else "(NOT SET)"
            rows.append((name, mask(value.get_secret_value()) if value else unset))
        elif name == "api_keys":
            rows.append((name, ", ".join(mask(_key_part(item)) for item in value) or "(none)"))
        elif name == "keys_by_model":
            shown = (
                f"{pattern}=[{', '.join(mask(_key_part(item)) for item in items)}]" for pattern, items in value.items()
            )
            rows.append((name, ", ".join(shown) or "(none)"))
        elif isinstance(value, BaseModel) and name != "routes":
            rows.extend(_model_rows(name, value))
        elif name == "routes":
            rows.append((name, ", ".join(f"{host}={spec.provider}" for host, spec in value.items()) or "(none)"))
        elif name == "nodes" and not value:
            rows.append((name, "(not set: base_url is the only node)"))
        else:
            rows.append((name, _shown(value)))
    return rows


def _key_part(secret: Any) -> str:
    """The key of a ``"key weight"`` list item."""
    return str(secret.get_secret_value()).split()[0]


def _model_rows(prefix: str, model: BaseModel) -> list[tuple[str, str]]:
    """A settings group's rows, nested groups (``hooks.requests.enabled``) flattened too."""
    rows: list[tuple[str, str]] = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            rows.extend(_model_rows(f"{prefix}.{name}", value))
        else:
            rows.append((f"{prefix}.{name}", _shown(value)))
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

    # Whether the hooks land does not depend on the key: check them even when it is missing.
    api.install(settings.model_copy(update={"keys": KeySettings(pass_through=True)}))
    try:
        for hook in hooks.HOOKS:
            if hook.distribution and _version(hook.distribution) is not None:
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


class Probe(NamedTuple):
    reachable: bool  # something answered
    wrong: bool  # it answered, and calls from this app would fail there
    report: str


def _probe(url: str, settings: Settings, timeout: float) -> Probe:
    import httpx

    headers: dict[str, Any] = {}
    key = None if _key_missing(settings) else gateway_key_of(settings)
    if key is not None:
        headers["Authorization"] = f"Bearer {key.decode('ascii')}"
    started = time.perf_counter()
    try:
        with httpx.Client(timeout=timeout, trust_env=False) as client:
            response = client.get(f"{url}/models", headers=headers)
    except httpx.HTTPError as exc:
        return Probe(False, False, _safe(f"unreachable: {type(exc).__name__} {exc}"))
    elapsed = (time.perf_counter() - started) * 1000
    status = response.status_code
    seen = f"reachable: GET /models {status} in {elapsed:.1f} ms"
    if status in (401, 403) and key is None:
        return Probe(True, False, f"{seen} (no key sent: under pass-through each caller sends its own)")
    if status == 401:
        return Probe(True, True, f"{seen}: key rejected. The node does not accept this gateway key: check YIBU_API_KEY")
    if status == 403:
        return Probe(True, True, f"{seen}: key not allowed. The key is known but may not list models here")
    if status == 404:
        if not url.rstrip("/").endswith("/v1"):
            return Probe(True, True, f"{seen}: wrong path. Is /v1 missing? Try {url}/v1 as the node URL")
        return Probe(True, True, f"{seen}: this URL is not a gateway's API base (no {url}/models)")
    return Probe(True, False, seen)


if __name__ == "__main__":
    sys.exit(doctor())
