"""Gateway simulator: a real HTTP server on loopback that behaves like the yibu relay gateway.

Several nodes (one port each) answer the OpenAI (chat completions, embeddings, models) and Anthropic
(messages) endpoints under ``/v1``, with per-node fault injection, and record what they received.
Standard library only, so tests, ``yibu demo`` and users can run it anywhere.
"""

from .faults import NodeFaults
from .server import GatewaySimulator, Record, SimNode

__all__ = ["GatewaySimulator", "NodeFaults", "Record", "SimNode"]
