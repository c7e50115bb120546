"""Reliability and latency under injected faults, each printed against its baseline.

Scenarios (the gateway simulator runs in this process, on loopback):
  mixed     nodes [down, 30 % 503, healthy], N async openai SDK calls: share that
            succeeded, and gateway attempts per call (target: 100 %, <= 1.4).
  failover  sequential calls on a pool whose pinned node refuses connections, against
            the same calls on the healthy node alone: added ms per call (target < 10 ms).
  slow      one node 10x slower than two others, against three fast nodes: p99 latency
            of the same concurrent load (target: <= 1.3x).
  down      every node down, openai SDK with its default retries: time to the error
            through the middleware, against the SDK alone pointed at a down node.

Usage: python benchmarks/resilience.py [--calls 1000] [--only mixed,failover,slow,down]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai

import yibu_middleware
from yibu_middleware.runtime import current
from yibu_middleware.simulator import GatewaySimulator, NodeFaults

KEY = "sk-bench-gateway-key-000000000000"
PROVIDER_KEY = "sk-proj-provider-key-not-real-000000"
MESSAGES = [{"role": "user", "content": "hi"}]


@contextmanager
def gateway(faults: dict[str, NodeFaults], **settings: Any) -> Iterator[GatewaySimulator]:
    simulator = GatewaySimulator(accepted_keys={KEY})
    for name, node_faults in faults.items():
        simulator.add_node(name, node_faults)
    with simulator:
        nodes = [node.base_url for node in simulator.nodes]
        yibu_middleware.install({"nodes": nodes, "api_key": KEY, **settings})
        try:
            yield simulator
        finally:
            yibu_middleware.uninstall()


async def concurrent_calls(count: int, concurrency: int) -> tuple[int, list[float]]:
    """(calls that succeeded, latency of each successful call)."""
    limit = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(client: openai.AsyncOpenAI) -> bool:
        async with limit:
            started = time.perf_counter()
            try:
                await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
            except openai.APIError:
                return False
            latencies.append(time.perf_counter() - started)
            return True

    async with openai.AsyncOpenAI(api_key=PROVIDER_KEY) as client:
        results = await asyncio.gather(*(one(client) for _ in range(count)))
    return sum(results), latencies


def mixed(calls: int) -> None:
    faults = {"down": NodeFaults(refuse=True), "flaky": NodeFaults(error_rate=0.3, seed=5), "healthy": NodeFaults()}
    with gateway(faults) as simulator:
        started = time.perf_counter()
        succeeded, _ = asyncio.run(concurrent_calls(calls, 50))
        elapsed = time.perf_counter() - started
        runtime = current()
        assert runtime is not None
        attempts = sum(node.sent for node in runtime.pool.nodes)
        reached = len(simulator.records)
        per_node = {name: len(simulator.records_for(name)) for name in faults}
    print(
        f"mixed    {calls} async calls over [down, 30% 503, healthy]: {succeeded / calls:.1%} succeeded;"
        f" gateway attempts {reached / calls:.3f} per call (target <= 1.4), all attempts incl. refused"
        f" {attempts / calls:.3f}; answered per node {per_node}; {elapsed:.1f} s"
    )


def sequential(client: openai.OpenAI, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
        times.append(time.perf_counter() - started)
    return times


def failover(calls: int) -> None:
    count = max(calls // 5, 50)
    client = openai.OpenAI(api_key=PROVIDER_KEY, max_retries=0)
    down, alone = [], []
    for _ in range(5):  # alternate, so that noise lands on both
        faults = {"down": NodeFaults(refuse=True), "healthy": NodeFaults()}
        with gateway(faults, ejection={"consecutive_failures": 10**6}) as simulator:
            yibu_middleware.install(
                {
                    "nodes": [node.base_url for node in simulator.nodes],
                    "api_key": KEY,
                    "pin": simulator.node("down").base_url,  # every call tries the down node first
                    "ejection": {"consecutive_failures": 10**6},
                }
            )
            down += sequential(client, count // 5)
        with gateway({"healthy": NodeFaults()}):
            alone += sequential(client, count // 5)
    d, a = statistics.median(down) * 1000, statistics.median(alone) * 1000
    print(
        f"failover {len(down)} sequential calls, first node refusing, median {d:.2f} ms against"
        f" {a:.2f} ms on the healthy node alone: {d - a:+.2f} ms per failover (target < 10 ms)"
    )


def slow(calls: int, concurrency: int) -> None:
    fast, slower = NodeFaults(latency=0.02), NodeFaults(latency=0.2)
    p99 = {}
    share: dict[str, dict[str, int]] = {}
    for label, faults in (
        ("fast pool", {"a": fast, "b": fast, "c": NodeFaults(latency=0.02)}),
        ("one slow", {"a": fast, "b": NodeFaults(latency=0.02), "slow": slower}),
    ):
        with gateway(faults) as simulator:
            _, latencies = asyncio.run(concurrent_calls(calls // 2, concurrency))
            share[label] = {name: len(simulator.records_for(name)) for name in faults}
        p99[label] = statistics.quantiles(latencies, n=100)[98] * 1000
    ratio = p99["one slow"] / p99["fast pool"]
    print(
        f"slow     {calls // 2} calls, {concurrency} at a time: p99 with one node 10x slower"
        f" {p99['one slow']:.1f} ms against {p99['fast pool']:.1f} ms"
        f" for an all-fast pool: x{ratio:.2f} (target <= 1.3); calls per node {share['one slow']}"
    )


def all_down() -> None:
    faults = {name: NodeFaults(refuse=True) for name in ("a", "b", "c")}
    with gateway(faults) as simulator:
        client = openai.OpenAI(api_key=PROVIDER_KEY)  # default retries
        started = time.perf_counter()
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
        except openai.APIError as exc:
            ours = time.perf_counter() - started
            kind = type(exc).__name__
        down_url = simulator.node("a").base_url
    sdk_alone = openai.OpenAI(base_url=down_url, api_key=KEY)  # the SDK by itself, same default retries
    started = time.perf_counter()
    try:
        sdk_alone.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    except openai.APIError:
        theirs = time.perf_counter() - started
    print(
        f"down     every node down: the call fails in {ours * 1000:.0f} ms through the middleware ({kind}),"
        f" against {theirs * 1000:.0f} ms for the SDK alone running its own retry rounds"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--only", default="mixed,failover,slow,down")
    parser.add_argument("--concurrency", type=int, default=4, help="calls at a time in the slow scenario")
    args = parser.parse_args()
    chosen = set(args.only.split(","))
    if "mixed" in chosen:
        mixed(args.calls)
    if "failover" in chosen:
        failover(args.calls)
    if "slow" in chosen:
        slow(args.calls, args.concurrency)
    if "down" in chosen:
        all_down()


if __name__ == "__main__":
    main()
