"""Spend: costs from usage, budgets answered before sending, the ledger and ``yibu spend``.

The arithmetic and the periods are tested on fixed times; the budgets through the simulator with
the real openai and anthropic SDKs, whose answers carry known usage (the simulator's token counts
are the words of the messages and of its fixed reply), so a budget can be set to the token."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import anthropic
import openai
import pytest
from helpers import ANTHROPIC_KEY, GATEWAY_KEY, OPENAI_KEY, root_output

import yibu_middleware
from yibu_middleware.core.spend import (
    Budgets,
    LocalSpend,
    Price,
    Prices,
    Usage,
    cost_of,
    period_end,
    period_start,
)
from yibu_middleware.errors import ConfigError
from yibu_middleware.runtime import current
from yibu_middleware.settings import load_settings
from yibu_middleware.simulator import GatewaySimulator

YIBU = str(Path(sys.executable).with_name("yibu"))
NOON = datetime(2026, 12, 5, 12, 30, tzinfo=UTC)
# 1 USD per million input tokens, 2 per million output: a call's cost in micro-USD is input + 2 * output.
PRICE = {"input_per_mtok": 1, "output_per_mtok": 2}


# --- plain code ------------------------------------------------------------------------------------


def test_cost_of_prices_cached_input_apart_and_exactly() -> None:
    price = Price(Decimal("1.25"), Decimal("0.125"), Decimal("10"))
    assert cost_of(Usage(1000, 400, 100), price) == Decimal("0.0018")  # (600*1.25 + 400*0.125 + 100*10) / 1e6
    no_cache_price = Price(Decimal("1.25"), None, Decimal("10"))
    assert cost_of(Usage(1000, 400, 100), no_cache_price) == Decimal("0.00225")
    assert sum((cost_of(Usage(3, 0, 7), price) for _ in range(10_000)), Decimal(0)) == Decimal("0.7375")


def test_periods_are_utc_calendar_periods() -> None:
    assert period_start("hour", NOON) == datetime(2026, 12, 5, 12, tzinfo=UTC)
    assert period_end("day", NOON) == datetime(2026, 12, 6, tzinfo=UTC)
    assert period_end("month", NOON) == datetime(2027, 1, 1, tzinfo=UTC)


def test_budgets_global_and_per_model_pattern() -> None:
    store = LocalSpend()
    budgets = Budgets({"day": 1.0}, {"gpt-5*": {"hour": 0.5}}, store)
    store.add("gpt-5.1", Decimal("0.3"), NOON)
    store.add("gpt-5.2", Decimal("0.2"), NOON)
    refusal = budgets.check("gpt-5.2", NOON)
    assert refusal is not None and refusal.setting == 'budgets_per_model["gpt-5*"].hour'
    assert refusal.resets == datetime(2026, 12, 5, 13, tzinfo=UTC)
    assert budgets.check("claude-x", NOON) is None  # another model: only the day's budget, not reached
    store.add("claude-x", Decimal("0.5"), NOON)
    day = budgets.check("claude-x", NOON)
    assert day is not None and day.setting == "budgets.day" and day.spent == Decimal("1.0")
    assert budgets.check("claude-x", datetime(2026, 12, 6, 0, 1, tzinfo=UTC)) is None  # the next day


def test_settings_prices_win_over_the_price_data_and_patterns_match() -> None:
    prices = Prices({"gpt-5*": Price(Decimal(1), None, Decimal(2))}, lambda model, provider: None)
    pricer = prices.of("gpt-5.2", "openai")
    assert pricer is not None and pricer(Usage(1_000_000, 0, 0)) == Decimal(1)
    assert prices.of("unknown", "openai") is None


def test_bad_budget_settings_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIBU_BUDGETS", '{"week": 20}')
    with pytest.raises(ConfigError, match="budgets"):
        load_settings()
    monkeypatch.setenv("YIBU_BUDGETS", '{"day": -1}')
    with pytest.raises(ConfigError, match="greater than 0"):
        load_settings()


def test_no_spend_setting_no_tracker() -> None:
    yibu_middleware.install({"api_key": GATEWAY_KEY})
    runtime = current()
    assert runtime is not None and runtime.spend is None


# --- through the simulator ---------------------------------------------------------------------------


@pytest.fixture
def one_node() -> Iterator[GatewaySimulator]:
    """One node, so that every answer's usage is the same (the reply's words depend on the node)."""
    simulator = GatewaySimulator(accepted_keys={GATEWAY_KEY})
    simulator.add_node("a")
    with simulator:
        yield simulator


def install(simulator: GatewaySimulator, **settings: object) -> None:
    yibu_middleware.install({"nodes": [simulator.node("a").base_url], "api_key": GATEWAY_KEY, **settings})


def chat(model: str = "gpt-4o-mini") -> openai.types.chat.ChatCompletion:
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello there"}])


def one_call_usage(simulator: GatewaySimulator) -> tuple[int, int]:
    install(simulator)
    usage = chat().usage
    yibu_middleware.uninstall()
    simulator.clear()
    assert usage is not None
    return usage.prompt_tokens, usage.completion_tokens


def calls_until_refused(limit: int) -> tuple[int, openai.RateLimitError]:
    for made in range(limit):
        try:
            chat()
        except openai.RateLimitError as exc:
            return made, exc
    raise AssertionError(f"no call was refused in {limit}")


@pytest.mark.parametrize(("extra_tokens", "allowed"), [(-1, 5), (0, 5), (1, 6)])
def test_a_budget_stops_calls_at_the_right_call_to_the_token(
    one_node: GatewaySimulator, extra_tokens: int, allowed: int
) -> None:
    prompt, completion = one_call_usage(one_node)
    micro_usd_per_call = prompt + 2 * completion
    # The budget: five calls' cost, give or take one input token (one micro-USD).
    budget = float(Decimal(5 * micro_usd_per_call + extra_tokens) / Decimal(1_000_000))
    install(one_node, prices={"gpt-4o-mini": PRICE}, budgets={"day": budget})
    made, refused = calls_until_refused(10)
    assert made == allowed  # exactly: five calls' spend reaches a budget of five calls (or one token less)
    assert len(one_node.records) == allowed  # the refused call was never sent
    assert refused.status_code == 429
    assert refused.response.headers["x-should-retry"] == "false"
    message = str(refused)
    assert "budgets.day" in message and "resets at" in message and "UTC" in message
    assert isinstance(refused.body, dict) and refused.body.get("code") == "yibu_budget_exceeded"


def test_a_per_model_budget_stops_only_its_models(one_node: GatewaySimulator) -> None:
    prompt, completion = one_call_usage(one_node)
    cost = Decimal(prompt + 2 * completion) / Decimal(1_000_000)
    install(one_node, prices={"*": PRICE}, budgets_per_model={"gpt-4o*": {"hour": float(cost * 2)}})
    chat()
    chat()
    with pytest.raises(openai.RateLimitError, match=r'budgets_per_model\["gpt-4o\*"\].hour'):
        chat("gpt-4o")
    assert chat("claude-sonnet-4-5").model == "claude-sonnet-4-5"


def test_the_anthropic_sdk_gets_the_budget_refusal_in_its_format(one_node: GatewaySimulator) -> None:
    install(one_node, prices={"*": PRICE}, budgets={"month": 0.000001})
    client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, base_url="https://api.anthropic.com", max_retries=0)
    client.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.RateLimitError, match=r"budgets\.month") as caught:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


def test_streams_are_priced_from_their_usage_event(one_node: GatewaySimulator) -> None:
    install(one_node, prices={"*": PRICE}, spend={"track": True})
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hello there"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [chunk.usage for chunk in stream if chunk.usage is not None][-1]
    runtime = current()
    assert runtime is not None and runtime.spend is not None
    spent = runtime.spend.store.spent("day", datetime.now(UTC))
    assert spent == Decimal(usage.prompt_tokens + 2 * usage.completion_tokens) / Decimal(1_000_000)


def test_a_model_with_no_price_is_counted_in_tokens_and_warned_once(
    one_node: GatewaySimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("yibu_middleware.spend.genai_prices_lookup", lambda: None)  # as without the package
    ledger = tmp_path / "spend.sqlite3"
    install(one_node, budgets={"day": 0.000001}, spend={"ledger": True, "ledger_path": str(ledger)})
    with root_output(logging.WARNING) as logged:
        for _ in range(3):
            chat("house-model-7")  # never refused: its spend is unknown, not zero
    assert logged.getvalue().count("no price is known for model 'house-model-7'") == 1
    runtime = current()
    assert runtime is not None and runtime.spend is not None and runtime.spend.ledger is not None
    rows = list(runtime.spend.ledger.since(datetime(2000, 1, 1, tzinfo=UTC)))
    assert len(rows) == 3 and all(row[1] == "house-model-7" and row[5] is None and row[2] > 0 for row in rows)


def test_known_models_are_priced_with_genai_prices(one_node: GatewaySimulator) -> None:
    pytest.importorskip("genai_prices")
    install(one_node, spend={"track": True})
    usage = chat("gpt-4o").usage
    assert usage is not None
    runtime = current()
    assert runtime is not None and runtime.spend is not None
    spent = runtime.spend.store.spent("day", datetime.now(UTC))
    # gpt-4o: 2.5 USD per million input tokens, 10 per million output, in genai-prices' data.
    assert spent == (Decimal(usage.prompt_tokens) * Decimal("2.5") + usage.completion_tokens * 10) / 1_000_000


def test_budgets_count_the_ledger_after_a_restart(one_node: GatewaySimulator, tmp_path: Path) -> None:
    ledger = tmp_path / "spend.sqlite3"
    settings = {"prices": {"*": PRICE}, "spend": {"ledger": True, "ledger_path": str(ledger)}}
    install(one_node, **settings)
    chat()
    chat()
    yibu_middleware.uninstall()
    prompt, completion = one_call_usage(one_node)
    install(one_node, budgets={"day": (prompt + 2 * completion) * 2 / 1_000_000}, **settings)
    with pytest.raises(openai.RateLimitError, match=r"budgets\.day"):
        chat()


def test_yibu_spend_prints_spend_by_model_and_period(one_node: GatewaySimulator, tmp_path: Path) -> None:
    ledger = tmp_path / "spend.sqlite3"
    install(one_node, prices={"gpt-4o-mini": PRICE}, spend={"ledger": True, "ledger_path": str(ledger)})
    chat()
    chat()
    chat("house-model-7")
    env = {name: value for name, value in os.environ.items() if not name.startswith("YIBU_")}
    env.update(YIBU_SPEND__LEDGER_PATH=str(ledger), YIBU_API_KEY=GATEWAY_KEY)
    done = subprocess.run([YIBU, "spend"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for period in ("this hour", "this day", "this month"):
        assert period in out
    mini = [line for line in out.splitlines() if "gpt-4o-mini" in line]
    assert len(mini) == 3 and all("2 calls" in line and "USD" in line for line in mini)
    assert any("house-model-7" in line and "no price" in line for line in out.splitlines())
    assert GATEWAY_KEY not in out + done.stderr


def test_yibu_spend_without_a_ledger_says_how_to_keep_one(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("YIBU_")}
    env["YIBU_SPEND__LEDGER_PATH"] = str(tmp_path / "none.sqlite3")
    done = subprocess.run([YIBU, "spend"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 1 and "spend.ledger = true" in done.stderr
