"""Fleet mode (state.redis_url) against process mode, side by side in the same run.

A real redis-server on a free loopback port and the gateway simulator in this process; worker
processes are tests/scripts/fleet_worker.py (the openai SDK from threads and asyncio tasks, the
middleware on through the environment only). Scenarios, each printed fleet against process mode:

  rate         4 workers (2 threads + 8 tasks each), limits.requests_per_second = 50, --seconds:
               calls a second at the gateway (target: 50 within 5 %; process mode gives about 4 x 50)
  tokens       the same with limits.tokens_per_minute: tokens the gateway reported in the run,
               against the limit (a sliding minute: a run under 60 s may use one minute's worth)
  concurrency  limits.max_concurrent = 8, nodes answering in 50 ms: the most requests in flight
               at the gateway (target: 8, never more)
  propagation  4 fleet members (each its own Fleet, connections and syncer thread, in this
               process): time from one member's ejection of a node to the last member avoiding it
  fresh        a node 10x slower than the others, known to the fleet; 10 fresh worker processes
               make 3 calls each: the share of those calls that go to a fast node
  overhead     sequential SDK calls with a limit that applies but never binds, fleet against
               process mode, in alternating blocks in this process: time per call and the ratio
  throughput   4 workers x 64 asyncio tasks, max_concurrent = 10,000 (applies, never binds):
               calls a second at the gateway, through one Redis
  down         Redis killed: sequential calls in fleet mode (degraded) against process mode:
               failures and the time added per call

Usage: python benchmarks/fleet.py [--seconds 30] [--only rate,tokens,...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import openai  # noqa: E402
from redis_servers import RedisServer  # noqa: E402

import yibu_middleware  # noqa: E402
from yibu_middleware.core.limits import Quota  # noqa: E402
from yibu_middleware.core.nodes import NodePool  # noqa: E402
from yibu_middleware.core.retry import RetryBudget  # noqa: E402
from yibu_middleware.fleet import Fleet, FleetLimiter, Syncer  # noqa: E402
from yibu_middleware.limiter import Limiter  # noqa: E402
from yibu_middleware.settings import StateSettings  # noqa: E402
from yibu_middleware.simulator import GatewaySimulator  # noqa: E402

KEY = "sk-bench-gateway-key-000000000000"
PROVIDER_KEY = "sk-proj-provider-key-not-real-000000"
WORKER = ROOT / "tests" / "scripts" / "fleet_worker.py"
SCENARIOS = ("rate", "tokens", "concurrency", "propagation", "fresh", "overhead", "throughput", "down")


def env_for(sim: GatewaySimulator, redis_url: str | None, **settings: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("YIBU_")}
    env.update(
        OPENAI_API_KEY=PROVIDER_KEY,
        YIBU_ENABLED="1",
        YIBU_API_KEY=KEY,
        YIBU_NODES=",".join(n.base_url for n in sim.nodes),
        YIBU_STATE__TIMEOUT="0.5",  # see the README: 2 shared cores, 4 workers starting at once
    )
    if redis_url:
        env["YIBU_STATE__REDIS_URL"] = redis_url
        env["YIBU_STATE__NAMESPACE"] = f"bench{time.monotonic_ns()}"
    env.update({f"YIBU_{k.upper()}": v for k, v in settings.items()})
    return env


def run_workers(env: dict[str, str], count: int, *args: str) -> list[dict[str, Any]]:
    workers = [
        subprocess.Popen([sys.executable, str(WORKER), *args], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    out = []
    for worker in workers:
        stdout, _ = worker.communicate(timeout=600)
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def chat(sim: GatewaySimulator) -> list[Any]:
    return [r for r in sim.records if r.path.endswith("/chat/completions") and r.status == 200]


def steady_rate(records: list[Any]) -> float:
    """Calls a second at the gateway, without the first and last second (start-up, wind-down)."""
    starts = sorted(r.started for r in records)
    if len(starts) < 3:
        return 0.0
    lo, hi = starts[0] + 1.0, starts[-1] - 1.0
    inside = [t for t in starts if lo <= t < hi]
    return len(inside) / (hi - lo) if hi > lo else 0.0


def peak_in_flight(records: list[Any]) -> int:
    events = sorted([(r.started, 1) for r in records] + [(r.started + r.elapsed, -1) for r in records])
    peak = now = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def side_by_side(sim: GatewaySimulator, redis: RedisServer, settings: dict[str, str], *args: str) -> dict[str, Any]:
    out = {}
    for mode, url in (("fleet", redis.url), ("process", None)):
        sim.clear()
        results = run_workers(env_for(sim, url, **settings), 4, *args)
        records = chat(sim)
        out[mode] = {
            "ok": sum(r["ok"] for r in results),
            "failed": sum(r["failed"] for r in results),
            "tokens": sum(r["tokens"] for r in results),
            "rate": steady_rate(records),
            "peak": peak_in_flight(records),
            "calls": len(records),
        }
    return out


def scenario_rate(sim: GatewaySimulator, redis: RedisServer, seconds: float) -> None:
    r = side_by_side(
        sim, redis, {"limits__requests_per_second": "50"}, "--threads", "2", "--tasks", "8", "--seconds", str(seconds)
    )
    for mode in ("fleet", "process"):
        m = r[mode]
        print(
            f"  {mode:<8} {m['rate']:6.1f} calls/s at the gateway (x{m['rate'] / 50:.3f} the limit of 50);"
            f" {m['ok']} ok, {m['failed']} failed"
        )


def usage_at_gateway(record: Any) -> int:
    """The tokens the simulator reported for a chat call (its own rule: words in, its reply's words out)."""
    from yibu_middleware.simulator.responses import count_words, reply_words

    body = record.body if isinstance(record.body, dict) else {}
    return count_words(body.get("messages")) + len(reply_words(record.node))


def busiest_minute(records: list[Any]) -> int:
    """The most tokens the gateway reported in any 60 s (the limit's own sliding window)."""
    calls = sorted((r.started, usage_at_gateway(r)) for r in records)
    best = 0
    for i, (start, _) in enumerate(calls):
        best = max(best, sum(tokens for t, tokens in calls[i:] if t < start + 60.0))
    return best


def scenario_tokens(sim: GatewaySimulator, redis: RedisServer, seconds: float) -> None:
    # Calls are started for --seconds; those still waiting for the window then go as it slides
    # (queue_timeout 120 s, so none gives up): the busiest 60 s at the gateway is the measure.
    limit = 20000
    settings = {"limits__tokens_per_minute": str(limit), "limits__queue_timeout": "120"}
    out = {}
    for mode, url in (("fleet", redis.url), ("process", None)):
        sim.clear()
        results = run_workers(
            env_for(sim, url, **settings), 4, "--threads", "2", "--tasks", "8", "--seconds", str(seconds)
        )
        out[mode] = (busiest_minute(chat(sim)), sum(r["ok"] for r in results), sum(r["failed"] for r in results))
    for mode, (tokens, ok, failed) in out.items():
        print(
            f"  {mode:<8} {tokens:6d} tokens in the busiest 60 s at the gateway (x{tokens / limit:.3f} the limit"
            f" of {limit}); {ok} ok, {failed} failed"
        )


def scenario_concurrency(sim: GatewaySimulator, redis: RedisServer, seconds: float) -> None:
    for node in sim.nodes:
        sim.set_faults(node.name, latency=0.05)
    try:
        r = side_by_side(
            sim,
            redis,
            {"limits__max_concurrent": "8"},
            "--threads",
            "2",
            "--tasks",
            "8",
            "--seconds",
            str(min(seconds, 10)),
        )
    finally:
        for node in sim.nodes:
            sim.set_faults(node.name, latency=0.0)
    for mode in ("fleet", "process"):
        m = r[mode]
        print(
            f"  {mode:<8} at most {m['peak']} in flight at the gateway (limit 8); {m['calls']} calls,"
            f" {m['ok']} ok, {m['failed']} failed"
        )


class Member:
    def __init__(self, url: str, namespace: str, nodes: list[str]) -> None:
        self.fleet = Fleet(StateSettings(redis_url=url, namespace=namespace), KEY.encode())
        self.pool = NodePool(nodes)
        local = Limiter(Quota(), {})
        limiter = FleetLimiter(self.fleet, local, Quota(), {})
        self.alive = True
        self.syncer = Syncer(self.fleet, self.pool, RetryBudget(), limiter, 60, alive=lambda _s: self.alive)
        self.syncer.start()
        self.syncer.wait_ready(2)


def scenario_propagation(sim: GatewaySimulator, redis: RedisServer, seconds: float) -> None:
    nodes = [n.base_url for n in sim.nodes]
    namespace = f"prop{time.monotonic_ns()}"
    members = [Member(redis.url, namespace, nodes) for _ in range(4)]
    delays = []
    try:
        for round_ in range(40):
            finder, others = members[round_ % 4], [m for i, m in enumerate(members) if i != round_ % 4]
            node = finder.pool.nodes[round_ % 3]
            for _ in range(finder.pool.eject_after):
                finder.pool.finished(node, 0.01, False)
            started = time.monotonic()
            while not all(o.pool.nodes[round_ % 3] in o.pool.ejected() for o in others):
                if time.monotonic() - started > 5:
                    break
                time.sleep(0.002)
            delays.append(time.monotonic() - started)
            finder.pool.reinstate(node)  # back in everywhere before the next round
            time.sleep(0.5)
    finally:
        for m in members:
            m.alive = False
    delays.sort()
    p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
    print(
        f"  ejection to the last of 3 other members avoiding the node, {len(delays)} rounds:"
        f" p50 {statistics.median(delays) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {delays[-1] * 1000:.0f} ms"
        " (target: p99 under 1 s)"
    )
    print("  process mode: never (each process finds a dead node on its own)")


def scenario_fresh(sim: GatewaySimulator, redis: RedisServer, seconds: float) -> None:
    slow = sim.nodes[2]
    sim.set_faults(slow.name, latency=0.2)
    for node in sim.nodes[:2]:
        sim.set_faults(node.name, latency=0.02)
    try:
        for mode, url in (("fleet", redis.url), ("process", None)):
            env = env_for(sim, url)
            # A veteran worker learns the nodes' speeds (and, in fleet mode, tells the fleet).
            run_workers(env, 1, "--threads", "1", "--tasks", "4", "--seconds", "3")
            fast = total = 0
            for _ in range(10):
                sim.clear()
                run_workers(env, 1, "--threads", "1", "--tasks", "0", "--calls", "3")
                calls = chat(sim)
                total += len(calls)
                fast += sum(1 for r in calls if r.node != slow.name)
            print(
                f"  {mode:<8} {fast} of {total} first calls of fresh processes went to a fast node"
                f" ({fast / max(total, 1):.0%}); the slow node answers in 200 ms, the others in 20 ms"
            )
    finally:
        for node in sim.nodes:
            sim.set_faults(node.name, latency=0.0)


def timed_calls(calls: int) -> list[float]:
    client = openai.OpenAI(api_key=PROVIDER_KEY, max_retries=0)
    messages = [{"role": "user", "content": "hi"}]
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        client.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
        times.append(time.perf_counter() - started)
    client.close()
    return times


def install(sim: GatewaySimulator, redis_url: str | None) -> None:
    settings: dict[str, Any] = {
        "nodes": [n.base_url for n in sim.nodes],
        "api_key": KEY,
        "limits": {"requests_per_second": 100000, "max_concurrent": 10000},
    }
    if redis_url:
        settings["state"] = {"redis_url": redis_url, "namespace": f"ovh{time.monotonic_ns()}", "timeout": 0.5}
    yibu_middleware.install(settings)


def scenario_overhead(sim: GatewaySimulator, redis: RedisServer, seconds: float) -> None:
    sides: dict[str, list[float]] = {"fleet": [], "process": []}
    rounds = 10
    for _ in range(rounds):
        for mode, url in (("fleet", redis.url), ("process", None)):
            install(sim, url)
            timed_calls(20)  # warm: connections, the syncer's first exchange
            sides[mode].append(statistics.median(timed_calls(200)))
            yibu_middleware.uninstall()
    fleet, process = statistics.median(sides["fleet"]), statistics.median(sides["process"])
    paired = statistics.median(f - p for f, p in zip(sides["fleet"], sides["process"], strict=True))
    print(
        f"  per SDK call, medians of {rounds} alternating blocks of 200: fleet {fleet * 1e6:.0f} µs,"
        f" process {process * 1e6:.0f} µs: x{fleet / process:.3f} (paired +{paired * 1e6:.0f} µs)"
        " — one script run (admission) on the call's path, the release on the syncer's thread"
    )


def scenario_throughput(sim: GatewaySimulator, redis: RedisServer, seconds: float) -> None:
    r = side_by_side(
        sim,
        redis,
        {"limits__max_concurrent": "10000"},
        "--threads",
        "0",
        "--tasks",
        "64",
        "--seconds",
        str(min(seconds, 10)),
    )
    for mode in ("fleet", "process"):
        m = r[mode]
        print(
            f"  {mode:<8} {m['rate']:6.1f} calls/s at the gateway from 4 x 64 concurrent calls;"
            f" {m['ok']} ok, {m['failed']} failed"
        )
    print(
        f"  fleet/process: x{r['fleet']['rate'] / max(r['process']['rate'], 1e-9):.3f}"
        " (the simulator shares these 2 cores with the workers and Redis)"
    )


def scenario_down(sim: GatewaySimulator, redis: RedisServer, seconds: float) -> None:
    redis.kill()
    try:
        sides: dict[str, list[float]] = {"degraded": [], "process": []}
        failures = 0
        for _ in range(5):
            for mode, url in (("degraded", redis.url), ("process", None)):
                install(sim, url)
                try:
                    sides[mode].append(statistics.median(timed_calls(200)))
                except openai.APIError:
                    failures += 1
                yibu_middleware.uninstall()
        degraded, process = statistics.median(sides["degraded"]), statistics.median(sides["process"])
        print(
            f"  Redis down: {failures} failed blocks of 200 calls; per call degraded {degraded * 1e6:.0f} µs,"
            f" process {process * 1e6:.0f} µs: x{degraded / process:.3f} (+{(degraded - process) * 1e6:.0f} µs)"
        )
    finally:
        redis.start()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the rate and tokens runs")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    args = parser.parse_args()
    chosen = [s for s in args.only.split(",") if s]
    sim = GatewaySimulator(accepted_keys={KEY})
    for name in ("a", "b", "c"):
        sim.add_node(name)
    with sim, tempfile.TemporaryDirectory() as folder:
        redis = RedisServer(Path(folder)).start()
        try:
            for name in chosen:
                print(f"{name}:", flush=True)
                globals()[f"scenario_{name}"](sim, redis, args.seconds)
        finally:
            redis.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
