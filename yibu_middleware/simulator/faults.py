"""Per-node fault settings of the gateway simulator."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass
class NodeFaults:
    """Faults one simulated node injects; all off by default.

    The stream faults (``*_stream_after`` and ``stream_error_after``) apply only to streaming responses
    (``"stream": true`` on chat completions and messages). Counts are SSE events written; for chat the first
    one is the role-only chunk. If several are set, the first of cut, stall, error, truncate applies.

    Mutable on purpose: tests flip fields while the simulator runs (plain field reads per request, so a
    change applies to the next request). ``refuse`` is the exception: it changes sockets, so switch it with
    ``GatewaySimulator.set_faults`` (a direct assignment is noticed at the next connection attempt only).
    """

    latency: float = 0.0
    """Seconds to wait before sending the response headers."""
    latency_jitter: float = 0.0
    """Extra wait drawn uniformly from [0, latency_jitter] per request (from the node's seeded generator, so a
    seeded run stays reproducible; the draw is only made when this is > 0)."""
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
    stream_error_after: int | None = None
    """For streaming responses: send this many SSE events (at most all but the last), then the provider's
    in-band error event (Anthropic ``event: error`` / OpenAI-compatible ``data: {"error": ...}``, no
    ``[DONE]``), then end the body cleanly. Models a gateway whose upstream failed after the 200 was sent."""
    truncate_stream_after: int | None = None
    """For streaming responses: send this many SSE events (at most all but the last), then end the body
    cleanly without the final event (``data: [DONE]`` / ``message_stop``): a silently truncated stream."""
    stall_stream_after: int | None = None
    """For streaming responses: send the headers and this many SSE events (at most all but the last; 0 =
    headers only), then nothing until the client closes the connection or ``stall_max`` seconds pass."""
    stall_max: float = 30.0
    """Seconds a stalled stream is held open before the simulator closes the connection itself."""
    status_override: int | None = None
    """Answer every request with this status (and ``status_body`` if given), even before the key check."""
    status_body: dict[str, Any] | None = None
    """JSON body for ``status_override``; None = an error body in the provider's format."""
    status_text: str | None = None
    """A ``text/plain`` body for ``status_override`` instead of a JSON one (a gateway's page that is not
    JSON, whatever its status)."""
    seed: int = 0
    """Seed of the node's own random generator, so error/rate-limit draws are reproducible."""
    prompt_cache_size: int = 1024
    """Prompt prefixes the node remembers per model (a bounded LRU; 0: no prompt cache). A chat or messages
    request's longest remembered prefix of whole messages is reported as cached input
    (``prompt_tokens_details.cached_tokens`` / ``cache_read_input_tokens``)."""
    prefill_per_token: float = 0.0
    """Seconds per prompt token (word) not read from the prompt cache, waited before the response headers: the
    time to first token a cached prefix saves."""

    def validate(self) -> None:
        """Raise ValueError on values that would make the node misbehave in confusing ways."""
        for name in ("latency", "latency_jitter", "retry_after", "stall_max", "prefill_per_token"):
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
        for name in STREAM_FAULTS:
            count = getattr(self, name)
            if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
                raise ValueError(f"{name} must be None or an int >= 0, got {count!r}")
        if self.status_override is not None and (
            not isinstance(self.status_override, int)
            or isinstance(self.status_override, bool)
            or not 100 <= self.status_override <= 599
        ):
            raise ValueError(f"status_override must be None or an HTTP status, got {self.status_override!r}")
        if self.status_body is not None and not isinstance(self.status_body, dict):
            raise ValueError("status_body must be None or a dict")
        if self.status_text is not None and (not isinstance(self.status_text, str) or self.status_body is not None):
            raise ValueError("status_text must be None or a str, and not set with status_body")
        size = self.prompt_cache_size
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"prompt_cache_size must be an int >= 0, got {size!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an int, got {self.seed!r}")

    def stream_fault(self) -> tuple[str, int] | None:
        """The stream fault that applies (field name, event count), by ``STREAM_FAULTS`` precedence."""
        for name in STREAM_FAULTS:
            count = getattr(self, name)
            if count is not None:
                return name, count
        return None

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


STREAM_FAULTS: tuple[str, ...] = (
    "cut_stream_after",
    "stall_stream_after",
    "stream_error_after",
    "truncate_stream_after",
)
"""The stream-fault fields, in the order of precedence when several are set."""

FAULT_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(NodeFaults))
