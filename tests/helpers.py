"""Constants and helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yibu_middleware
from yibu_middleware.simulator import GatewaySimulator

# Fake keys only. The simulator accepts the gateway key alone, so a provider key that
# reached it would be answered 401 and show up in its records.
GATEWAY_KEY = "sk-gw-test-0123456789abcdefghijklmnop"
OPENAI_KEY = "sk-proj-provider-openai-key-not-real-0123456789"
ANTHROPIC_KEY = "sk-ant-api03-provider-anthropic-key-not-real-0123"
PROVIDER_KEYS = (OPENAI_KEY, ANTHROPIC_KEY)

ROOT = Path(__file__).resolve().parent.parent
INTEGRATIONS = ROOT / "integrations"


def install_for(simulator: GatewaySimulator, **overrides: Any) -> None:
    settings: dict[str, Any] = {"nodes": [node.base_url for node in simulator.nodes], "api_key": GATEWAY_KEY}
    settings.update(overrides)
    yibu_middleware.install(settings)


def assert_no_provider_key(simulator: GatewaySimulator) -> None:
    for record in simulator.records:
        text = repr(record.headers) + repr(record.body) + (record.query or "")
        for key in PROVIDER_KEYS:
            assert key not in text, f"provider key reached node {record.node} on {record.path}"


def app_env(simulator: GatewaySimulator, **extra: str) -> dict[str, str]:
    """The environment an unmodified app gets: provider keys as usual, plus YIBU_* only."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("YIBU_")}
    env.update(
        OPENAI_API_KEY=OPENAI_KEY,
        ANTHROPIC_API_KEY=ANTHROPIC_KEY,
        YIBU_ENABLED="1",
        YIBU_NODES=",".join(node.base_url for node in simulator.nodes),
        YIBU_API_KEY=GATEWAY_KEY,
    )
    env.update(extra)
    return env


PYTHON = sys.executable


@contextlib.contextmanager
def root_output(level: int, formatter: logging.Formatter | None = None) -> Iterator[io.StringIO]:
    """What a handler added to the root logger writes (as an app's logging.basicConfig would
    add one), with the root at ``level``; both put back afterwards."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    if formatter is not None:
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(level)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
