"""Gateway key pools: a key exhausted mid-run, and what a call pays when no pool is set.

Scenarios (the gateway simulator runs in this process, on loopback):
  exhausted  N async openai SDK calls (10 at a time) over two keys, the first refused for
             quota (403 insufficient_user_quota) after 300 calls: share that succeeded, and
             gateway attempts per call; side by side with the same calls over one key that
             is exhausted the same way (the pool's baseline) and over two keys never
             exhausted (extra attempts 0).
  cost       instructions per call (callgrind, (200 - 50 calls) / 150) through the middleware
             with one api_key and none of issue 18's settings (key pools, fallbacks, prices,
             budgets, spend), this checkout against the code
             of ``--base`` (a commit before the pools; git archive to a temporary folder), the
             two run side by side against the same simulated node, with the cyclic GC off in both
             (see ``child``).

Usage: python benchmarks/keys.py [--calls 1000] [--only exhausted,cost] [--base 86ae58b]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import openai

import yibu_middleware
from yibu_middleware.simulator import GatewaySimulator

sys.path.insert(0, str(Path(__file__).resolve().parent))
import callgrind  # benchmarks/callgrind.py, beside this script

KEY_A = "sk-bench-pool-a-000000000000000000"
KEY_B = "sk-bench-pool-b-000000000000000000"
PROVIDER_KEY = "sk-proj-provider-key-not-real-000000"
MESSAGES: Any = [{"role": "user", "content": "hi"}]
ROOT = Path(__file__).resolve().parent.parent


async def run_calls(count: int, concurrency: int) -> int:
    """Calls that succeeded."""
    limit = asyncio.Semaphore(concurrency)
    client = openai.AsyncOpenAI(api_key=PROVIDER_KEY, max_retries=0)

    async def one() -> bool:
        async with limit:
            try:
                await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            except openai.APIError:
                return False
            return True

    results = await asyncio.gather(*(one() for _ in range(count)))
    await client.close()
    return sum(results)


def exhausted_side(calls: int, keys: list[str], quota: int | None) -> tuple[int, int, float]:
    """(succeeded, gateway attempts, seconds) for ``calls`` calls over ``keys``, the first one
    refused after ``quota`` calls (None: never)."""
    simulator = GatewaySimulator(accepted_keys={KEY_A, KEY_B})
    simulator.add_node("a")
    simulator.add_node("b")
    with simulator:
        if quota is not None:
            simulator.set_key_quota(keys[0], quota)
        settings: dict[str, Any] = {"nodes": [node.base_url for node in simulator.nodes], "api_key": keys[0]}
        if len(keys) > 1:
            settings["api_keys"] = keys[1:]
        yibu_middleware.install(settings)
        try:
            started = time.perf_counter()
            succeeded = asyncio.run(run_calls(calls, 10))
            seconds = time.perf_counter() - started
        finally:
            yibu_middleware.uninstall()
        attempts = sum(1 for record in simulator.records if record.path == "/v1/chat/completions")
    return succeeded, attempts, seconds


def exhausted(calls: int) -> None:
    print(f"exhausted: {calls} calls, 10 at a time, two nodes; key A refused for quota after 300 calls")
    print(f"  {'side':<34} {'succeeded':>10} {'attempts/call':>14} {'extra/call':>11} {'seconds':>8}")
    for label, keys, quota in (
        ("pool [A, B], A exhausted at 300", [KEY_A, KEY_B], 300),
        ("one key A, exhausted at 300", [KEY_A], 300),
        ("pool [A, B], never exhausted", [KEY_A, KEY_B], None),
    ):
        succeeded, attempts, seconds = exhausted_side(calls, keys, quota)
        print(
            f"  {label:<34} {succeeded / calls:>9.1%} {attempts / calls:>14.3f}"
            f" {(attempts - calls) / calls:>11.3f} {seconds:>8.2f}"
        )


def child(calls: int, node_url: str) -> None:
    """One side alone, for callgrind: install with one key, a warm-up, then ``calls`` calls."""
    import yibu_middleware as side  # the checkout's or the base's, by PYTHONPATH

    side.install({"nodes": [node_url], "api_key": KEY_A})
    client = openai.OpenAI(api_key=PROVIDER_KEY, max_retries=0)
    # The cyclic GC off in both sides: one full collection (~40 M instructions over the openai
    # SDK's heap) landing inside one side's window and not the other's moves that side by some
    # 280,000 instructions a call, ten times what the code itself differs by.
    gc.disable()
    for _ in range(20 + calls):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


def per_call(source: Path, node_url: str) -> float:
    counts = []
    env = {**os.environ, "PYTHONPATH": str(source)}
    env.pop("YIBU_ENABLED", None)
    for calls in (50, 200):
        command = [sys.executable, __file__, "--child", "--calls", str(calls), "--node", node_url]
        counts.append(callgrind.count(command, env=env)[0])
    return (counts[1] - counts[0]) / 150


def cost(base: str) -> None:
    with tempfile.TemporaryDirectory() as folder, GatewaySimulator(accepted_keys={KEY_A}) as simulator:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", base], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
        node = simulator.add_node("a")
        print(
            f"cost: instructions per call, one api_key, none of issue 18's settings; base {base} against this checkout"
        )
        base_count = per_call(Path(folder), node.base_url)
        ours = per_call(ROOT, node.base_url)
        print(f"  base {base:<10} {base_count:>12,.0f}")
        print(f"  this checkout   {ours:>12,.0f}   ratio x{ours / base_count:.4f} ({ours - base_count:+,.0f} per call)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--only", default="exhausted,cost")
    parser.add_argument("--base", default="86ae58b", help="the commit to compare the per-call cost with")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--node", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.calls, args.node)
        return
    only = set(args.only.split(","))
    if "exhausted" in only:
        exhausted(args.calls)
    if "cost" in only:
        cost(args.base)


if __name__ == "__main__":
    main()
