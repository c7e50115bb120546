"""Spend tracking for one process: each call priced from its usage, budgets checked before a call
is sent, and the optional local ledger (SQLite) that ``yibu spend`` reads.

The decisions are ``core/spend.py``'s; this module holds the I/O around them (the ledger file,
the price data of ``genai-prices``, the one warning per model with no price). Made only when a
price, a budget, the ledger or ``spend.track`` is set: otherwise a call pays nothing for it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from .core.spend import Budgets, LocalSpend, Price, Pricer, Prices, Refusal, SpendStore, Usage, period_start, utc_now

if TYPE_CHECKING:
    from .core.genai import ResponseFacts
    from .settings import Settings

log = logging.getLogger("yibu_middleware")


def default_ledger_path() -> Path:
    """``spend.sqlite3`` in the user's cache folder."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "yibu-middleware" / "spend.sqlite3"


def ledger_path_of(settings: Settings) -> Path:
    path = settings.spend.ledger_path
    return path.expanduser() if path is not None else default_ledger_path()


def genai_prices_lookup() -> tuple[object, str] | None:
    """genai-prices' ``calc_price`` and its version, when the package is installed."""
    try:
        import genai_prices
    except ImportError:
        return None
    return genai_prices, getattr(genai_prices, "__version__", "?")


def _genai_pricer(module: object) -> object:
    calc_price = module.calc_price  # type: ignore[attr-defined]
    usage_type = module.Usage  # type: ignore[attr-defined]

    def lookup(model: str, provider: str) -> Pricer | None:
        for provider_id in (provider, None):
            try:
                calc_price(usage_type(input_tokens=1, output_tokens=1), model_ref=model, provider_id=provider_id)
            except LookupError:
                continue
            except Exception:  # the data's own trouble must never break a call
                return None
            break
        else:
            return None

        def priced(usage: Usage) -> Decimal:
            found = calc_price(
                usage_type(
                    input_tokens=usage.input_tokens,
                    cache_read_tokens=usage.cached_input_tokens,
                    output_tokens=usage.output_tokens,
                ),
                model_ref=model,
                provider_id=provider_id,
            )
            return Decimal(found.total_price)

        return priced

    return lookup


class Ledger:
    """The local file of every priced call: one row a call, read by ``yibu spend``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._connection = self._open()

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # WAL with synchronous=NORMAL: a row a call without an fsync per call; several processes may write.
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA busy_timeout=2000")
        connection.execute(
            "CREATE TABLE IF NOT EXISTS calls (at TEXT NOT NULL, model TEXT NOT NULL, input_tokens INTEGER,"
            " cached_input_tokens INTEGER, output_tokens INTEGER, cost_usd TEXT)"
        )
        connection.execute("CREATE INDEX IF NOT EXISTS calls_at ON calls (at)")
        return connection

    def add(self, at: datetime, model: str, usage: Usage, cost: Decimal | None) -> None:
        row = (
            at.isoformat(timespec="microseconds"),
            model,
            usage.input_tokens,
            usage.cached_input_tokens,
            usage.output_tokens,
            None if cost is None else str(cost),
        )
        try:
            with self._lock:
                self._connection.execute("INSERT INTO calls VALUES (?, ?, ?, ?, ?, ?)", row)
        except sqlite3.Error as exc:
            log.warning("yibu-middleware: the spend ledger %s could not be written: %s", self.path, exc)

    def since(self, start: datetime) -> Iterator[tuple[datetime, str, int, int, int, Decimal | None]]:
        with self._lock:
            rows = self._connection.execute(
                "SELECT at, model, input_tokens, cached_input_tokens, output_tokens, cost_usd FROM calls WHERE at >= ?",
                (start.isoformat(timespec="microseconds"),),
            ).fetchall()
        for at, model, tokens_in, cached, tokens_out, cost in rows:
            yield (
                datetime.fromisoformat(at),
                model,
                tokens_in or 0,
                cached or 0,
                tokens_out or 0,
                None if cost is None else Decimal(cost),
            )

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._connection = self._open()  # a connection must not cross a fork


class SpendTracker:
    """Prices calls, counts their spend (``store``), checks budgets, and keeps the ledger."""

    def __init__(self, settings: Settings, store: SpendStore | None = None) -> None:
        self.store: SpendStore = store if store is not None else LocalSpend()
        self.budgets = Budgets(settings.budgets, settings.budgets_per_model, self.store)
        overrides = {
            pattern: Price(
                Decimal(str(price.input_per_mtok)),
                None if price.cached_input_per_mtok is None else Decimal(str(price.cached_input_per_mtok)),
                Decimal(str(price.output_per_mtok)),
            )
            for pattern, price in settings.prices.items()
        }
        found = genai_prices_lookup()
        self.price_data = "genai-prices " + found[1] if found is not None else None
        self.prices = Prices(overrides, _genai_pricer(found[0]) if found is not None else None)  # type: ignore[arg-type]
        self.ledger = Ledger(ledger_path_of(settings)) if settings.spend.ledger else None
        self._unpriced: set[str] = set()
        self._lock = threading.Lock()
        if self.ledger is not None and self.budgets.any and isinstance(self.store, LocalSpend):
            self._count_ledger()

    def _count_ledger(self) -> None:
        """What the ledger holds for this month: the budgets count it after a restart."""
        assert self.ledger is not None
        now = utc_now()
        for at, model, _, _, _, cost in self.ledger.since(period_start("month", now)):
            if cost is not None:
                self.store.add(model, cost, at if at.tzinfo is not None else at.replace(tzinfo=UTC))

    def refusal(self, model: str | None) -> Refusal | None:
        budgets = self.budgets
        return budgets.check(model, utc_now()) if budgets.any else None

    def record(self, model: str | None, provider: str, facts: ResponseFacts | None) -> Decimal | None:
        """Count a finished call's cost from its usage; its cost, or None when it had no usage or
        its model has no price (then counted in tokens only, with one warning per model)."""
        if facts is None or (facts.input_tokens is None and facts.output_tokens is None):
            return None
        name = model or facts.model or ""
        usage = Usage(facts.input_tokens or 0, facts.cache_read_tokens or 0, facts.output_tokens or 0)
        pricer = self.prices.of(name, provider)
        if pricer is None and facts.model and facts.model != name:
            pricer = self.prices.of(facts.model, provider)  # a dated snapshot the data knows
        now = utc_now()
        cost: Decimal | None = None
        if pricer is None:
            self._warn_unpriced(name)
        else:
            try:
                cost = pricer(usage)
            except Exception:  # the price data's trouble: counted in tokens, never a broken call
                self._warn_unpriced(name)
        if cost is not None:
            self.store.add(name, cost, now)
        if self.ledger is not None:
            self.ledger.add(now, name, usage, cost)
        return cost

    def _warn_unpriced(self, model: str) -> None:
        with self._lock:
            if model in self._unpriced:
                return
            self._unpriced.add(model)
        data = self.price_data or "no price data (genai-prices is not installed)"
        log.warning(
            "yibu-middleware: no price is known for model %r (%s): its calls are counted in tokens only, not in"
            " USD, and budgets do not see them. Give it a price: prices = {%r = {input_per_mtok = ...,"
            " output_per_mtok = ...}}",
            model,
            data,
            model,
        )

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        if isinstance(self.store, LocalSpend):
            self.store.clear()
            if self.ledger is not None and self.budgets.any:
                self.ledger.after_fork()
                self._count_ledger()
                return
        if self.ledger is not None:
            self.ledger.after_fork()
