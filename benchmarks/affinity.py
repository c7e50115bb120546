"""Context affinity, side by side: the same conversations with affinity off and on.

Scenarios (the gateway simulator runs in this process, on loopback; each node has a prompt
cache, and an uncached prompt token costs ``--prefill-us`` microseconds before the first token):
  spread    60 conversations x 8 turns over 3 healthy nodes, 12 calls at a time (the
            conversations' turns interleave), every turn streamed and sending the whole history:
            the share of turns 2-8 whose previous turn was cached on the node that served it
            (target >= 90 % on, about 33 % off), the max/mean calls per node (target <= 1.25),
            and the p50 time to first token.
  eject     the same with affinity on, one node refusing connections from a third of the calls
            to two thirds (the active health check lets it back): failed calls (target 0), and
            how many of its conversations moved away and came back.
  keycost   a 100-message, 400 KB conversation sent sequentially by the openai SDK, with
            affinity off and on in alternating blocks: the per-call ratio (target under 1.05x),
            and the key's own cost measured alone, as a share of the call.
  callcost  (only when asked: it needs valgrind and takes minutes) a small chat call through the
            middleware, as overhead.py's "through" side makes it, with affinity off and on:
            instructions per call, counted by callgrind, which machine load does not move.

Usage: python benchmarks/affinity.py [--only spread,eject,keycost,callcost] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import openai

import yibu_middleware
from yibu_middleware.core.affinity import affinity_key
from yibu_middleware.simulator import GatewaySimulator, NodeFaults

KEY = "sk-bench-gateway-key-000000000000"
PROVIDER_KEY = "sk-proj-provider-key-not-real-000000"
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards")
NODES = ("a", "b", "c")
SYSTEM = "You are a helpful assistant for a travel company. " * 20  # ~180 words, shared by every conversation


@contextmanager
def gateway(prefill: float, **settings: Any) -> Iterator[GatewaySimulator]:
    """Three simulated nodes in this process (the eject scenario switches one off and on)."""
    simulator = GatewaySimulator(accepted_keys={KEY})
    for name in NODES:
        simulator.add_node(name, NodeFaults(prefill_per_token=prefill, latency=0.002, prompt_cache_size=4096))
    with simulator:
        yibu_middleware.install({"nodes": [node.base_url for node in simulator.nodes], "api_key": KEY, **settings})
        try:
            yield simulator
        finally:
            yibu_middleware.uninstall()


@contextmanager
def gateway_process(prefill: float, **settings: Any) -> Iterator[None]:
    """Three simulated nodes in a process of their own: the SDK's calls and the nodes' work do not
    share one interpreter lock, so a time to first token is not mostly the other calls' turn."""
    spec = f"prefill_per_token={prefill},latency=0.002,prompt_cache_size=4096"
    command = [sys.executable, "-m", "yibu_middleware.simulator", "-q", "--key", KEY]
    for name in NODES:
        command += ["--node", f"{name}:{spec}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        urls = [process.stdout.readline().split()[1] for _ in NODES]  # "name  url  faults", one line a node
        yibu_middleware.install({"nodes": urls, "api_key": KEY, **settings})
        yield
    finally:
        yibu_middleware.uninstall()
        process.terminate()
        process.wait(10)


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


class Turn(NamedTuple):
    conversation: int
    started: float  # time.monotonic()
    node: str  # the node that answered (it names itself in the reply)
    prompt_tokens: int
    cached_tokens: int
    ttft: float  # seconds to the first content


class Run:
    """One run of the conversations: what each turn cost and where it went, as the client saw it."""

    def __init__(self) -> None:
        self.turns: list[Turn] = []
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
        for _ in range(turns):
            async with limit:  # calls in flight at once, over every conversation's turns
                started = time.perf_counter()
                at = time.monotonic()
                first: float | None = None
                parts: list[str] = []
                usage: Any = None
                try:
                    stream = await client.chat.completions.create(
                        model="gpt-5.2",
                        messages=history,  # type: ignore[arg-type]
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                    async for chunk in stream:
                        if chunk.choices and chunk.choices[0].delta.content:
                            if first is None:
                                first = time.perf_counter() - started
                            parts.append(chunk.choices[0].delta.content)
                        if chunk.usage is not None:
                            usage = chunk.usage
                except openai.APIError:
                    self.failed += 1
                    return
                finally:
                    self.done += 1
                reply = "".join(parts)
                node = reply.split("'")[1]  # "Hello from yibu simulator node 'a'."
                cached = usage.prompt_tokens_details.cached_tokens
                self.turns.append(Turn(number, at, node, usage.prompt_tokens, cached, first or 0.0))
                history.append({"role": "assistant", "content": reply + " " + sentence(rng, 30)})
                history.append({"role": "user", "content": sentence(rng, 30)})

    def hit_rate(self) -> float:
        """The share of turns 2+ that found the previous turn's whole prompt cached on their node."""
        by_conversation: dict[int, list[Turn]] = defaultdict(list)
        for turn in self.turns:
            by_conversation[turn.conversation].append(turn)
        full = later = 0
        for turns in by_conversation.values():
            turns.sort(key=lambda turn: turn.prompt_tokens)
            for before, turn in itertools.pairwise(turns):
                later += 1
                full += turn.cached_tokens >= before.prompt_tokens
        return full / max(later, 1)


async def run_conversations(run: Run, conversations: int, turns: int, at_once: int, seed: int) -> None:
    limit = asyncio.Semaphore(at_once)
    async with openai.AsyncOpenAI(api_key=PROVIDER_KEY, max_retries=0) as client:
        await asyncio.gather(*(run.conversation(client, n, turns, seed, limit) for n in range(conversations)))


def spread(args: argparse.Namespace) -> None:
    """Off and on alternate for ``--rounds`` rounds (a loaded machine's pauses land on both); each
    figure is the median over the rounds."""
    results: dict[str, list[tuple[float, float, float, float, int]]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        for label, enabled in (("off", False), ("on", True)):
            with gateway_process(args.prefill_us / 1e6, affinity={"enabled": enabled}):
                run = Run()
                asyncio.run(run_conversations(run, args.conversations, args.turns, args.at_once, args.seed))
            per_node = Counter(turn.node for turn in run.turns)
            load = max(per_node.values()) / statistics.mean(per_node.values())
            # What the simulator's prefill model alone makes a call wait, on average.
            uncached = statistics.mean(turn.prompt_tokens - turn.cached_tokens for turn in run.turns)
            prefill = uncached * args.prefill_us / 1000
            p50 = statistics.median(turn.ttft for turn in run.turns) * 1000
            results[label].append((run.hit_rate(), load, p50, prefill, run.failed))
            print(
                f"spread   affinity {label:3}: previous turn cached on turns 2-{args.turns} {run.hit_rate():6.1%};"
                f" max/mean calls per node {load:.2f} {dict(sorted(per_node.items()))}; p50 TTFT {p50:6.1f} ms;"
                f" uncached prompt tokens per call {uncached:.0f} ({prefill:.1f} ms of prefill); failed {run.failed}"
            )
    off, on = ([statistics.median(values) for values in zip(*results[label], strict=True)] for label in ("off", "on"))
    print(
        f"spread   {args.conversations} conversations x {args.turns} turns, {args.at_once} calls at a time,"
        f" seed {args.seed}, median of {args.rounds} rounds: hit rate {off[0]:.1%} -> {on[0]:.1%} (target >= 90 %),"
        f" max/mean load {off[1]:.2f} -> {on[1]:.2f} (target <= 1.25), p50 TTFT {off[2]:.1f} -> {on[2]:.1f} ms"
        f" ({on[2] - off[2]:+.1f} ms; the prefill model's mean saving {on[3] - off[3]:+.1f} ms);"
        f" failed calls {sum(r[4] for r in results['off'] + results['on'])}"
    )


def eject(args: argparse.Namespace) -> None:
    total = args.conversations * args.turns
    settings = {"health_check": {"interval": 0.1}, "ejection": {"consecutive_failures": 1}}
    victim = "b"
    phases: list[tuple[float, float]] = []
    run = Run()
    with gateway(args.prefill_us / 1e6, **settings) as simulator:

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
    (down_at, up_at), *_ = phases
    homes: dict[int, str] = {}
    moved: set[int] = set()
    back: set[int] = set()
    later: set[int] = set()  # conversations with a turn after the node came back
    for turn in sorted(run.turns, key=lambda turn: turn.started):
        number = turn.conversation
        homes.setdefault(number, turn.node)
        if homes[number] != victim:
            continue
        if down_at <= turn.started < up_at and turn.node != victim:
            moved.add(number)
        elif turn.started >= up_at:
            later.add(number)
            if turn.node == victim and number in moved:
                back.add(number)
    print(
        f"eject    node {victim} refusing from call {total // 3} to {2 * total // 3} of {total}: failed calls"
        f" {run.failed} (target 0); of its conversations, {len(moved)} moved while it was out and"
        f" {len(back)} of the {len(moved & later)} with turns left came back; hit rate {run.hit_rate():.1%}"
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


def callcost(args: argparse.Namespace) -> None:
    import callgrind  # benchmarks/callgrind.py, beside this script

    overhead = os.path.join(os.path.dirname(os.path.abspath(__file__)), "overhead.py")
    command = [sys.executable, "-m", "yibu_middleware.simulator", "--node", "bench", "-q"]
    simulator = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert simulator.stdout is not None
        url = simulator.stdout.readline().split()[1]
        per_call = {}
        for label, switch in (("off", "0"), ("on", "1")):
            env = {**os.environ, "YIBU_AFFINITY__ENABLED": switch}
            child = [sys.executable, overhead, "--child", "through", "--node", url, "--calls"]
            few, many = (callgrind.count([*child, str(calls)], env=env)[0] for calls in (100, 400))
            per_call[label] = (many - few) / 300
    finally:
        simulator.terminate()
        simulator.wait(10)
    added = per_call["on"] - per_call["off"]
    print(
        f"callcost a small chat call through the middleware: {per_call['off']:,.0f} instructions per call with"
        f" affinity off, {per_call['on']:,.0f} on: {added:+,.0f} (x{per_call['on'] / per_call['off']:.4f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="spread,eject,keycost")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--conversations", type=int, default=60)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--at-once", type=int, default=12)
    parser.add_argument("--prefill-us", type=float, default=200.0, help="microseconds per uncached prompt token")
    parser.add_argument("--rounds", type=int, default=3, help="spread: rounds of off and on, alternating")
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
    if "callcost" in chosen:
        callcost(args)


if __name__ == "__main__":
    main()
