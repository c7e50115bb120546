"""pytest plugin (entry point ``yibu_simulator``): the ``gateway_simulator`` fixture.

pytest imports this module in every run of every project that has yibu-middleware installed, so it
imports nothing heavy at module level; the simulator is imported inside the fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .server import GatewaySimulator


@pytest.fixture
def gateway_simulator() -> Iterator[GatewaySimulator]:
    """A started simulator with nodes "a", "b", "c", no faults, any key accepted; stopped afterwards."""
    from .server import GatewaySimulator

    sim = GatewaySimulator(accepted_keys=None)
    for name in ("a", "b", "c"):
        sim.add_node(name)
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()
