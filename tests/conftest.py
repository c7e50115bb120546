"""Shared fixtures: a three-node gateway simulator on loopback and a clean middleware per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import GATEWAY_KEY

import yibu_middleware
from yibu_middleware.simulator import GatewaySimulator


@pytest.fixture
def gateway() -> Iterator[GatewaySimulator]:
    simulator = GatewaySimulator(accepted_keys={GATEWAY_KEY})
    for name in ("a", "b", "c"):
        simulator.add_node(name)
    with simulator:
        yield simulator


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No YIBU_* variable or settings file of the machine leaks into a test; nothing stays installed."""
    for name in list(os.environ):
        if name.startswith("YIBU_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield
    yibu_middleware.uninstall()
