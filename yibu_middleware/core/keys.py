"""Gateway key pools: which key an attempt sends, and which keys are benched.

Plain code with no I/O (the key files are read by ``keyfiles.py``). A relay gateway gives
each key its own quota and, often, its own models; a team holds several keys and wants the
traffic spread over them, and moved off a key the moment the gateway says it is spent.

- A *pool* is an ordered list of keys with weights; a call's model picks the pool
  (``keys_by_model`` patterns, first match; else the default pool).
- Keys are spread by smooth weighted round robin (nginx's): deterministic, even at any
  moment, and one lock-protected loop over a handful of keys per call.
- A key the gateway refuses for quota, or rejects (401), is *benched* until
  ``bench_seconds`` have passed: no call chooses it meanwhile (unless every key of its
  pool is benched, when the one due back first is sent anyway, so that the caller gets the
  gateway's own answer rather than one we made up).
- The bench is behind a small seam (``KeyBench``): keys are named there by a fingerprint,
  never by value, and times are wall-clock seconds, so that a store shared by a fleet of
  processes can replace the in-process one (``LocalBench``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple, Protocol

from .redact import mask

# Gateway codes that mean the key's quota is spent (one-api / new-api / OpenAI): the key is
# benched and the call goes on with another key of its pool.
QUOTA_CODES = frozenset({"insufficient_user_quota", "pre_consume_token_quota_failed", "insufficient_quota"})


class GatewayKey(NamedTuple):
    """One key of a pool. ``id`` names it wherever the key itself must not go (the bench, a fleet
    store, a span): a fingerprint no one can turn back into the key."""

    value: bytes
    weight: float
    id: str
    source: str  # where it was configured: "api_keys[2]", "file /run/secrets/keys line 3"

    @property
    def masked(self) -> str:
        return mask(self.value.decode("ascii"))


def key_id(value: bytes) -> str:
    return "k" + hashlib.sha256(value).hexdigest()[:12]


def make_key(value: str, weight: float = 1.0, source: str = "") -> GatewayKey:
    raw = value.encode("ascii")
    return GatewayKey(raw, weight, key_id(raw), source)


def key_refusal(status: int, code: str | None) -> str | None:
    """Why the gateway refused the key an attempt sent (so another key may do), or None.

    A quota code on any status (one-api answers 401, new-api 403, OpenAI 429), or a 401: the
    key itself is rejected (revoked, mistyped, expired). A 403 without a quota code is about
    the request (a model the key may not use, an IP), not a spent key: not a reason to bench."""
    if code in QUOTA_CODES:
        return f"quota: {code}"
    if status == 401:
        return "rejected: 401" + (f" {code}" if code else "")
    return None


# --- the bench: the seam a fleet store replaces -----------------------------------------------


class Benched(NamedTuple):
    until: float  # wall-clock seconds (time.time()): comparable across processes
    reason: str


class KeyBench(Protocol):
    """Where benched keys are kept. The in-process one is ``LocalBench``; a fleet store (Redis)
    implements the same three methods, keyed by ``GatewayKey.id``, with wall-clock times."""

    def bench(self, key_id: str, until: float, reason: str) -> None:
        """Bench ``key_id`` until ``until`` (keeps a later time already set)."""

    def benched(self, key_id: str, now: float) -> Benched | None:
        """The key's bench if it is still on it at ``now``, else None."""

    def clear(self) -> None:
        """Forget every bench (a forked child starts with the parent's knowledge dropped)."""


class LocalBench:
    """The bench of one process: a dict, read without a lock (one lookup), written under one."""

    __slots__ = ("_benched", "_lock")

    def __init__(self) -> None:
        self._benched: dict[str, Benched] = {}
        self._lock = threading.Lock()

    def bench(self, key_id: str, until: float, reason: str) -> None:
        with self._lock:
            known = self._benched.get(key_id)
            if known is None or known.until < until:
                self._benched[key_id] = Benched(until, reason)

    def benched(self, key_id: str, now: float) -> Benched | None:
        entry = self._benched.get(key_id)
        if entry is None or entry.until <= now:
            return None
        return entry

    def clear(self) -> None:
        self._lock = threading.Lock()
        self._benched = {}


# --- a pool, and the ring of pools ------------------------------------------------------------


class KeyPool:
    """The keys one model may use, spread by smooth weighted round robin over those not benched."""

    __slots__ = ("_current", "_lock", "keys", "name")

    def __init__(self, name: str, keys: Sequence[GatewayKey]) -> None:
        self.name = name  # "default", or the keys_by_model pattern
        self.keys = tuple(keys)
        self._current = [0.0] * len(self.keys)
        self._lock = threading.Lock()

    def choose(self, bench: KeyBench, now: float, exclude: Iterable[str] = ()) -> GatewayKey | None:
        """The next key not benched and not in ``exclude`` (ids); None when there is none."""
        excluded = frozenset(exclude)
        with self._lock:
            best = -1
            total = 0.0
            current = self._current
            for index, key in enumerate(self.keys):
                if key.id in excluded or bench.benched(key.id, now) is not None:
                    continue
                current[index] += key.weight
                total += key.weight
                if best < 0 or current[index] > current[best]:
                    best = index
            if best < 0:
                return None
            current[best] -= total
            return self.keys[best]

    def due_first(self, bench: KeyBench, now: float, exclude: Iterable[str] = ()) -> GatewayKey | None:
        """Of the keys not in ``exclude``, the one whose bench ends first (every key benched)."""
        excluded = frozenset(exclude)
        candidates = [key for key in self.keys if key.id not in excluded]
        if not candidates:
            return None

        def until(key: GatewayKey) -> float:
            entry = bench.benched(key.id, now)
            return 0.0 if entry is None else entry.until

        return min(candidates, key=until)


class KeyState(NamedTuple):
    """One key as ``yibu doctor`` shows it: masked, never whole."""

    pool: str
    masked: str
    source: str
    weight: float
    state: str  # "ready", or "benched for 42 s (quota: insufficient_user_quota)"


class KeyRing:
    """Every pool of the process, and their shared bench."""

    __slots__ = ("_by_model", "_clock", "_default", "_patterns", "bench", "bench_seconds")

    def __init__(
        self,
        default: Sequence[GatewayKey],
        by_model: Mapping[str, Sequence[GatewayKey]],
        bench_seconds: float,
        bench: KeyBench | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bench: KeyBench = bench if bench is not None else LocalBench()
        self.bench_seconds = bench_seconds
        self._clock = clock
        self._default = KeyPool("default", default)
        self._patterns = tuple((pattern, KeyPool(pattern, keys)) for pattern, keys in by_model.items())
        self._by_model: dict[str | None, KeyPool] = {}  # model -> its pool, remembered (bounded)

    @property
    def first(self) -> GatewayKey | None:
        """The key a call's headers are prepared with (an attempt may swap it)."""
        return self._default.keys[0] if self._default.keys else None

    def pool_for(self, model: str | None) -> KeyPool:
        pool = self._by_model.get(model)
        if pool is None:
            pool = self._default
            if model is not None:
                for pattern, candidate in self._patterns:
                    if fnmatch.fnmatchcase(model, pattern):
                        pool = candidate
                        break
            if len(self._by_model) > 1024:
                self._by_model.clear()
            self._by_model[model] = pool
        return pool

    def choose(self, model: str | None, exclude: Iterable[str] = ()) -> GatewayKey | None:
        """The key for an attempt on ``model``: the next ready one of its pool not in ``exclude``;
        when every one is benched, the one due back first (the gateway then answers for itself);
        None only when every key of the pool is in ``exclude``."""
        pool = self.pool_for(model)
        now = self._clock()
        return pool.choose(self.bench, now, exclude) or pool.due_first(self.bench, now, exclude)

    def ready(self, model: str | None, exclude: Iterable[str] = ()) -> GatewayKey | None:
        """The next key not benched and not in ``exclude``, or None: never a benched key."""
        return self.pool_for(model).choose(self.bench, self._clock(), exclude)

    def refused(self, key: GatewayKey, reason: str) -> None:
        self.bench.bench(key.id, self._clock() + self.bench_seconds, reason)

    def explain_all_benched(self, model: str | None) -> str:
        """Why no key is left for ``model``: each key of its pool, masked, with its bench."""
        pool = self.pool_for(model)
        now = self._clock()
        parts = []
        for key in pool.keys:
            entry = self.bench.benched(key.id, now)
            if entry is None:
                parts.append(f"{key.masked}: refused in this call")
            else:
                parts.append(f"{key.masked}: {entry.reason}, back in {max(entry.until - now, 0.0):.0f} s")
        where = "the default pool" if pool.name == "default" else f"the keys_by_model pool {pool.name!r}"
        return (
            f"Every gateway key of {where} was refused ({'; '.join(parts)}); benched keys are tried again after"
            f" keys.bench_seconds ({self.bench_seconds:g} s). Top up or replace the keys at the gateway, or add"
            " keys (api_keys, api_keys_file)"
        )

    def states(self) -> list[KeyState]:
        now = self._clock()
        out = []
        for pool in (self._default, *(pool for _, pool in self._patterns)):
            for key in pool.keys:
                entry = self.bench.benched(key.id, now)
                state = "ready" if entry is None else f"benched for {entry.until - now:.0f} s ({entry.reason})"
                out.append(KeyState(pool.name, key.masked, key.source, key.weight, state))
        return out

    def replace_default(self, keys: Sequence[GatewayKey]) -> None:
        """A key file changed: its keys replace the default pool (a call in flight keeps its key)."""
        self._default = KeyPool("default", keys)
        self._by_model = {}


def parse_key_line(line: str, source: str) -> GatewayKey | None:
    """One key as a list or a file gives it: ``key`` or ``key weight`` (a key has no spaces).
    None for a blank line or a ``#`` comment. ValueError, naming ``source`` (never the key),
    for anything else malformed."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    parts = text.split()
    if len(parts) > 2:
        raise ValueError(f"{source}: expected a key, or a key and a weight separated by a space")
    weight = 1.0
    if len(parts) == 2:
        try:
            weight = float(parts[1])
        except ValueError:
            weight = -1.0
        if not (weight > 0 and weight < float("inf")):
            raise ValueError(f"{source}: the weight after the key must be a number greater than 0")
    value = parts[0]
    for position, char in enumerate(value, 1):
        if not "!" <= char <= "~":
            kind = "a control" if char.isascii() else "a non-ASCII"
            raise ValueError(
                f"{source}: the key holds {kind} character (U+{ord(char):04X}) at position {position}; a key is"
                " printable ASCII with no spaces"
            )
    return make_key(value, weight, source)
