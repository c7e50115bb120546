"""Per-node fault settings of the gateway simulator."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass
class NodeFaults:
    """Faults one simulated node injects; all off by default.

    Mutable on purpose: tests flip fields while the simulator runs (plain field reads per request, so a
    change applies to the next request). ``refuse`` is the exception: it changes sockets, so switch it with
    ``GatewaySimulator.set_faults`` (a direct assignment is noticed at the next connection attempt only).
    """

    latency: float = 0.0
    """Seconds to wait before sending the response headers."""
    error_rate: float = 0.0
    """Fraction of requests answered 503 in the provider's error format."""
    rate_limit_rate: float = 0.0
    """Fraction of requests answered 429 with ``retry-after``/``retry-after-ms``."""
    retry_after: float = 1.0
    """Seconds advertised in the 429 ``retry-after`` header."""
    refuse: bool = False
    """Refuse TCP connections (the port stays reserved, so it can be re-opened)."""
    cut_stream_after: int | None = None
    """For streaming responses: send this many SSE events, then drop the connection mid-body."""
    status_override: int | None = None
    """Answer every request with this status (and ``status_body`` if given), even before the key check."""
    status_body: dict[str, Any] | None = None
    """JSON body for ``status_override``; None = an error body in the provider's format."""
    seed: int = 0
    """Seed of the node's own random generator, so error/rate-limit draws are reproducible."""

    def validate(self) -> None:
        """Raise ValueError on values that would make the node misbehave in confusing ways."""
        for name in ("latency", "retry_after"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("error_rate", "rate_limit_rate"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number between 0 and 1, got {value!r}")
        if self.error_rate + self.rate_limit_rate > 1.0:
            raise ValueError("error_rate + rate_limit_rate must not exceed 1")
        if not isinstance(self.refuse, bool):
            raise ValueError(f"refuse must be a bool, got {self.refuse!r}")
        if self.cut_stream_after is not None and (
            not isinstance(self.cut_stream_after, int)
            or isinstance(self.cut_stream_after, bool)
            or self.cut_stream_after < 0
        ):
            raise ValueError(f"cut_stream_after must be None or an int >= 0, got {self.cut_stream_after!r}")
        if self.status_override is not None and (
            not isinstance(self.status_override, int)
            or isinstance(self.status_override, bool)
            or not 100 <= self.status_override <= 599
        ):
            raise ValueError(f"status_override must be None or an HTTP status, got {self.status_override!r}")
        if self.status_body is not None and not isinstance(self.status_body, dict):
            raise ValueError("status_body must be None or a dict")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an int, got {self.seed!r}")

    def describe(self) -> str:
        """Short human summary of the non-default fields, e.g. ``latency=0.5 refuse`` (``-`` if none)."""
        parts: list[str] = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value == field.default:
                continue
            if field.name == "refuse":
                parts.append("refuse")
            elif field.name == "status_body":
                parts.append("status_body=...")
            else:
                parts.append(f"{field.name}={value}")
        return " ".join(parts) or "-"


FAULT_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(NodeFaults))
