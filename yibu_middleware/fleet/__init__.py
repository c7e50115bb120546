"""Fleet mode: the limits and the node knowledge of every process of an app, shared through Redis.

Off unless ``state.redis_url`` is set; then ``runtime.Runtime`` builds a :class:`Fleet` (no I/O
until the first call) and wraps its limiter in a :class:`FleetLimiter`; the first call starts
the :class:`Syncer` thread. Only this package imports redis, and only in fleet mode.

- ``layout.py``: the key names and the gateway key's fingerprint (pure);
- ``scripts.py``: the server-side scripts that admit and release calls atomically;
- ``store.py``: the clients, and what happens when Redis does not answer (degraded mode);
- ``limiter.py``: fleet limits over the process's own queue;
- ``sync.py``: the background exchange of ejections, holds, latency, loads and the retry budget;
- ``shared.py``: the key bench and the spend counters (key pools and budgets), shared;
- ``status.py``: the live view for ``yibu status`` and ``yibu doctor``, read from Redis only.
"""

from __future__ import annotations

from .limiter import FleetLimiter, FleetPermit
from .store import Fleet
from .sync import Syncer

__all__ = ["Fleet", "FleetLimiter", "FleetPermit", "Syncer"]
