"""The key bench and the spend counters of issue 18, shared by the fleet.

Both implement the seams ``core.keys.KeyBench`` and ``core.spend.SpendStore`` as in-process
objects that the syncer (``sync.py``) keeps in step with Redis, so a call still reads them
with no round trip:

- ``FleetBench``: a key benched here (quota gone, rejected) is told to every process through
  the event stream, as an ejection is, and kept in a hash for processes that start later; one
  benched elsewhere is benched here within a tick. Times travel as seconds left, not as
  clock readings, so hosts whose clocks disagree still agree on how long.
- ``FleetSpend``: each process adds its calls' cost to per-period counters in Redis (a hash
  per period start, a field per model) and reads the fleet's totals back every tick; budgets
  are checked against those totals plus what this process spent since. A budget therefore
  holds for the fleet up to what the processes spend in one tick (200 ms) at once.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from decimal import Decimal

from ..core.keys import LocalBench
from ..core.spend import LocalSpend, period_start

# How long a period's counters are kept in Redis after it began (then they expire on their own).
SPEND_KEEP_SECONDS = {"hour": 2 * 3600, "day": 2 * 86400, "month": 40 * 86400}


class FleetBench(LocalBench):
    """The bench of this process, told to and by the fleet (see the module notes)."""

    __slots__ = ("news",)

    def __init__(self) -> None:
        super().__init__()
        self.news: list[tuple[str, float, str]] = []  # (key id, seconds benched, reason) to tell

    def bench(self, key_id: str, until: float, reason: str) -> None:
        super().bench(key_id, until, reason)
        self.news.append((key_id, until - time.time(), reason))

    def learn(self, key_id: str, seconds: float, reason: str) -> None:
        """Another process benched ``key_id`` for ``seconds`` more (not told back)."""
        LocalBench.bench(self, key_id, time.time() + seconds, reason)

    def take_news(self) -> list[tuple[str, float, str]]:
        news, self.news = self.news, []
        return news

    def clear(self) -> None:
        super().clear()
        self.news = []


class FleetSpend:
    """Spend counters: the fleet's as last read, plus what this process added since."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fleet: dict[tuple[str, datetime], dict[str, Decimal]] = {}  # as last read from Redis
        self._in_transit = LocalSpend()  # sent to Redis, not yet in a snapshot read back
        self._unsent = LocalSpend()  # added here since the last exchange
        self._pending: list[tuple[str, Decimal, datetime]] = []

    # --- the SpendStore seam ------------------------------------------------------------------

    def add(self, model: str, cost: Decimal, now: datetime) -> None:
        with self._lock:
            self._unsent.add(model, cost, now)
            self._pending.append((model, cost, now))

    def spent(self, period: str, now: datetime, models: str | None = None) -> Decimal:
        import fnmatch

        counts = self._fleet.get((period, period_start(period, now)), {})
        if models is None:
            fleet = sum(counts.values(), Decimal(0))
        else:
            fleet = sum((cost for model, cost in counts.items() if fnmatch.fnmatchcase(model, models)), Decimal(0))
        return fleet + self._in_transit.spent(period, now, models) + self._unsent.spent(period, now, models)

    # --- the syncer's side --------------------------------------------------------------------

    def take(self) -> list[tuple[str, Decimal, datetime]]:
        """What to add to the fleet's counters now: it stays counted here until the totals that
        include it have been read back (``installed``)."""
        with self._lock:
            pending, self._pending = self._pending, []
            self._in_transit, self._unsent = self._unsent, LocalSpend()
        return pending

    def installed(self, totals: dict[tuple[str, datetime], dict[str, Decimal]]) -> None:
        """The fleet's totals, read after this process's last additions reached them."""
        with self._lock:
            self._fleet = totals
            self._in_transit = LocalSpend()

    def clear(self) -> None:
        """A forked child: nothing unsent from the parent (the fleet's totals come back next tick)."""
        self._lock = threading.Lock()
        self._fleet = {}
        self._in_transit = LocalSpend()
        self._unsent = LocalSpend()
        self._pending = []
