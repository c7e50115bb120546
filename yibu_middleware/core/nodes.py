"""The pool of gateway nodes and the choice of the next one to try.

No I/O and no clocks of its own: callers report what happened and ask for a node.
Selection here is plain rotation; the pool is the seam where latency-aware choice,
pinning and ejection plug in without any adapter changing.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass(eq=False, slots=True)
class Node:
    """One gateway node, parsed once from its base URL."""

    base_url: str
    scheme: str
    host: str
    port: int
    base_path: str  # e.g. "/v1", no trailing slash
    # Counters for ``yibu doctor`` and the demo; updated under the pool's lock.
    sent: int = 0
    failed: int = 0

    @classmethod
    def from_url(cls, base_url: str) -> Node:
        parts = urlsplit(base_url)
        scheme = parts.scheme
        port = parts.port or (443 if scheme == "https" else 80)
        return cls(base_url, scheme, (parts.hostname or "").lower(), port, parts.path.rstrip("/"))

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"

    def url_for(self, gateway_path: str, query: str) -> str:
        url = f"{self.scheme}://{self.label}{self.base_path}{gateway_path}"
        return f"{url}?{query}" if query else url


@dataclass(slots=True)
class NodePool:
    nodes: Sequence[Node]
    _turn: itertools.count[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_urls(cls, urls: Sequence[str]) -> NodePool:
        if not urls:
            raise ValueError("a node pool needs at least one node")
        return cls([Node.from_url(url) for url in urls])

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
