"""``yibu demo``: an unmodified example app, a three-node gateway simulator, and what happened.

Nodes: one refuses connections, one is slow, one is healthy. The app runs in a
subprocess with nothing but environment variables set (YIBU_ENABLED=1 and the rest),
exactly as a user's app would, and the summary is built from what the middleware
logged and what the simulator received.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .core.redact import mask
from .simulator import GatewaySimulator, NodeFaults, Record

# Fake keys: the simulator accepts only the gateway one, so a leaked provider key shows as a 401.
GATEWAY_KEY = "sk-yibu-demo-gateway-key-0000000000000000"
PROVIDER_KEYS = {
    "OPENAI_API_KEY": "sk-proj-demo-provider-key-not-real-00000000",
    "ANTHROPIC_API_KEY": "sk-ant-api03-demo-provider-key-not-real-0000",
}
SLOW_SECONDS = 0.25


def find_app(name: str) -> Path:
    """An example app: shipped inside the wheel, or in integrations/ of a source checkout."""
    filename = name if name.endswith(".py") else f"{name}.py"
    here = Path(__file__).resolve().parent
    for folder in (here / "demo_apps", here.parent / "integrations"):
        if (folder / filename).is_file():
            return folder / filename
    raise SystemExit(f"yibu demo: no example app named {name!r} (looked in demo_apps/ and integrations/)")


def demo(app_name: str = "openai_async_app") -> int:
    app = find_app(app_name)
    simulator = GatewaySimulator(accepted_keys={GATEWAY_KEY})
    simulator.add_node("down", NodeFaults(refuse=True))
    simulator.add_node("slow", NodeFaults(latency=SLOW_SECONDS))
    simulator.add_node("healthy")
    with simulator:
        print("Gateway simulator, three nodes on loopback:")
        notes = {"down": "refuses connections", "slow": f"adds {SLOW_SECONDS * 1000:.0f} ms", "healthy": ""}
        for node in simulator.nodes:
            print(f"  {node.name:<8} {node.base_url:<32} {notes[node.name]}")
        print(f"\nRunning {app.name} unmodified, with YIBU_ENABLED=1 and the nodes in YIBU_NODES;")
        print(f"its provider key is {mask(PROVIDER_KEYS['OPENAI_API_KEY'])}, the gateway key {mask(GATEWAY_KEY)}:\n")
        started = time.perf_counter()
        result = _run_app(app, [node.base_url for node in simulator.nodes])
        elapsed = time.perf_counter() - started
        records = simulator.records
        names = {f"127.0.0.1:{node.port}": node.name for node in simulator.nodes}

    for line in result.stdout.splitlines():
        print(f"  app | {line}")
    calls = [line.removeprefix("yibu: ") for line in result.stderr.splitlines() if line.startswith("yibu: ")]
    other = [line for line in result.stderr.splitlines() if not line.startswith("yibu: ")]
    print("\nEach call, as the middleware routed it:")
    for line in calls:
        print(f"  {_named(line, names)}")
    print("\nWhat the gateway received, per node:")
    for name in notes:
        mine = [record for record in records if record.node == name]
        credentials = sorted({_credential(record) for record in mine}) or ["-"]
        paths = sorted({record.path for record in mine}) or ["-"]
        summary = f"credential: {', '.join(credentials):<26} paths: {', '.join(paths)}"
        print(f"  {name:<8} {len(mine):>3} requests  {summary}")
    failovers = sum(1 for line in calls if "(tried: " in line)
    leaked = any(_carries_provider_key(record) for record in records)
    print(
        f"\n{len(calls)} calls, {failovers} failed over, {len(records)} requests reached the gateway;"
        f" provider key reached the gateway: {'YES' if leaked else 'never'}; app took {elapsed:.2f} s"
        f" and exited with {result.returncode}."
    )
    if result.returncode != 0 or other:
        print("\nApp stderr:\n" + "\n".join(f"  {line}" for line in other))
        _explain_missing_package(result.stderr)
    return 0 if result.returncode == 0 and not leaked else 1


def _run_app(app: Path, nodes: list[str]) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("YIBU_")}
    env.update(PROVIDER_KEYS)
    env.update(
        YIBU_ENABLED="1",
        YIBU_NODES=",".join(nodes),
        YIBU_API_KEY=GATEWAY_KEY,
        YIBU_LOG="info",
    )
    # An empty folder as the app's cwd: no yibu.toml or pyproject.toml of the user's applies.
    with tempfile.TemporaryDirectory() as folder:
        return subprocess.run(
            [sys.executable, str(app)], env=env, cwd=folder, capture_output=True, text=True, timeout=300
        )


# The package to install for a module an example app imports, where the two names differ.
_PACKAGE_OF = {"langchain_core": "langchain-openai", "langchain_openai": "langchain-openai"}


def _explain_missing_package(stderr: str) -> None:
    """scripts/demo installs the clients of the smaller apps only; say what a larger one needs."""
    found = re.search(r"ModuleNotFoundError: No module named '(\w+)", stderr)
    if not found:
        return
    module = found.group(1)
    if module == "llama_index":
        print(
            "\nThis app needs llama-index-llms-openai, which needs openai<3: run it from a virtualenv of its own,"
            " e.g. the one scripts/test makes: .venv/llamaindex/bin/yibu demo --app llamaindex_app"
        )
        return
    package = _PACKAGE_OF.get(module, module)
    print(f"\nThis app needs {package}: {sys.executable} -m pip install {package}")


def _named(line: str, names: dict[str, str]) -> str:
    for address, name in names.items():
        line = line.replace(address, name)
    return line


def _credential(record: Record) -> str:
    if record.key == GATEWAY_KEY:
        return f"gateway key {mask(GATEWAY_KEY)}"
    return "PROVIDER KEY" if _carries_provider_key(record) else "other/none"


def _carries_provider_key(record: Record) -> bool:
    text = repr(record.headers) + repr(record.body)
    return any(key in text for key in PROVIDER_KEYS.values())
