"""One worker process of a fleet, run by test_fleet_processes.py and benchmarks/fleet.py.

Business code as an app writes it: the openai SDK from several threads and several asyncio
tasks at once, with the middleware switched on by the environment only (YIBU_*). Makes calls
until ``--seconds`` have passed (or ``--calls`` per caller), then prints how many succeeded and
failed, as JSON. ``--skew`` shifts this process's wall clock (time.time) by that many seconds,
as a host whose clock is off would be.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time

parser = argparse.ArgumentParser()
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--tasks", type=int, default=4)
parser.add_argument("--seconds", type=float, default=3.0)
parser.add_argument("--calls", type=int, default=0, help="calls per caller (0: until --seconds)")
parser.add_argument("--model", default="gpt-4o-mini")
parser.add_argument("--max-tokens", type=int, default=16)
parser.add_argument("--stream", action="store_true")
parser.add_argument("--skew", type=float, default=0.0)
args = parser.parse_args()

if args.skew:
    _real_time = time.time
    time.time = lambda: _real_time() + args.skew  # type: ignore[assignment]

import openai  # noqa: E402  (after the clock is set, as the app's would be)

results = {"ok": 0, "failed": 0, "tokens": 0, "errors": []}
lock = threading.Lock()
end = time.monotonic() + args.seconds
messages = [{"role": "user", "content": "hello from a fleet worker"}]


def more(done: int) -> bool:
    return done < args.calls if args.calls else time.monotonic() < end


def note(ok: bool, error: BaseException | None = None, tokens: int = 0) -> None:
    with lock:
        results["ok" if ok else "failed"] += 1  # type: ignore[operator]
        results["tokens"] += tokens  # type: ignore[operator]
        if error is not None and len(results["errors"]) < 5:  # type: ignore[arg-type]
            results["errors"].append(f"{type(error).__name__}: {error}"[:300])  # type: ignore[union-attr]


def sync_caller() -> None:
    client = openai.OpenAI(max_retries=0)
    done = 0
    while more(done):
        try:
            if args.stream:
                for _ in client.chat.completions.create(
                    model=args.model, messages=messages, max_tokens=args.max_tokens, stream=True
                ):
                    pass
                note(True)
            else:
                reply = client.chat.completions.create(model=args.model, messages=messages, max_tokens=args.max_tokens)
                note(True, tokens=reply.usage.total_tokens if reply.usage else 0)
        except Exception as exc:
            note(False, exc)
        done += 1


async def async_callers() -> None:
    client = openai.AsyncOpenAI(max_retries=0)

    async def caller() -> None:
        done = 0
        while more(done):
            try:
                reply = await client.chat.completions.create(
                    model=args.model, messages=messages, max_tokens=args.max_tokens
                )
                note(True, tokens=reply.usage.total_tokens if reply.usage else 0)
            except Exception as exc:
                note(False, exc)
            done += 1

    await asyncio.gather(*(caller() for _ in range(args.tasks)))


threads = [threading.Thread(target=sync_caller) for _ in range(args.threads)]
for thread in threads:
    thread.start()
if args.tasks:
    asyncio.run(async_callers())
for thread in threads:
    thread.join()
print(json.dumps(results))
