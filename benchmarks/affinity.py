"""Context affinity, side by side: the same conversations with affinity off and on.

Scenarios (the gateway simulator runs in this process, on loopback; each node has a prompt
cache, and an uncached prompt token costs ``--prefill-us`` microseconds before the first token):
  spread    60 conversations x 8 turns over 3 healthy nodes, 12 conversations at a time, every
            turn streamed and sending the whole history: the share of turns 2-8 whose previous
            turn was cached on the node that served it (target >= 90 % on, about 33 % off), the
            max/mean calls per node (target <= 1.25), and the p50 time to first token.
  eject     the same with affinity on, one node refusing connections from a third of the calls
            to two thirds (the active health check lets it back): failed calls (target 0), and
            how many of its conversations moved away and came back.
  keycost   a 100-message, 400 KB conversation sent sequentially by the openai SDK, with
            affinity off and on in alternating blocks: the per-call ratio (target under 1.05x),
            and the key's own cost measured alone, as a share of the call.

Usage: python benchmarks/affinity.py [--only spread,eject,keycost] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai

import yibu_middleware
from yibu_middleware.core.affinity import affinity_key
from yibu_middleware.simulator import GatewaySimulator, NodeFaults, Record

KEY = "sk-bench-gateway-key-000000000000"
PROVIDER_KEY = "sk-proj-provider-key-not-real-000000"
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards")
SYSTEM = "You are a helpful assistant for a travel company. " * 20  # ~180 words, shared by every conversation


@contextmanager
def gateway(prefill: float, nodes: int = 3, **settings: Any) -> Iterator[GatewaySimulator]:
    simulator = GatewaySimulator(accepted_keys={KEY})
    for index in range(nodes):
        simulator.add_node(chr(ord("a") + index), NodeFaults(prefill_per_token=prefill, latency=0.002))
    with simulator:
        yibu_middleware.install({"nodes": [node.base_url for node in simulator.nodes], "api_key": KEY, **settings})
        try:
            yield simulator
        finally:
            yibu_middleware.uninstall()


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


class Run:
    """One run of the conversations: what each turn cost and where it went."""

    def __init__(self) -> None:
        self.ttft: list[float] = []
        self.failed = 0
        self.done = 0

    async def conversation(
        self, client: openai.AsyncOpenAI, number: int, turns: int, seed: int, limit: asyncio.Semaphore
    ) -> None:
        rng = random.Random(seed * 1000 + number)  # the same conversation in every run
        history: list[dict[str, str]] = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"conversation {number}: " + sentence(rng, 40)},
        ]
        async with limit:  # a conversation holds its slot for all its turns, as a user at a chat window
            for _ in range(turns):
                started = time.perf_counter()
                first: float | None = None
                parts: list[str] = []
                try:
                    stream = await client.chat.completions.create(
                        model="gpt-5.2",
                        messages=history,  # type: ignore[arg-type]
                        stream=True,
                    )
                    async for chunk in stream:
                        if chunk.choices and chunk.choices[0].delta.content:
                            if first is None:
                                first = time.perf_counter() - started
                            parts.append(chunk.choices[0].delta.content)
                except openai.APIError:
                    self.failed += 1
                    return
                finally:
                    self.done += 1
                if first is not None:
                    self.ttft.append(first)
                history.append({"role": "assistant", "content": "".join(parts) + " " + sentence(rng, 30)})
                history.append({"role": "user", "content": sentence(rng, 30)})


def conversation_of(record: Record) -> int:
    return int(record.body["messages"][1]["content"].split(":")[0].split()[1])


def hits(records: list[Record]) -> tuple[float, float]:
    """(share of turns 2+ that found the previous turn's whole prompt cached on their node,
    share of those turns' prompt words read from a cache)."""
    by_conversation: dict[int, list[Record]] = defaultdict(list)
    for record in records:
        if record.status == 200:
            by_conversation[conversation_of(record)].append(record)
    full = later = cached = prompt = 0
    for turns in by_conversation.values():
        turns.sort(key=lambda r: len(r.body["messages"]))
        for before, record in itertools.pairwise(turns):
            later += 1
            previous_prompt = words(before.body["messages"])
            full += record.cached_tokens >= previous_prompt
            cached += record.cached_tokens
            prompt += words(record.body["messages"])
    return full / max(later, 1), cached / max(prompt, 1)


def words(messages: list[dict[str, str]]) -> int:
    return sum(len(str(message.get("content", "")).split()) for message in messages)


async def run_conversations(run: Run, conversations: int, turns: int, at_once: int, seed: int) -> None:
    limit = asyncio.Semaphore(at_once)
    async with openai.AsyncOpenAI(api_key=PROVIDER_KEY, max_retries=0) as client:
        await asyncio.gather(*(run.conversation(client, n, turns, seed, limit) for n in range(conversations)))


def spread(args: argparse.Namespace) -> None:
    results = {}
    for label, enabled in (("off", False), ("on", True)):
        with gateway(args.prefill_us / 1e6, affinity={"enabled": enabled}) as simulator:
            run = Run()
            started = time.perf_counter()
            asyncio.run(run_conversations(run, args.conversations, args.turns, args.at_once, args.seed))
            elapsed = time.perf_counter() - started
            records = simulator.records
        per_node = Counter(record.node for record in records if record.status == 200)
        full, share = hits(records)
        load = max(per_node.values()) / statistics.mean(per_node.values())
        results[label] = (full, share, load, statistics.median(run.ttft) * 1000, run.failed, dict(per_node), elapsed)
    for label, (full, share, load, p50, failed, per_node, elapsed) in results.items():
        print(
            f"spread   affinity {label:3}: previous turn cached on turns 2-{args.turns} {full:6.1%}"
            f" (prompt words read from cache {share:5.1%}); max/mean calls per node {load:.2f} {per_node};"
            f" p50 TTFT {p50:6.1f} ms; failed {failed}; {elapsed:.1f} s"
        )
    off, on = results["off"], results["on"]
    print(
        f"spread   {args.conversations} conversations x {args.turns} turns, {args.at_once} at a time, seed {args.seed}:"
        f" hit rate {off[0]:.1%} -> {on[0]:.1%} (target >= 90 %), max/mean load {on[2]:.2f} (target <= 1.25),"
        f" p50 TTFT {off[3]:.1f} -> {on[3]:.1f} ms (x{on[3] / off[3]:.2f})"
    )


def eject(args: argparse.Namespace) -> None:
    total = args.conversations * args.turns
    settings = {"health_check": {"interval": 0.1}, "ejection": {"consecutive_failures": 1}}
    with gateway(args.prefill_us / 1e6, **settings) as simulator:
        run = Run()
        victim = "b"
        phases: list[tuple[float, float]] = []

        async def switch() -> None:
            while run.done < total // 3:
                await asyncio.sleep(0.005)
            await asyncio.to_thread(simulator.set_faults, victim, refuse=True)
            down_at = time.monotonic()
            while run.done < 2 * total // 3:
                await asyncio.sleep(0.005)
            await asyncio.to_thread(simulator.set_faults, victim, refuse=False)
            phases.append((down_at, time.monotonic()))

        async def main() -> None:
            await asyncio.gather(
                run_conversations(run, args.conversations, args.turns, args.at_once, args.seed), switch()
            )

        asyncio.run(main())
        records = [r for r in simulator.records if r.status == 200 and r.path == "/v1/chat/completions"]
    (down_at, up_at), *_ = phases
    homes: dict[int, str] = {}
    moved: set[int] = set()
    back: set[int] = set()
    for record in sorted(records, key=lambda r: r.started):
        number = conversation_of(record)
        homes.setdefault(number, record.node)
        if homes[number] != victim:
            continue
        if down_at <= record.started < up_at and record.node != victim:
            moved.add(number)
        elif record.started >= up_at and record.node == victim and number in moved:
            back.add(number)
    full, _ = hits(records)
    print(
        f"eject    node {victim} refusing from call {total // 3} to {2 * total // 3} of {total}: failed calls"
        f" {run.failed} (target 0); its conversations that moved {len(moved)}, that came back {len(back)};"
        f" hit rate {full:.1%}"
    )


def big_conversation() -> list[dict[str, str]]:
    rng = random.Random(7)
    messages = [{"role": "system", "content": SYSTEM}]
    for index in range(99):
        role = "user" if index % 2 == 0 else "assistant"
        messages.append({"role": role, "content": sentence(rng, 800)})
    return messages


def keycost(args: argparse.Namespace) -> None:
    messages = big_conversation()
    body = json.dumps({"messages": messages, "model": "gpt-5.2"}).encode()
    # A node with no prompt cache: the simulator's own hashing of the messages is not the SDK call's.
    simulator = GatewaySimulator(accepted_keys={KEY})
    simulator.add_node("a", NodeFaults(prompt_cache_size=0))
    client = openai.OpenAI(api_key=PROVIDER_KEY, max_retries=0)
    times: dict[bool, list[float]] = {False: [], True: []}
    with simulator:
        for block in range(args.blocks):
            for enabled in (False, True) if block % 2 == 0 else (True, False):
                yibu_middleware.install(
                    {"nodes": [simulator.node("a").base_url], "api_key": KEY, "affinity": {"enabled": enabled}}
                )
                client.chat.completions.create(model="gpt-5.2", messages=messages)  # type: ignore[arg-type]  # warm
                for _ in range(args.calls):
                    started = time.perf_counter()
                    client.chat.completions.create(model="gpt-5.2", messages=messages)  # type: ignore[arg-type]
                    times[enabled].append(time.perf_counter() - started)
                yibu_middleware.uninstall()
                simulator.clear()
    off, on = statistics.median(times[False]), statistics.median(times[True])
    started = time.perf_counter()
    rounds = 2000
    for _ in range(rounds):
        affinity_key("/chat/completions", body, "gpt-5.2")
    alone = (time.perf_counter() - started) / rounds
    print(
        f"keycost  {len(messages)} messages, {len(body) / 1000:.0f} KB, {len(times[True])} calls each way:"
        f" median SDK call {off * 1000:.2f} ms off, {on * 1000:.2f} ms on: x{on / off:.3f} (target < 1.05);"
        f" the key alone {alone * 1e6:.1f} us = x{(off + alone) / off:.4f} of the call"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="spread,eject,keycost")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--conversations", type=int, default=60)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--at-once", type=int, default=12)
    parser.add_argument("--prefill-us", type=float, default=20.0, help="microseconds per uncached prompt token")
    parser.add_argument("--calls", type=int, default=20, help="keycost: calls per block")
    parser.add_argument("--blocks", type=int, default=6, help="keycost: blocks each way, alternating")
    args = parser.parse_args()
    chosen = set(args.only.split(","))
    if "spread" in chosen:
        spread(args)
    if "eject" in chosen:
        eject(args)
    if "keycost" in chosen:
        keycost(args)


if __name__ == "__main__":
    main()
