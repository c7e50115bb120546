"""A simulated node's prompt cache: the prefixes of the prompts it has seen, per model.

Providers cache prompt prefixes per upstream (OpenAI reports ``prompt_tokens_details.cached_tokens``,
Anthropic ``cache_read_input_tokens``) and answer a cached prefix's first token sooner. This models
that closely enough for tests and benchmarks to see the effect of where a conversation's turns go:
a prompt is a sequence of messages (an Anthropic ``system`` first), each prefix of whole messages is
remembered by its hash in a bounded LRU, and a new prompt's cached part is its longest remembered
prefix. Tokens are counted as the simulator counts them everywhere: words.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from typing import Any, NamedTuple

from .responses import count_words


class CacheRead(NamedTuple):
    prompt_tokens: int  # the whole prompt's
    cached_tokens: int  # of which read from the cache


class PromptCache:
    """``size``: prefixes remembered per model (0: no cache, nothing is ever cached)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._prefixes: dict[str, OrderedDict[bytes, None]] = {}
        self._lock = threading.Lock()

    def read(self, model: str, messages: Any, system: Any = None) -> CacheRead:
        """The prompt's cached part, then the prompt's prefixes remembered (as a node caches a prompt
        it has processed)."""
        items = [{"role": "system", "content": system}] if system else []
        if isinstance(messages, list):
            items.extend(messages)
        prompt = count_words(items)
        if self.size <= 0 or not items:
            return CacheRead(prompt, 0)
        digest = hashlib.blake2b(model.encode(), digest_size=16)
        hashes: list[bytes] = []
        for item in items:
            digest.update(json.dumps(item, sort_keys=True, separators=(",", ":")).encode())
            hashes.append(digest.copy().digest())
        with self._lock:
            remembered = self._prefixes.setdefault(model, OrderedDict())
            hit = 0
            for length, prefix in enumerate(hashes, 1):
                if prefix in remembered:
                    hit = length
            for prefix in hashes:
                remembered[prefix] = None
                remembered.move_to_end(prefix)
            while len(remembered) > self.size:
                remembered.popitem(last=False)
        return CacheRead(prompt, count_words(items[:hit]))

    def clear(self) -> None:
        with self._lock:
            self._prefixes.clear()
