"""Context affinity: the node a conversation's first attempt goes to (no I/O).

A prompt cache is per upstream: a conversation whose turns are spread over three gateway
nodes finds its prefix cached about a third as often as one whose turns stay together. So
a chat call (OpenAI chat and Responses, Anthropic messages) gets an *affinity key*, and the
key is mapped to a node by consistent hashing with bounded loads (Mirrokni, Thorup and
Zadimoghaddam, "Consistent Hashing with Bounded Loads", 2017).

The key, in order:
- the request's own ``prompt_cache_key``, else ``user``, else ``metadata.user_id``, else a
  Responses ``conversation`` id: what the app itself says belongs together;
- else a hash of the model and the request's stable prefix: the leading system/developer
  messages and the first other message (``messages``, or a Responses ``input`` list), and
  ``system``, ``instructions`` and ``tools`` when they come before the messages. Every later
  turn of a conversation starts with the same messages, so it gets the same key.

Only a bounded part of the body is read: the first ``HEAD_BYTES`` are walked member by
member with the standard library's C scanner (nothing past the first messages is built into
objects), and the explicit fields that clients put after the messages (the openai SDK writes
``prompt_cache_key`` and ``user`` after ``messages``) are looked for in the last
``TAIL_BYTES`` only. A 400 KB conversation costs the same as a 30 KB one.

The hash is blake2b, never Python's ``hash()`` (salted per process): every process, and every
process of a fleet, maps the same conversation to the same point, and the ring's points are
the nodes' URLs hashed the same way, so they agree on the node too, with no shared state.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from json import decoder
from typing import Any, Generic, NamedTuple, TypeVar

HEAD_BYTES = 16 * 1024  # the body's first bytes walked for the stable prefix and the explicit fields
TAIL_BYTES = 64 * 1024  # the body's last bytes searched for explicit fields written after the messages
POINTS_PER_WEIGHT = 160  # virtual points of a node of weight 1 on the ring

# Key sources, as the span records them.
PROMPT_CACHE_KEY = "prompt_cache_key"
USER = "user"
METADATA_USER_ID = "metadata.user_id"
CONVERSATION = "conversation"
PREVIOUS_RESPONSE_ID = "previous_response_id"
PREFIX = "prefix"

_EXPLICIT_ORDER = (PROMPT_CACHE_KEY, USER, METADATA_USER_ID, CONVERSATION)
_PREFIX_FIELDS = frozenset({"system", "instructions", "tools"})
_LEADING_ROLES = frozenset({"system", "developer"})

# The standard library's C scanners (not in its type stubs): one JSON value at an index, and
# one string's content after its opening quote; each returns (value, index after it).
_scan: Callable[[str, int], tuple[Any, int]] = decoder.JSONDecoder().scan_once  # type: ignore[attr-defined]
scanstring: Callable[[str, int], tuple[str, int]] = decoder.scanstring  # type: ignore[attr-defined]
_SPACE = re.compile(r"[ \t\n\r]*")


def _skip(text: str, i: int) -> int:
    """Past the JSON whitespace at ``i`` (most often none, or one space: no regex for those)."""
    char = text[i : i + 1]
    if char not in _BLANKS or not char:
        return i
    if text[i + 1 : i + 2] not in _BLANKS:
        return i + 1
    found = _SPACE.match(text, i)
    return i if found is None else found.end()


_BLANKS = " \t\n\r"


# An explicit field written after the messages, as a client serialises it: the value is a plain
# JSON string (a Responses ``conversation`` may be ``{"id": "..."}``). A key whose quote is escaped
# is text inside a string, not a field (checked apart: a look-behind here would cost the search
# its fast scan for the quote). The last match wins: the top-level field comes after every message.
_TAIL_FIELD = re.compile(
    rb'"(prompt_cache_key|user|user_id|previous_response_id|conversation)"\s*:\s*'
    rb'(?:\{\s*"id"\s*:\s*)?"((?:[^"\\]|\\.){1,512})"'
)
_TAIL_NAMES = {
    b"prompt_cache_key": PROMPT_CACHE_KEY,
    b"user": USER,
    b"user_id": METADATA_USER_ID,
    b"previous_response_id": PREVIOUS_RESPONSE_ID,
    b"conversation": CONVERSATION,
}


def hash64(data: bytes) -> int:
    """A stable 64-bit hash: the same in every process and on every machine."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class AffinityKey(NamedTuple):
    point: int  # the key's position on the ring (64 bits)
    source: str  # where it came from: one of the sources above
    has_cache_key: bool  # the body has its own prompt_cache_key (never replaced)
    follow: str | None  # a previous_response_id or conversation id whose node may be remembered

    @property
    def cache_key(self) -> str:
        """The value for a ``prompt_cache_key`` the request lacks: the key, never what it came
        from (a user id, a prompt) in clear."""
        return f"yibu-{self.point:016x}"


def is_chat_path(path: str) -> bool:
    """The calls that carry a conversation: OpenAI chat and Responses, Anthropic messages."""
    return path.endswith(("/chat/completions", "/responses", "/messages"))


def affinity_key(path: str, body: bytes | None, model: str | None) -> AffinityKey | None:
    """The affinity key of a call (None: not a chat call, or a body with nothing to key on)."""
    if not body or not is_chat_path(path) or body.lstrip()[:1] != b"{":
        return None
    head = body[:HEAD_BYTES].decode("utf-8", "ignore")  # a character cut at the edge is dropped
    fields, parts, whole = _walk(head)
    if not whole and len(body) > HEAD_BYTES:
        _tail_fields(body, fields)
    follow = fields.get(PREVIOUS_RESPONSE_ID) or fields.get(CONVERSATION)
    model_bytes = (model or "").encode()
    for source in _EXPLICIT_ORDER:
        value = fields.get(source)
        if value:
            point = hash64(b"\0".join((source.encode(), model_bytes, value.encode("utf-8", "replace"))))
            return AffinityKey(point, source, PROMPT_CACHE_KEY in fields, follow)
    if parts:
        digest = hashlib.blake2b(digest_size=8)
        digest.update(b"prefix\0" + model_bytes)
        for name, text in parts:
            digest.update(b"\0" + name.encode() + b"\0" + text.encode("utf-8", "replace"))
        return AffinityKey(int.from_bytes(digest.digest(), "big"), PREFIX, False, follow)
    if follow:  # a Responses turn that only names the one before it
        return AffinityKey(hash64(b"follow\0" + follow.encode()), PREVIOUS_RESPONSE_ID, False, follow)
    return None


def _walk(head: str) -> tuple[dict[str, str], list[tuple[str, str]], bool]:
    """Walk the top-level members of the JSON object that ``head`` starts (maybe cut short).

    Returns the explicit fields found, the prefix parts (name, raw JSON text), and whether the
    object ended within ``head`` (then nothing is left to search). One regex match reads each
    member's name (with the comma and colon around it), one C scan its value: this runs on
    every chat call, so Python-level steps are few."""
    fields: dict[str, str] = {}
    parts: list[tuple[str, str]] = []
    member = _MEMBER.match
    i = _skip(head, 0) + 1  # past the "{"
    while True:
        found = member(head, i)
        if found is None:
            closed = _CLOSE.match(head, i)
            return fields, parts, closed is not None and closed.group(1) == "}"
        name = found.group(1)
        if "\\" in name:  # a name spelt with escapes: decoded as the gateway reads it
            try:
                name = json.loads(f'"{name}"')
            except ValueError:
                return fields, parts, False
        i = found.end()
        if (name == "messages" or name == "input") and head.startswith("[", i):
            i, finished = _first_messages(head, i, parts)
            if not finished:
                return fields, parts, False
            continue
        try:
            value, after = _scan(head, i)
        except (StopIteration, ValueError):  # the value runs past the window
            if name in _PREFIX_FIELDS or name == "input":
                parts.append((name, head[i:]))  # what the window holds of it: the same every turn
            return fields, parts, False
        if name in _NOTED:
            _note(name, value, head[i:after], fields, parts)
        i = after


# A member's name, after the "{" or the previous value: the comma, the name, the colon.
_MEMBER = re.compile(r'[ \t\n\r]*,?[ \t\n\r]*"((?:[^"\\]|\\.)*)"[ \t\n\r]*:[ \t\n\r]*')
_CLOSE = re.compile(r"[ \t\n\r]*([}\]])")
_ITEM = re.compile(r"[ \t\n\r]*,?[ \t\n\r]*")  # before an array's element: the comma
_NOTED = frozenset({*_PREFIX_FIELDS, "input", PROMPT_CACHE_KEY, USER, PREVIOUS_RESPONSE_ID, "conversation", "metadata"})


def _note(name: str, value: object, raw: str, fields: dict[str, str], parts: list[tuple[str, str]]) -> None:
    if name in _PREFIX_FIELDS or name == "input":  # ``input`` here is a string (a list is walked)
        parts.append((name, raw))
    elif name in (PROMPT_CACHE_KEY, USER, PREVIOUS_RESPONSE_ID) and isinstance(value, str):
        fields[name] = value
    elif name == "conversation":
        conversation = value.get("id") if isinstance(value, dict) else value
        if isinstance(conversation, str):
            fields[CONVERSATION] = conversation
    elif name == "metadata" and isinstance(value, dict) and isinstance(value.get("user_id"), str):
        fields[METADATA_USER_ID] = value["user_id"]


def _first_messages(head: str, i: int, parts: list[tuple[str, str]]) -> tuple[int, bool]:
    """Walk a ``messages`` (or ``input``) array from its "[" at ``i``: the leading system and
    developer messages and the first other one are prefix parts; the rest is skipped over while
    the window lasts. Returns where the walk ended and whether the array ended in the window."""
    collecting = True
    item = _ITEM.match
    i += 1
    while True:
        i = item(head, i).end()  # type: ignore[union-attr]  # it matches the empty string
        char = head[i : i + 1]
        if char == "]":
            return i + 1, True
        if not char:
            return i, False
        try:
            message, after = _scan(head, i)
        except (StopIteration, ValueError):
            if collecting:
                parts.append(("message", head[i:]))  # a first message longer than the window
            return i, False
        if collecting:
            parts.append(("message", head[i:after]))
            role = message.get("role") if message.__class__ is dict else None
            collecting = role in _LEADING_ROLES
        i = after


def _tail_fields(body: bytes, fields: dict[str, str]) -> None:
    """Explicit fields in the body's last bytes (past the head window), the last of each name."""
    found: dict[str, bytes] = {}
    for match in _TAIL_FIELD.finditer(body, max(HEAD_BYTES, len(body) - TAIL_BYTES)):
        if not _escaped(body, match.start()):
            found[_TAIL_NAMES[match.group(1)]] = match.group(2)
    for source, raw in found.items():
        if source in fields:
            continue  # the head's reading is exact: it wins
        value = raw.decode("utf-8", "replace")
        if b"\\" in raw:
            with contextlib.suppress(ValueError):
                value = json.loads(b'"' + raw + b'"')
        fields[source] = value


def _escaped(body: bytes, quote: int) -> bool:
    """Is the quote at ``quote`` escaped (preceded by an odd number of backslashes)?"""
    start = quote
    while start > 0 and body[start - 1] == 0x5C:  # a backslash
        start -= 1
    return (quote - start) % 2 == 1


_FIELD_START = re.compile(rb"\{\s*")


def with_prompt_cache_key(body: bytes, cache_key: str) -> bytes:
    """``body`` with ``"prompt_cache_key"`` first in its top-level object (the caller checked it has
    none): inserted, not re-encoded, so a large body costs one copy."""
    start = _FIELD_START.match(body, len(body) - len(body.lstrip()))
    if start is None:
        return body
    field = b'"prompt_cache_key":' + json.dumps(cache_key).encode()
    rest = body[start.end() :]
    separator = b"" if rest[:1] == b"}" else b","
    return body[: start.end()] + field + separator + rest


# --- the ring ---------------------------------------------------------------------------------

N = TypeVar("N")


class Ring(Generic[N]):
    """Consistent hashing: each node has ``POINTS_PER_WEIGHT x weight`` points on a ring of 64-bit
    positions (its name hashed with the point's number), and a key belongs to the first node
    clockwise from its own point. Adding or removing a node moves only the keys of its points.

    ``names``: how each node is named on the ring (its base URL): the same in every process."""

    __slots__ = ("_orders", "_owners", "_points", "nodes")

    def __init__(self, nodes: Sequence[N], names: Sequence[str], weights: Sequence[float]) -> None:
        points: list[tuple[int, int]] = []
        for index, (name, weight) in enumerate(zip(names, weights, strict=True)):
            for number in range(max(1, round(POINTS_PER_WEIGHT * weight))):
                points.append((hash64(f"{name}#{number}".encode()), index))
        points.sort()
        self.nodes = list(nodes)
        self._points = [point for point, _ in points]
        self._owners = [owner for _, owner in points]
        # The order of each point seen lately: a conversation asks for the same one every turn.
        self._orders: dict[int, tuple[N, ...]] = {}

    def order(self, point: int) -> tuple[N, ...]:
        """Every node, in the order a key at ``point`` tries them: its own first, then clockwise."""
        found = self._orders.get(point)
        if found is None:
            if len(self._orders) >= 4096:
                self._orders.clear()  # bounded; refilled by the conversations still going
            found = self._orders[point] = self._walk(point)
        return found

    def _walk(self, point: int) -> tuple[N, ...]:
        points, owners, nodes = self._points, self._owners, self.nodes
        count = len(points)
        start = bisect.bisect_left(points, point)
        seen: list[int] = []
        for step in range(count):
            owner = owners[(start + step) % count]
            if owner not in seen:
                seen.append(owner)
                if len(seen) == len(nodes):
                    break
        return tuple(nodes[index] for index in seen)


def capacity(load_factor: float, total_load: float, weight: float, total_weight: float) -> float:
    """The most a node may carry when one more call comes: ``load_factor`` times its share of
    the load with that call counted (the paper's ``ceil(c * (m + 1) / n)``, weighted)."""
    return -(-load_factor * (total_load + 1) * weight // total_weight)  # ceil, on floats


Spill = tuple[N, N]
"""A conversation placed off its node for load: (where it went, the node it would have gone to)."""


def place(
    order: Sequence[N],
    eligible: Collection[N],
    load: Mapping[N, float],
    weight: Mapping[N, float],
    slow: Collection[N],
    load_factor: float,
    spilled: Spill[N] | None = None,
) -> tuple[N | None, Spill[N] | None]:
    """The node for a call by its key's ring ``order``, and what to remember of a spill.

    The key's *natural* node is the first of ``order`` that is eligible (healthy, not excluded)
    and not slow. The call goes there when it is under its bounded load, else to the next such
    node on the ring that is; None when none is (the caller then chooses by latency alone).
    The load that counts is the eligible nodes' (an ejected node's calls are not the others' to
    share).

    A conversation spilled for load (``spilled``) stays where it went while that node is still
    valid and under the bound and its natural node is the same: going back the moment the
    natural node has room would cost a second cache miss for a balance already within the
    bound. One moved because its node was ejected or slow is not a spill: when that node is
    healthy again it is the natural node again, and the conversation goes back to it."""
    total_load = sum(load[node] for node in eligible)
    total_weight = sum(weight[node] for node in eligible)

    def usable(node: N) -> bool:
        fits = load[node] + 1 <= capacity(load_factor, total_load, weight[node], total_weight)
        return fits and node in eligible and node not in slow

    natural = next((node for node in order if node in eligible and node not in slow), None)
    if natural is None:
        return None, None
    if spilled is not None and spilled[1] is natural and spilled[0] in eligible and usable(spilled[0]):
        return spilled[0], spilled
    for node in order:
        if node in eligible and usable(node):
            return node, None if node is natural else (node, natural)
    return None, None


def pick(
    order: Sequence[N],
    eligible: Collection[N],
    load: Mapping[N, float],
    weight: Mapping[N, float],
    slow: Collection[N],
    load_factor: float,
) -> N | None:
    """``place`` for a call with nothing remembered: the first usable node of ``order``."""
    return place(order, eligible, load, weight, slow, load_factor)[0]


SLOW_MARGIN = 0.1  # seconds: a node is slow only when it is also this much slower than the median


def slow_nodes(estimates: Mapping[N, float], slow_factor: float, margin: float = SLOW_MARGIN) -> set[N]:
    """The nodes whose latency estimate (peak-EWMA) is over ``slow_factor`` times the lower median's
    (with two nodes, the faster one's: a mean would let a node ten times slower pass) and at least
    ``margin`` seconds over it: on answers of a few milliseconds one pause of the machine makes a
    node "three times slower", and moving a conversation off its cache for 10 ms is no gain."""
    if len(estimates) < 2:
        return set()
    typical = sorted(estimates.values())[(len(estimates) - 1) // 2]
    bar = max(slow_factor * typical, typical + margin)
    return {node for node, estimate in estimates.items() if estimate > bar}


K = TypeVar("K")
V = TypeVar("V")


class Remembered(Generic[K, V]):
    """A bounded map, least recently used out first: which node produced a Responses answer
    (``previous_response_id``) or served a conversation's last turn."""

    __slots__ = ("_items", "_lock", "size")

    def __init__(self, size: int) -> None:
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self.size = size

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            if len(self._items) > self.size:
                self._items.popitem(last=False)

    def forget(self, key: K) -> None:
        with self._lock:
            self._items.pop(key, None)

    def clear(self) -> None:
        """Forget everything; called in a forked child (whose lock is made anew)."""
        self._lock = threading.Lock()
        self._items.clear()


LoadView = Callable[[Sequence[N]], Sequence[float]]
"""The seam for the load the bound uses: the load of each node, in the order given. The pool's
own is its in-flight counts; a fleet-wide view (shared by several processes) can stand in."""
