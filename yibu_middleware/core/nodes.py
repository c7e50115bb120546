"""The pool of gateway nodes and the choice of the next one to try.

No I/O and no clocks of its own: callers report what happened and ask for a node.
Selection here is plain rotation; the pool is the seam where latency-aware choice,
pinning and ejection plug in without any adapter changing.

Plain classes with ``__slots__`` rather than dataclasses: these are built at
interpreter start, whose cost is budgeted.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Collection, Sequence
from urllib.parse import urlsplit


class Node:
    """One gateway node, parsed once from its base URL. Identity is the node itself."""

    __slots__ = ("base_path", "base_url", "failed", "host", "port", "scheme", "sent")

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.base_url = base_url
        self.scheme = parts.scheme
        self.host = (parts.hostname or "").lower()
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")  # e.g. "/v1"
        # Counters for `yibu doctor` and the demo; updated under the pool's lock.
        self.sent = 0
        self.failed = 0

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"

    def url_for(self, gateway_path: str, query: str) -> str:
        url = f"{self.scheme}://{self.label}{self.base_path}{gateway_path}"
        return f"{url}?{query}" if query else url

    def __repr__(self) -> str:
        return f"Node({self.base_url!r})"


class NodePool:
    __slots__ = ("_lock", "_turn", "nodes")

    def __init__(self, urls: Sequence[str]) -> None:
        if not urls:
            raise ValueError("a node pool needs at least one node")
        self.nodes = [Node(url) for url in urls]
        self._turn = itertools.count()
        self._lock = threading.Lock()

    def choose(self, exclude: Collection[Node] = ()) -> Node | None:
        """The next node in rotation that is not in ``exclude``; None when all are."""
        count = len(self.nodes)
        start = next(self._turn)  # itertools.count is atomic under the GIL
        for offset in range(count):
            node = self.nodes[(start + offset) % count]
            if node not in exclude:
                return node
        return None

    def report(self, node: Node, ok: bool) -> None:
        with self._lock:
            node.sent += 1
            if not ok:
                node.failed += 1

    def reset(self) -> None:
        """Forget per-process state; called in a forked child."""
        self._turn = itertools.count()
        self._lock = threading.Lock()
        for node in self.nodes:
            node.sent = node.failed = 0
