"""Spend: what a call cost, what was spent per period, and whether a budget still allows a call.

Plain code with no I/O (the ledger file is ``spend_ledger.py``; the price data of
``genai-prices`` is looked up through a function handed in). Costs are ``Decimal`` USD,
computed from prices per million tokens written as decimals, so that a budget stops calls at
the exact call its usage reaches it: no float rounding drift over thousands of calls.

Periods are calendar periods in UTC (the hour, the day, the month): a budget resets when the
next one starts, and the refusal says when. The counters are behind a small interface
(``SpendStore``), so that a store shared by a fleet of processes can replace the in-process
one (``LocalSpend``).
"""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple, Protocol

PERIODS = ("hour", "day", "month")
MILLION = Decimal(1_000_000)


class Price(NamedTuple):
    """USD per million tokens."""

    input: Decimal
    cached_input: Decimal | None  # None: cached input costs what input costs
    output: Decimal


class Usage(NamedTuple):
    input_tokens: int  # all input, the cached part included
    cached_input_tokens: int
    output_tokens: int


def cost_of(usage: Usage, price: Price) -> Decimal:
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    cached_price = price.input if price.cached_input is None else price.cached_input
    return (
        (usage.input_tokens - cached) * price.input + cached * cached_price + usage.output_tokens * price.output
    ) / MILLION


def period_start(period: str, now: datetime) -> datetime:
    if period == "hour":
        return now.replace(minute=0, second=0, microsecond=0)
    if period == "day":
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def period_end(period: str, now: datetime) -> datetime:
    start = period_start(period, now)
    if period == "hour":
        return start + timedelta(hours=1)
    if period == "day":
        return start + timedelta(days=1)
    return (start + timedelta(days=32)).replace(day=1)


class SpendStore(Protocol):
    """Where spend is counted: per period start, per model. The in-process one is ``LocalSpend``;
    a fleet store (Redis) implements the same two methods, with the same period keys."""

    def add(self, model: str, cost: Decimal, now: datetime) -> None:
        """Count ``cost`` for ``model`` in every period that holds ``now``."""

    def spent(self, period: str, now: datetime, models: str | None = None) -> Decimal:
        """Spend in the period holding ``now``: of every model, or of the models matching the shell
        pattern ``models``."""


class LocalSpend:
    """The counters of one process: (period, period start) -> model -> USD."""

    __slots__ = ("_counts", "_lock")

    def __init__(self) -> None:
        self._counts: dict[tuple[str, datetime], dict[str, Decimal]] = {}
        self._lock = threading.Lock()

    def add(self, model: str, cost: Decimal, now: datetime) -> None:
        with self._lock:
            for period in PERIODS:
                key = (period, period_start(period, now))
                models = self._counts.get(key)
                if models is None:
                    self._forget_before(period, key[1])
                    models = self._counts[key] = {}
                models[model] = models.get(model, Decimal(0)) + cost

    def spent(self, period: str, now: datetime, models: str | None = None) -> Decimal:
        counts = self._counts.get((period, period_start(period, now)))
        if not counts:
            return Decimal(0)
        if models is not None:
            return sum((cost for model, cost in counts.items() if fnmatch.fnmatchcase(model, models)), Decimal(0))
        return sum(counts.values(), Decimal(0))

    def _forget_before(self, period: str, start: datetime) -> None:
        for old in [key for key in self._counts if key[0] == period and key[1] < start]:
            del self._counts[old]

    def clear(self) -> None:
        self._lock = threading.Lock()
        self._counts = {}


class Refusal(NamedTuple):
    """A budget that stops a call: which, how much, and when it resets."""

    setting: str  # budgets.day, budgets_per_model["gpt-5*"].month
    limit: Decimal
    spent: Decimal
    resets: datetime

    def message(self, model: str | None) -> str:
        scope = "" if "per_model" not in self.setting else f" (this call: {model})"
        return (
            f"yibu-middleware: the spend budget {self.setting} = {self.limit} USD{scope} is reached ({self.spent:.6f}"
            f" USD spent this period); it resets at {self.resets.strftime('%Y-%m-%d %H:%M')} UTC. Nothing was sent."
            " Raise the budget, or wait for the reset"
        )


# Prices a usage: USD.
Pricer = Callable[[Usage], Decimal]


class Prices:
    """A model's pricer: the settings' own price (``prices``, exact names or shell patterns, first
    match) first, then ``lookup`` (genai-prices' data, when installed: it knows tiered prices, so
    it prices the usage itself); None when neither knows the model."""

    __slots__ = ("_cache", "_lookup", "_patterns")

    def __init__(
        self, overrides: Mapping[str, Price], lookup: Callable[[str, str], Pricer | None] | None = None
    ) -> None:
        self._patterns = tuple(overrides.items())
        self._lookup = lookup
        self._cache: dict[tuple[str, str], Pricer | None] = {}

    def of(self, model: str, provider: str) -> Pricer | None:
        key = (model, provider)
        if key in self._cache:
            return self._cache[key]
        found: Pricer | None = None
        price = next((price for pattern, price in self._patterns if fnmatch.fnmatchcase(model, pattern)), None)
        if price is not None:
            found = _fixed(price)
        elif self._lookup is not None:
            found = self._lookup(model, provider)
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[key] = found
        return found


def _fixed(price: Price) -> Pricer:
    def priced(usage: Usage) -> Decimal:
        return cost_of(usage, price)

    return priced


class Budgets:
    """The process's budgets (``budgets``, ``budgets_per_model``) against a store's counts."""

    __slots__ = ("_global", "_per_model", "store")

    def __init__(
        self,
        overall: Mapping[Any, float],
        per_model: Mapping[str, Mapping[Any, float]],
        store: SpendStore,
    ) -> None:
        self._global = tuple((period, Decimal(str(limit))) for period, limit in overall.items())
        self._per_model = tuple(
            (pattern, tuple((period, Decimal(str(limit))) for period, limit in limits.items()))
            for pattern, limits in per_model.items()
        )
        self.store = store

    @property
    def any(self) -> bool:
        return bool(self._global or self._per_model)

    def check(self, model: str | None, now: datetime) -> Refusal | None:
        """The first budget the spend so far has reached, or None: the call may go."""
        store = self.store
        for period, limit in self._global:
            spent = store.spent(period, now)
            if spent >= limit:
                return Refusal(f"budgets.{period}", limit, spent, period_end(period, now))
        if model is not None:
            for pattern, limits in self._per_model:
                if fnmatch.fnmatchcase(model, pattern):
                    for period, limit in limits:
                        spent = store.spent(period, now, pattern)
                        if spent >= limit:
                            return Refusal(
                                f'budgets_per_model["{pattern}"].{period}', limit, spent, period_end(period, now)
                            )
                    break
        return None


def utc_now() -> datetime:
    return datetime.now(UTC)
