"""The three ways each suite runs, as the environment of its pytest process.

- `off`: no YIBU_* variable at all (the package is installed, so its `.pth` line and its
  pytest plugin are there, as in any app that depends on it).
- `routed`: `YIBU_ENABLED=1` with the default routes. The gateway key is a fake and the only
  node is a loopback port nothing listens on, so a routed request is refused on this machine
  and nothing leaves it.
- `unrouted`: the hooks on, with every default route set to `false` in `YIBU_ROUTES`: the
  middleware is installed but should touch nothing.

Every mode starts from the same environment: the caller's, less any YIBU_*, OPENAI_* and
ANTHROPIC_* variable, so that this machine's settings cannot change a result.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass

# A fake gateway key: long and unlike any word, so that masking it in log records cannot
# touch ordinary text.
FAKE_GATEWAY_KEY = "sk-yibu-sdk-suites-fake-gateway-key-7f3c9a1e5b"

STRIPPED_PREFIXES = ("YIBU_", "OPENAI_", "ANTHROPIC_")
# pytest options from the caller's environment would change every run alike but hide what the
# SDK's own settings do.
STRIPPED_NAMES = frozenset({"PYTEST_ADDOPTS", "PYTEST_PLUGINS"})


@dataclass(frozen=True)
class Mode:
    name: str
    summary: str


OFF = Mode("off", "middleware off (no YIBU_* set)")
ROUTED = Mode("routed", "YIBU_ENABLED=1, default routes, node = a closed loopback port")
UNROUTED = Mode("unrouted", "YIBU_ENABLED=1, every default route set to false")
MODES = {mode.name: mode for mode in (OFF, ROUTED, UNROUTED)}


def closed_loopback_port() -> int:
    """A loopback port nothing listens on: the kernel hands out a free one, which we release."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def environment(mode: Mode, *, node_port: int, routed_hosts: list[str]) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(STRIPPED_PREFIXES) and name not in STRIPPED_NAMES
    }
    if mode is OFF:
        return env
    env["YIBU_ENABLED"] = "1"
    env["YIBU_API_KEY"] = FAKE_GATEWAY_KEY
    env["YIBU_NODES"] = f"http://127.0.0.1:{node_port}/v1"
    if mode is UNROUTED:
        env["YIBU_ROUTES"] = json.dumps(dict.fromkeys(routed_hosts, False))
    return env


def describe(mode: Mode, env: dict[str, str]) -> str:
    shown = {name: value for name, value in env.items() if name.startswith("YIBU_") and name != "YIBU_API_KEY"}
    if "YIBU_API_KEY" in env:
        shown["YIBU_API_KEY"] = "<fake>"
    return " ".join(f"{name}={value}" for name, value in sorted(shown.items())) or "(no YIBU_* set)"
