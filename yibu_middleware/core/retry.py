"""What a failed attempt means, how long to wait, and whether a retry is affordable.

Pure decisions shared by every adapter; no I/O. The call plan (``plan.py``) puts
them together for one call; the budget is shared by all calls of a process.
"""

from __future__ import annotations

import enum
import math
import random
import threading
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

from .error_bodies import parse_json
from .nodes import Clock


class Kind(enum.Enum):
    """How an attempt failed, and so what may be done about it."""

    NOT_SENT = "connection failed"  # refused, reset or timed out while connecting: replay anywhere, at once
    NODE_FAILED = "node failed"  # 5xx, read timeout, stream cut before content: another node
    RATE_LIMITED = "rate limited"  # 429: honour retry-after, or another node
    FINAL = "not retried"  # the request itself is refused (4xx, quota, permission): never retried


# Statuses retried on another node (529: Anthropic's "overloaded").
RETRY_STATUSES = frozenset({408, 500, 502, 503, 504, 529})
# Gateway error codes that say the request can never succeed as it is, whatever the node
# (one-api / new-api / LiteLLM proxy; see the shared notes): not retried even on a 5xx.
FINAL_CODES = frozenset(
    {
        "insufficient_user_quota",
        "insufficient_quota",
        "pre_consume_token_quota_failed",
        "model_not_found",
        "access_denied",
        "key_model_access_denied",
        "budget_exceeded",
        "invalid_api_key",
    }
)


def classify_status(status: int, body: bytes | None) -> Kind | None:
    """None for a success; otherwise the kind of failure a response status means."""
    if status < 400:
        return None
    if status == 429:
        return Kind.FINAL if gateway_code(body) in FINAL_CODES else Kind.RATE_LIMITED
    if status in RETRY_STATUSES:
        return Kind.FINAL if gateway_code(body) in FINAL_CODES else Kind.NODE_FAILED
    return Kind.FINAL


def gateway_code(body: bytes | None) -> str | None:
    """The error code of an OpenAI-, Anthropic- or gateway-format error body."""
    if not body or body.lstrip()[:1] != b"{":
        return None
    document = parse_json(body)
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict):
        return None
    for field in ("code", "type"):
        value = error.get(field)
        if isinstance(value, str) and value in FINAL_CODES:
            return value
    value = error.get("code")
    return value if isinstance(value, str) else None


# A number of seconds from the wire this large is a point in time, not a wait: 10**9 s after
# 1970 is September 2001, and no gateway asks to wait 31 years. Some send Unix times where a
# duration is due (x-ratelimit-reset-requests: 1733356800), some in milliseconds.
EPOCH_SECONDS = 1e9
EPOCH_MILLISECONDS = 1e12


def wire_number(text: str) -> float | None:
    """A finite, non-negative number a node sent; None for anything else (nan, inf, -1, "soon")."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0.0 else None


def wire_seconds(seconds: float, now: float) -> float:
    """Seconds to wait for a number of seconds a node sent: a duration, or a Unix time in
    seconds or milliseconds (see ``EPOCH_SECONDS``), counted from ``now`` (0 once past)."""
    if seconds >= EPOCH_MILLISECONDS:
        seconds /= 1000.0
    if seconds >= EPOCH_SECONDS:
        return max(seconds - now, 0.0)
    return seconds


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds, HTTP date or, as some
    gateways send, a Unix time). None when neither is there or neither is a usable number: every
    value from the wire is checked (nan, inf, negative and garbage are ignored, never raised)."""
    wall = time.time() if now is None else now
    raw = headers.get("retry-after-ms")
    if raw is not None:
        value = wire_number(raw)
        if value is not None:
            return wire_seconds(value / 1000.0, wall)
    raw = headers.get("retry-after")
    if raw is None:
        return None
    value = wire_number(raw)
    if value is not None:
        return wire_seconds(value, wall)
    try:
        when = parsedate_to_datetime(raw)
        return max(when.timestamp() - wall, 0.0)
    except (TypeError, ValueError, OverflowError, IndexError):  # not a date, or one out of range
        return None


def full_jitter(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """AWS-style full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return rng.uniform(0.0, min(cap, base * (2**attempt)))


class RetryBudget:
    """Retries may be at most ``ratio`` of recent requests, or a small floor if that is more.

    Counted over a sliding window of ``window`` seconds in one-second buckets, for the
    whole process, sync and async callers alike. A gateway that fails everything gets
    ``ratio`` more load from us, not ``max_attempts`` times more (Envoy's retry
    budget, Google SRE's per-client retry limit). The floor lets a quiet process
    still retry its occasional failure.
    """

    __slots__ = ("_buckets", "_clock", "_lock", "floor", "others", "ratio", "window")

    def __init__(self, ratio: float = 0.2, floor: int = 10, window: int = 10, clock: Clock = time.monotonic) -> None:
        self.ratio = ratio
        self.floor = floor
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        # second -> [requests, retries]
        self._buckets: dict[int, list[int]] = {}
        # Fleet mode: the other processes' requests and retries in their windows, as last read
        # from Redis; the budget is then the fleet's (fleet/sync.py keeps this fresh).
        self.others = (0, 0)

    def counts(self) -> tuple[int, int]:
        """This process's requests and retries in the window."""
        with self._lock:
            self._bucket()
            return sum(b[0] for b in self._buckets.values()), sum(b[1] for b in self._buckets.values())

    def _bucket(self) -> list[int]:
        second = int(self._clock())
        bucket = self._buckets.get(second)
        if bucket is None:
            for old in [key for key in self._buckets if key <= second - self.window]:
                del self._buckets[old]
            bucket = self._buckets[second] = [0, 0]
        return bucket

    def record_request(self) -> None:
        with self._lock:
            self._bucket()[0] += 1

    def record_retry(self) -> None:
        """A retry that was not asked for here (e.g. the SDK's own) still costs budget."""
        with self._lock:
            self._bucket()[1] += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget if there is one left."""
        with self._lock:
            self._bucket()
            requests = sum(bucket[0] for bucket in self._buckets.values()) + self.others[0]
            retries = sum(bucket[1] for bucket in self._buckets.values()) + self.others[1]
            if retries >= max(self.floor, self.ratio * requests):
                return False
            self._bucket()[1] += 1
            return True

    def reset(self) -> None:
        self._lock = threading.Lock()
        self._buckets = {}
        self.others = (0, 0)
