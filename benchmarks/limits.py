"""Client-side limits and policy, each printed against its baseline.

Scenarios (the gateway simulator runs in this process, on loopback):
  rate    N calls (default 1,000) through `limits.requests_per_second` = 50, made at once by
          asyncio tasks and threads together with the openai SDK. The rate is measured
          where it matters, at the gateway (the simulator's arrival times), and printed
          against the limit (target: within 5 %). Every call carries a serial number: each
          must reach the gateway exactly once and get its own answer back.
  policy  sequential calls with a 1 MB request body (a base64 image): through the
          middleware with the media checks (on by default) and a model alias (one parse of
          the body, for both), against the same calls through it with no rule that looks
          inside the body and no alias, against the same calls made directly. The added
          cost is printed next to the SDK call's.

Usage: python benchmarks/limits.py [--calls 1000] [--rate 50] [--only rate,policy]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import threading
import time
from collections import Counter
from typing import Any

import openai

import yibu_middleware
from yibu_middleware.simulator import GatewaySimulator

KEY = "sk-bench-gateway-key-000000000000"
PROVIDER_KEY = "sk-proj-provider-key-not-real-000000"


def serial_message(serial: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"call {serial}"}]


def rate(calls: int, limit: float) -> None:
    simulator = GatewaySimulator(accepted_keys={KEY})
    simulator.add_node("a")
    answered: list[int] = []
    failed: list[str] = []
    lock = threading.Lock()
    with simulator:
        yibu_middleware.install(
            {"nodes": [simulator.nodes[0].base_url], "api_key": KEY, "limits": {"requests_per_second": limit}}
        )
        try:
            serials = list(range(calls))
            threaded, tasked = serials[: calls // 5], serials[calls // 5 :]  # a fifth from threads

            def from_threads(mine: list[int]) -> None:
                client = openai.OpenAI(api_key=PROVIDER_KEY, max_retries=0, timeout=120)
                for serial in mine:
                    try:
                        client.chat.completions.create(model="gpt-4o-mini", messages=serial_message(serial))  # type: ignore[arg-type]
                        with lock:
                            answered.append(serial)
                    except openai.OpenAIError as exc:
                        with lock:
                            failed.append(f"{serial}: {exc}")

            async def from_tasks() -> None:
                client = openai.AsyncOpenAI(api_key=PROVIDER_KEY, max_retries=0, timeout=120)

                async def one(serial: int) -> None:
                    try:
                        await client.chat.completions.create(model="gpt-4o-mini", messages=serial_message(serial))  # type: ignore[arg-type]
                        with lock:
                            answered.append(serial)
                    except openai.OpenAIError as exc:
                        with lock:
                            failed.append(f"{serial}: {exc}")

                await asyncio.gather(*(one(serial) for serial in tasked))

            threads = [threading.Thread(target=from_threads, args=(threaded[n::4],)) for n in range(4)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            asyncio.run(from_tasks())
            for thread in threads:
                thread.join()
            elapsed = time.monotonic() - started
        finally:
            yibu_middleware.uninstall()
    arrivals = sorted(record.started for record in simulator.records)
    seen = Counter(str(record.body["messages"][0]["content"]) for record in simulator.records)
    measured = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    lost = calls - len(set(answered))
    duplicated = sum(count - 1 for count in seen.values() if count > 1)
    print(f"rate    {calls} calls (1/5 from 4 threads, 4/5 from asyncio tasks) in {elapsed:.1f} s")
    print(
        f"        at the gateway: {measured:.2f} calls/s against a limit of {limit:g}:"
        f" {100 * (measured / limit - 1):+.2f} %  (target: within 5 %)"
    )
    print(
        f"        answered {len(answered)}, failed {len(failed)}, lost {lost}, reached the gateway twice {duplicated}"
    )
    for line in failed[:3]:
        print(f"        failure: {line}")


def policy(calls: int) -> None:
    image = base64.b64encode(bytes(range(256)) * 3072).decode()  # 768 KiB -> 1 MiB of base64
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
            ],
        }
    ]
    simulator = GatewaySimulator(accepted_keys={KEY})
    simulator.add_node("a")
    with simulator:
        node = simulator.nodes[0].base_url
        direct = openai.OpenAI(base_url=node, api_key=KEY, max_retries=0)
        through = openai.OpenAI(api_key=PROVIDER_KEY, max_retries=0)
        plain = {"nodes": [node], "api_key": KEY, "policy": {"check_media": False}}  # no rule looks inside
        checked = {
            "nodes": [node],
            "api_key": KEY,
            "model_aliases": {"vision": "gpt-4o-mini"},
            "policy": {"allowed_models": ["gpt-4o*"], "max_media_bytes": 2 * 1024 * 1024},
        }

        def timed(client: openai.OpenAI, model: str) -> float:
            started = time.perf_counter()
            client.chat.completions.create(model=model, messages=messages)  # type: ignore[arg-type]
            return time.perf_counter() - started

        sides: dict[str, list[float]] = {"direct": [], "through": [], "checked": []}
        for _ in range(3):  # warm-up of every side
            timed(direct, "gpt-4o-mini")
        for _ in range(max(calls // 50, 5)):  # rounds, alternating sides
            for _ in range(10):
                sides["direct"].append(timed(direct, "gpt-4o-mini"))
            yibu_middleware.install(plain)
            for _ in range(10):
                sides["through"].append(timed(through, "gpt-4o-mini"))
            yibu_middleware.install(checked)
            for _ in range(10):
                sides["checked"].append(timed(through, "vision"))
            yibu_middleware.uninstall()
    d, t, c = (statistics.median(sides[name]) * 1e3 for name in ("direct", "through", "checked"))
    print(f"policy  1 MiB request body (a base64 PNG), medians of {len(sides['direct'])} calls per side:")
    print(f"        the SDK call made directly:                     {d:7.2f} ms")
    print(f"        through the middleware, body not parsed:        {t:7.2f} ms  {t - d:+6.2f} ms")
    print(f"        through it with media checks and an alias:      {c:7.2f} ms  {c - t:+6.2f} ms for policy + alias")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--only", default="rate,policy")
    args = parser.parse_args()
    chosen = args.only.split(",")
    if "rate" in chosen:
        rate(args.calls, args.rate)
    if "policy" in chosen:
        policy(min(args.calls, 500))


if __name__ == "__main__":
    main()
