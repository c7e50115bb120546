"""Fleet mode against a real redis-server: limits, holds and node knowledge shared by processes.

Each "process" here is a FleetLimiter / Syncer with a Fleet of its own (its own process id,
connections and local queue), as a separate process would have; the multi-process tests with real
worker processes and apps are in test_fleet_processes.py. Redis is a real redis-server on a free
loopback port (tests/redis_servers.py); each test uses a namespace of its own.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("redis")

from redis_servers import RedisServer, redis_cluster, redis_server

from yibu_middleware.core.limits import Quota
from yibu_middleware.core.nodes import NodePool
from yibu_middleware.core.retry import RetryBudget
from yibu_middleware.fleet import Fleet, FleetLimiter, Syncer
from yibu_middleware.fleet.shared import FleetBench, FleetSpend
from yibu_middleware.limiter import Limiter, QueueTimeout
from yibu_middleware.settings import StateSettings

GATEWAY_KEY = b"sk-gw-fleet-test-0123456789abcdef"
NODES = ["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"]


class ClusterView:
    """A 3-node Redis Cluster seen as one server by the tests: its URL (any node's: the client
    finds the rest) and a cluster client."""

    def __init__(self, servers: list[RedisServer]) -> None:
        self.servers = servers
        self.url = servers[0].url

    def client(self) -> Any:
        import redis

        return redis.RedisCluster(host="127.0.0.1", port=self.servers[0].port, decode_responses=True)


@pytest.fixture(scope="module", params=["redis", "cluster"])
def shared_redis(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Every test that shares one Redis runs twice: on one redis-server and on a 3-node Redis
    Cluster (``--cluster-enabled yes``, every slot assigned), where each script must find all
    of its keys in one slot."""
    if request.param == "redis":
        with redis_server(tmp_path_factory.mktemp("redis")) as server:
            yield server
    else:
        with redis_cluster(tmp_path_factory.mktemp("cluster")) as servers:
            yield ClusterView(servers)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server this test may kill, pause or restart."""
    with redis_server(tmp_path / "redis") as server:
        yield server


class Process:
    """What one process of the fleet holds: its fleet link, limiter, pool, budget and syncer."""

    def __init__(self, url: str, namespace: str, quota: Quota, per_model: dict[str, Quota] | None = None, **state: Any):
        settings = StateSettings(redis_url=url, namespace=namespace, **state)
        self.fleet = Fleet(settings, GATEWAY_KEY)
        self.pool = NodePool(NODES)
        self.budget = RetryBudget()
        local = Limiter(quota, per_model or {}, queue_timeout=10, nodes=self.pool.nodes)
        self.limiter = FleetLimiter(self.fleet, local, quota, per_model or {})
        self.running = True
        self.bench = FleetBench()
        self.spend = FleetSpend()
        self.syncer = Syncer(
            self.fleet,
            self.pool,
            self.budget,
            self.limiter,
            60.0,
            alive=lambda _s: self.running,
            bench=self.bench,
            spend=self.spend,
        )
        self.syncer.start()
        self.syncer.wait_ready(2.0)

    def crash(self) -> None:
        """Stops telling the fleet anything (its leases are not renewed or given back)."""
        self.running = False

    def node(self, index: int) -> Any:
        return self.pool.nodes[index]


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    made: list[Process] = []
    yield made
    for process in made:
        process.crash()


def test_requests_per_second_holds_for_the_fleet_not_per_process(
    shared_redis: Any, namespace: str, processes: list[Process]
) -> None:
    quota = Quota(requests_per_second=20)
    processes += [Process(shared_redis.url, namespace, quota) for _ in range(3)]
    admitted: list[float] = []
    lock = threading.Lock()

    def caller(process: Process) -> None:
        for _ in range(12):
            permit = process.limiter.acquire(None)
            with lock:
                admitted.append(time.monotonic())
            permit.release()

    threads = [threading.Thread(target=caller, args=(p,)) for p in processes for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    admitted.sort()
    assert len(admitted) == 72
    # In any one second, at most the limit (+1: the half-interval slack, as in process mode).
    busiest = max(sum(1 for t in admitted if start <= t < start + 1.0) for start in admitted)
    assert busiest <= 21, f"{busiest} calls admitted in one second against a fleet limit of 20"


def test_concurrency_slots_are_leases_that_come_back_when_a_process_dies(
    shared_redis: Any, namespace: str, processes: list[Process]
) -> None:
    quota = Quota(max_concurrent=2)
    crashing = Process(shared_redis.url, namespace, quota, lease_seconds=1)
    other = Process(shared_redis.url, namespace, quota, lease_seconds=1)
    processes += [crashing, other]
    held = [crashing.limiter.acquire(None), crashing.limiter.acquire(None)]
    with pytest.raises(QueueTimeout) as caught:
        other.limiter.acquire(None, timeout=0.3)
    assert caught.value.setting == "limits.max_concurrent"
    assert "shared through Redis" in str(caught.value)
    crashing.crash()  # dies holding both slots: nobody renews or gives them back
    started = time.monotonic()
    permit = other.limiter.acquire(None, timeout=5)
    assert time.monotonic() - started < 5
    permit.release()
    assert held  # never released


def test_a_live_process_keeps_its_slots_past_the_lease(
    shared_redis: Any, namespace: str, processes: list[Process]
) -> None:
    quota = Quota(max_concurrent=1)
    holder = Process(shared_redis.url, namespace, quota, lease_seconds=1)
    other = Process(shared_redis.url, namespace, quota, lease_seconds=1)
    processes += [holder, other]
    permit = holder.limiter.acquire(None)
    with pytest.raises(QueueTimeout):
        other.limiter.acquire(None, timeout=2.5)  # 2.5 leases long: renewed meanwhile
    permit.release()
    other.limiter.acquire(None, timeout=2).release()


def test_the_fleet_queue_is_first_come_first_served(
    shared_redis: Any, namespace: str, processes: list[Process]
) -> None:
    quota = Quota(max_concurrent=1)
    holder, first, second = (Process(shared_redis.url, namespace, quota) for _ in range(3))
    processes += [holder, first, second]
    permit = holder.limiter.acquire(None)
    order: list[str] = []

    def wait(process: Process, name: str) -> None:
        got = process.limiter.acquire(None, timeout=10)
        order.append(name)
        time.sleep(0.05)
        got.release()

    threads = [threading.Thread(target=wait, args=(first, "first"))]
    threads[0].start()
    time.sleep(0.2)  # "first" is in the fleet queue before "second" arrives
    threads.append(threading.Thread(target=wait, args=(second, "second")))
    threads[1].start()
    time.sleep(0.2)
    permit.release()
    for thread in threads:
        thread.join()
    assert order == ["first", "second"]


def test_tokens_per_minute_counts_every_process_usage(
    shared_redis: Any, namespace: str, processes: list[Process]
) -> None:
    quota = Quota(tokens_per_minute=1000)
    one, two = Process(shared_redis.url, namespace, quota), Process(shared_redis.url, namespace, quota)
    processes += [one, two]
    one.limiter.acquire(None, 300).release(700)  # the gateway reported 700 used
    time.sleep(0.3)  # the syncer gives the lease back
    with pytest.raises(QueueTimeout) as caught:
        two.limiter.acquire(None, 400, timeout=0.3)
    assert caught.value.setting == "limits.tokens_per_minute"
    two.limiter.acquire(None, 250, timeout=0.3).release(250)


def test_per_model_limits_are_fleet_wide_and_other_models_never_touch_redis(
    shared_redis: Any, namespace: str, processes: list[Process]
) -> None:
    per_model = {"gpt-4o": Quota(max_concurrent=1)}
    one = Process(shared_redis.url, namespace, Quota(), per_model)
    two = Process(shared_redis.url, namespace, Quota(), per_model)
    processes += [one, two]
    permit = one.limiter.acquire("gpt-4o")
    with pytest.raises(QueueTimeout) as caught:
        two.limiter.acquire("gpt-4o", timeout=0.2)
    assert caught.value.setting == 'limits.per_model["gpt-4o"].max_concurrent'
    before = _commands_processed(shared_redis)
    for _ in range(20):
        two.limiter.acquire("gpt-4o-mini").release()
    after = _commands_processed(shared_redis)
    assert after - before < 40  # the syncers' own ticks only (a few commands each): none per call
    permit.release()


def _commands_processed(server: Any) -> int:
    servers = server.servers if isinstance(server, ClusterView) else [server]
    return sum(int(s.client().info("stats")["total_commands_processed"]) for s in servers)


def test_namespaces_do_not_see_each_other(shared_redis: Any, processes: list[Process]) -> None:
    quota = Quota(max_concurrent=1)
    one = Process(shared_redis.url, "app-one", quota)
    two = Process(shared_redis.url, "app-two", quota)
    processes += [one, two]
    first = one.limiter.acquire(None)
    two.limiter.acquire(None, timeout=0.2).release()  # its own namespace: room
    first.release()


def test_no_key_or_secret_in_redis(shared_redis: Any, namespace: str, processes: list[Process]) -> None:
    quota = Quota(max_concurrent=2, requests_per_second=50, tokens_per_minute=10000)
    process = Process(shared_redis.url, namespace, quota)
    processes.append(process)
    process.limiter.acquire(None, 10).release(12)
    process.pool.finished(process.node(0), 0.01, True)
    time.sleep(1.2)  # a slow exchange: latency and budget written
    dump = ""
    servers = shared_redis.servers if isinstance(shared_redis, ClusterView) else [shared_redis]
    for server in servers:  # on a cluster, every node (the keys are on the one that owns their slot)
        client = server.client()
        names = [name for name in client.keys("*") if namespace in name]
        dump += repr(names) + repr([client.dump(name) for name in names])
    assert namespace in dump
    assert GATEWAY_KEY.decode() not in dump
    assert "sk-gw" not in dump


def test_ejection_in_one_process_is_followed_by_the_others(
    shared_redis: Any, namespace: str, processes: list[Process]
) -> None:
    finder, other = Process(shared_redis.url, namespace, Quota()), Process(shared_redis.url, namespace, Quota())
    processes += [finder, other]
    bad = finder.node(0)
    for _ in range(finder.pool.eject_after):
        finder.pool.finished(finder.pool.choose(exclude=[finder.node(1)]) or bad, 0.01, False)
    assert bad in finder.pool.ejected()
    deadline = time.monotonic() + 1.0
    while other.node(0) not in other.pool.ejected():
        assert time.monotonic() < deadline, "the ejection did not reach the other process within 1 s"
        time.sleep(0.02)
    # A process that starts later reads the ejections in force.
    late = Process(shared_redis.url, namespace, Quota())
    processes.append(late)
    assert late.node(0) in late.pool.ejected()
    # The node's trial succeeds in the finder: back in everywhere.
    finder.pool.reinstate(bad)
    deadline = time.monotonic() + 1.0
    while other.node(0) in other.pool.ejected():
        assert time.monotonic() < deadline, "the reinstatement did not reach the other process within 1 s"
        time.sleep(0.02)


def test_a_429_in_one_process_holds_the_others(shared_redis: Any, namespace: str, processes: list[Process]) -> None:
    quota = Quota(requests_per_second=1000)
    one, two = Process(shared_redis.url, namespace, quota), Process(shared_redis.url, namespace, quota)
    processes += [one, two]
    for node in one.pool.nodes:
        one.limiter.observe("gpt-4o", 429, {"retry-after": "2"}, node)
    time.sleep(0.6)
    with pytest.raises(QueueTimeout) as caught:
        two.limiter.acquire("gpt-4o", timeout=0.3)
    assert caught.value.setting == "limits.follow_gateway_headers"
    two.limiter.acquire("gpt-4o-mini", timeout=0.3).release()  # another model is not held


def test_a_new_process_starts_from_the_fleets_latency_view(
    shared_redis: Any, namespace: str, processes: list[Process]
) -> None:
    veteran = Process(shared_redis.url, namespace, Quota())
    processes.append(veteran)
    fast, slow = veteran.node(0), veteran.node(1)
    veteran.pool.finished(veteran.pool.choose(exclude=[slow]) or fast, 0.02, True)
    veteran.pool.finished(veteran.pool.choose(exclude=[fast]) or slow, 0.4, True)
    time.sleep(1.3)  # one slow exchange publishes them
    fresh = Process(shared_redis.url, namespace, Quota())
    processes.append(fresh)
    chosen = []
    for _ in range(3):
        node = fresh.pool.choose()
        assert node is not None
        chosen.append(node.label)
        fresh.pool.finished(node, None, None)
    assert chosen == [fresh.node(0).label] * 3


def test_the_retry_budget_is_the_fleets(shared_redis: Any, namespace: str, processes: list[Process]) -> None:
    busy, idle = Process(shared_redis.url, namespace, Quota()), Process(shared_redis.url, namespace, Quota())
    processes += [busy, idle]
    for _ in range(100):
        busy.budget.record_request()
    for _ in range(15):
        busy.budget.record_retry()
    deadline = time.monotonic() + 3
    while idle.budget.others != (100, 15):
        assert time.monotonic() < deadline, f"the other process sees {idle.budget.others}"
        time.sleep(0.05)
    spent = sum(idle.budget.try_spend() for _ in range(20))
    assert spent == 5  # max(10, 20 % of 100) = 20 fleet-wide, 15 taken elsewhere


def test_redis_killed_then_back_empty_calls_never_fail(
    own_redis: RedisServer, namespace: str, processes: list[Process], caplog: pytest.LogCaptureFixture
) -> None:
    quota = Quota(max_concurrent=4, requests_per_second=200)
    one, two = Process(own_redis.url, namespace, quota), Process(own_redis.url, namespace, quota)
    processes += [one, two]
    time.sleep(1.2)  # heartbeats: two live processes
    own_redis.kill()
    with caplog.at_level(logging.WARNING, logger="yibu_middleware"):
        for _ in range(30):
            started = time.monotonic()
            one.limiter.acquire(None, timeout=2).release()
            assert time.monotonic() - started < 1.0
    warnings = [r for r in caplog.records if "did not answer" in r.getMessage()]
    # One per outage and process (both "processes" here log through this one), not one per call.
    assert len(warnings) == 2
    assert "1/2 part" in warnings[0].getMessage()
    assert not one.fleet.up
    # Degraded: the process takes its share (4 / 2 live = 2 slots), not the whole limit.
    held = [one.limiter.acquire(None), one.limiter.acquire(None)]
    with pytest.raises(QueueTimeout):
        one.limiter.acquire(None, timeout=0.2)
    for permit in held:
        permit.release()
    own_redis.start()  # back, empty
    deadline = time.monotonic() + 3
    while not (one.fleet.up and two.fleet.up):
        assert time.monotonic() < deadline, "the process did not notice Redis was back"
        time.sleep(0.05)
    held = [one.limiter.acquire(None) for _ in range(4)]  # the whole limit again, through Redis
    with pytest.raises(QueueTimeout):
        two.limiter.acquire(None, timeout=0.3)
    for permit in held:
        permit.release()


def test_redis_paused_calls_wait_no_longer_than_the_timeout(
    own_redis: RedisServer, namespace: str, processes: list[Process]
) -> None:
    process = Process(own_redis.url, namespace, Quota(max_concurrent=4))
    processes.append(process)
    own_redis.pause()  # SIGSTOP: connections open, nothing answers
    try:
        started = time.monotonic()
        process.limiter.acquire(None, timeout=2).release()
        first = time.monotonic() - started
        assert first < 0.5, f"a call waited {first:.2f} s on a paused Redis"
        started = time.monotonic()
        for _ in range(20):
            process.limiter.acquire(None, timeout=2).release()
        assert time.monotonic() - started < 0.5  # down: no call asks Redis any more
    finally:
        own_redis.resume()


def test_async_callers_share_the_same_fleet(shared_redis: Any, namespace: str, processes: list[Process]) -> None:
    import asyncio

    quota = Quota(max_concurrent=3)
    one, two = Process(shared_redis.url, namespace, quota), Process(shared_redis.url, namespace, quota)
    processes += [one, two]
    in_flight = 0
    peak = 0
    lock = threading.Lock()

    async def call(process: Process) -> None:
        nonlocal in_flight, peak
        permit = await process.limiter.acquire_async(None, timeout=10)
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        with lock:
            in_flight -= 1
        permit.release()

    async def main(process: Process) -> None:
        await asyncio.gather(*(call(process) for _ in range(15)))

    threads = [threading.Thread(target=asyncio.run, args=(main(p),)) for p in (one, two)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak == 3


# --- settings, start-up and the command line -------------------------------------------------------


def _run_cli(env: dict[str, str], *args: str) -> Any:
    import os
    import subprocess
    import sys

    full = {k: v for k, v in os.environ.items() if not k.startswith("YIBU_")}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "yibu_middleware.cli", *args], env=full, capture_output=True, text=True, timeout=60
    )


def test_process_mode_never_imports_redis() -> None:
    import os
    import subprocess
    import sys

    code = (
        "import sys, yibu_middleware; yibu_middleware.install({'api_key': 'sk-gw-x-0123456789abcdef',"
        " 'limits': {'max_concurrent': 2}}); print('redis' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("YIBU_")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_a_bad_redis_url_is_named_without_its_password() -> None:
    out = _run_cli(
        {"YIBU_API_KEY": "sk-gw-x-0123456789abcdef", "YIBU_STATE__REDIS_URL": "http://user:hunter2secret@cache:6379"},
        "status",
    )
    assert out.returncode == 2
    assert "state.redis_url" in out.stdout and "redis://" in out.stdout
    assert "hunter2secret" not in out.stdout + out.stderr


def test_yibu_status_shows_the_fleet_and_no_secret(shared_redis: Any, namespace: str, processes: list[Process]) -> None:
    quota = Quota(max_concurrent=3, requests_per_second=40)
    process = Process(shared_redis.url, namespace, quota)
    processes.append(process)
    held = process.limiter.acquire(None)
    for _ in range(process.pool.eject_after):
        process.pool.finished(process.node(1), 0.01, False)
    process.limiter.observe("gpt-4o", 429, {"retry-after": "20"}, process.node(0))
    time.sleep(1.2)
    password_url = shared_redis.url  # no password on the test server: the gateway key is the secret here
    out = _run_cli(
        {
            "YIBU_API_KEY": GATEWAY_KEY.decode(),
            "YIBU_NODES": ",".join(NODES),
            "YIBU_STATE__REDIS_URL": password_url,
            "YIBU_STATE__NAMESPACE": namespace,
            "YIBU_LIMITS__MAX_CONCURRENT": "3",
            "YIBU_LIMITS__REQUESTS_PER_SECOND": "40",
        },
        "status",
    )
    held.release()
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "live processes: 1" in text
    assert "nodes out: 127.0.0.1:2" in text
    assert "max_concurrent: 1 in flight, limit 3" in text
    assert "requests_per_second:" in text and "limit 40" in text
    assert "gpt-4o on 127.0.0.1:1" in text
    assert GATEWAY_KEY.decode() not in text


def test_yibu_status_when_redis_does_not_answer_or_fleet_mode_is_off() -> None:
    from redis_servers import free_port

    base = {"YIBU_API_KEY": "sk-gw-x-0123456789abcdef"}
    off = _run_cli(base, "status")
    assert off.returncode == 2 and "Fleet mode is off" in off.stdout
    down = _run_cli({**base, "YIBU_STATE__REDIS_URL": f"redis://:s3cretpass@127.0.0.1:{free_port()}/0"}, "status")
    assert down.returncode == 1
    assert "NO ANSWER" in down.stdout
    assert "s3cretpass" not in down.stdout + down.stderr
    doctor = _run_cli({**base, "YIBU_STATE__REDIS_URL": f"redis://:s3cretpass@127.0.0.1:{free_port()}/0"}, "doctor")
    assert "Fleet mode (state.redis_url)" in doctor.stdout and "Calls would not fail" in doctor.stdout
    assert "s3cretpass" not in doctor.stdout + doctor.stderr


def test_a_call_that_gives_up_leaves_the_fleet_queue(
    shared_redis: Any, namespace: str, processes: list[Process]
) -> None:
    quota = Quota(max_concurrent=1)
    holder, quitter = Process(shared_redis.url, namespace, quota), Process(shared_redis.url, namespace, quota)
    processes += [holder, quitter]
    permit = holder.limiter.acquire(None)
    with pytest.raises(QueueTimeout):
        quitter.limiter.acquire(None, timeout=0.2)
    queue = holder.limiter._global.keys[2] if holder.limiter._global else ""
    deadline = time.monotonic() + 2
    while shared_redis.client().zcard(queue):
        assert time.monotonic() < deadline, "the call that gave up still heads the fleet queue"
        time.sleep(0.02)
    permit.release()


def test_the_gateways_remaining_budget_is_shared_out_among_live_processes(
    shared_redis: Any, namespace: str, processes: list[Process]
) -> None:
    quota = Quota(requests_per_second=1000)
    members = [Process(shared_redis.url, namespace, quota) for _ in range(2)]
    processes += members
    deadline = time.monotonic() + 3
    while members[0].fleet.live_processes != 2:
        assert time.monotonic() < deadline, "the heartbeats did not show two live processes"
        time.sleep(0.05)
    one = members[0]
    # No limit header: what is left does not refill before the reset, so the count is exact.
    headers = {"x-ratelimit-remaining-requests": "4", "x-ratelimit-reset-requests": "20s"}
    for node in one.pool.nodes:
        one.limiter.observe("gpt-4o", 200, headers, node)
    admitted = 0
    with pytest.raises(QueueTimeout):
        for _ in range(5):
            one.limiter.acquire("gpt-4o", timeout=0.1).release()
            admitted += 1
    assert admitted == 2  # its half of the 4 left, not all 4 (the other process has the other half)


def test_affinitys_load_bound_counts_the_fleets_calls_in_flight(
    shared_redis: Any, namespace: str, processes: list[Process]
) -> None:
    busy, other = Process(shared_redis.url, namespace, Quota()), Process(shared_redis.url, namespace, Quota())
    processes += [busy, other]
    node = busy.node(0)
    taken = [busy.pool.choose(exclude=[busy.node(1)]) for _ in range(3)]
    assert taken == [node] * 3
    deadline = time.monotonic() + 2
    while other.pool.loads is None or other.pool.loads(other.pool.nodes)[0] != 3:
        assert time.monotonic() < deadline, "the other process does not count the busy one's calls"
        time.sleep(0.05)
    for _ in taken:
        busy.pool.finished(node, 0.01, True)
    deadline = time.monotonic() + 2
    while other.pool.loads(other.pool.nodes)[0] != 0:
        assert time.monotonic() < deadline, "the calls that ended are still counted"
        time.sleep(0.05)


def test_a_key_benched_in_one_process_is_benched_in_all(
    shared_redis: Any, namespace: str, processes: list[Process]
) -> None:
    finder, other = Process(shared_redis.url, namespace, Quota()), Process(shared_redis.url, namespace, Quota())
    processes += [finder, other]
    finder.bench.bench("key-fp-1", time.time() + 30, "quota: insufficient_user_quota")
    deadline = time.monotonic() + 1.0
    while other.bench.benched("key-fp-1", time.time()) is None:
        assert time.monotonic() < deadline, "the bench did not reach the other process within 1 s"
        time.sleep(0.02)
    benched = other.bench.benched("key-fp-1", time.time())
    assert benched is not None and "insufficient_user_quota" in benched.reason
    assert 25 < benched.until - time.time() <= 30
    late = Process(shared_redis.url, namespace, Quota())  # starts later: reads the benches in force
    processes.append(late)
    assert late.bench.benched("key-fp-1", time.time()) is not None


def test_budgets_count_the_fleets_spend(shared_redis: Any, namespace: str, processes: list[Process]) -> None:
    from decimal import Decimal

    from yibu_middleware.core.spend import utc_now

    one, two = Process(shared_redis.url, namespace, Quota()), Process(shared_redis.url, namespace, Quota())
    processes += [one, two]
    now = utc_now()
    one.spend.add("gpt-4o", Decimal("0.25"), now)
    assert one.spend.spent("day", now) == Decimal("0.25")  # its own at once, before any exchange
    two.spend.add("gpt-4o-mini", Decimal("0.5"), now)
    deadline = time.monotonic() + 1.5
    while one.spend.spent("day", now) != Decimal("0.75") or two.spend.spent("day", now) != Decimal("0.75"):
        assert time.monotonic() < deadline, (one.spend.spent("day", now), two.spend.spent("day", now))
        time.sleep(0.02)
    assert one.spend.spent("month", now, "gpt-4o-m*") == Decimal("0.5")
    assert two.spend.spent("hour", now, "gpt-4o") == Decimal("0.25")
