"""Client-side limits: the admission rules on a fake clock, then the shared queue with real threads and tasks.

No test asserts a duration: time-based rules run on a fake clock; the real-thread tests
assert counts and order only.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from yibu_middleware.core.limits import (
    MEDIA_TOKENS,
    NO_HINT_HOLD,
    Admission,
    Quota,
    Ticket,
    estimate_tokens,
    parse_duration,
)
from yibu_middleware.errors import ConfigError, YibuError
from yibu_middleware.limiter import Limiter, QueueTimeout
from yibu_middleware.settings import load_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def admitted_now(admission: Admission) -> list[Ticket]:
    return admission.pump()[0]


# --- concurrency and fairness ------------------------------------------------------------------


def test_concurrency_slots_are_taken_at_admission_and_given_back_at_release() -> None:
    admission = Admission(Quota(max_concurrent=2), clock=Clock())
    first, second, third = (admission.enqueue("m") for _ in range(3))
    assert admitted_now(admission) == [first, second]
    assert not third.admitted and third.recheck_at is None  # no time helps: only a release
    assert third.holder() == "limits.max_concurrent (2)"
    admission.release(first)
    assert admitted_now(admission) == [third]


def test_queue_is_first_come_first_served() -> None:
    admission = Admission(Quota(max_concurrent=1), clock=Clock())
    tickets = [admission.enqueue(f"m{n % 3}") for n in range(6)]
    order: list[Ticket] = []
    while len(order) < len(tickets):
        (ticket,) = admitted_now(admission)
        order.append(ticket)
        admission.release(ticket)
    assert order == tickets


def test_a_call_held_by_its_models_limit_does_not_hold_other_models() -> None:
    admission = Admission(Quota(max_concurrent=2), {"a": Quota(max_concurrent=1)}, clock=Clock())
    a1 = admission.enqueue("a")
    a2 = admission.enqueue("a")
    b1 = admission.enqueue("b")
    b2 = admission.enqueue("b")
    # a2 lacks model a's slot only: b1 passes it; b2 then finds the global limit full.
    assert admitted_now(admission) == [a1, b1]
    assert a2.holder() == 'limits.per_model["a"].max_concurrent (1)'
    assert b2.holder() == "limits.max_concurrent (2)"
    admission.release(a1)
    # a2 was first in line: the freed global slot is its, not b2's.
    assert admitted_now(admission) == [a2]
    admission.release(b1)
    assert admitted_now(admission) == [b2]


def test_a_later_call_never_jumps_a_waiting_one_on_a_shared_limit() -> None:
    clock = Clock()
    admission = Admission(Quota(tokens_per_minute=1000), clock=clock)
    big = admission.enqueue("m", 800)
    assert admitted_now(admission) == [big]
    bigger = admission.enqueue("m", 900)
    small = admission.enqueue("m", 10)  # would fit, but the bigger one was first
    assert admitted_now(admission) == []
    assert bigger.holder() == "limits.tokens_per_minute (1000)" and small.recheck_at is None
    admission.release(big, 50)
    assert admitted_now(admission) == [bigger, small]  # 50 + 900 + 10 fit in 1,000


# --- requests per second ---------------------------------------------------------------------------


def drive(admission: Admission, clock: Clock, lateness: float = 0.0) -> list[float]:
    """Admit every queued ticket, moving the fake clock to each ticket's re-check time."""
    times: list[float] = []
    seen: set[int] = set()
    while admission.waiting():
        admitted, _changed = admission.pump()
        for ticket in admitted:
            assert ticket.seq not in seen
            seen.add(ticket.seq)
            times.append(clock.now)
            admission.release(ticket)
        if admission.waiting():
            head = min((t for t in admission._queue.values()), key=lambda t: t.seq)
            assert head.recheck_at is not None and head.recheck_at > clock.now
            clock.now = head.recheck_at + lateness
    return times


@pytest.mark.parametrize("lateness", [0.0, 0.002, 0.009])
def test_thousand_calls_at_fifty_per_second_measure_within_five_percent(lateness: float) -> None:
    clock = Clock()
    admission = Admission(Quota(requests_per_second=50), clock=clock)
    for _ in range(1000):
        admission.enqueue("m")
    times = drive(admission, clock, lateness)
    assert len(times) == 1000
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert 47.5 <= rate <= 52.5
    # No burst at the start: the first second admits the limit, not more.
    assert sum(1 for t in times if t < times[0] + 1.0) <= 51


def test_rate_limit_is_per_model_on_top_of_global() -> None:
    clock = Clock()
    admission = Admission(Quota(), {"slow": Quota(requests_per_second=1)}, clock=clock)
    slow = [admission.enqueue("slow") for _ in range(2)]
    fast = [admission.enqueue("fast") for _ in range(3)]
    assert admitted_now(admission) == [slow[0], *fast]
    assert slow[1].recheck_at == pytest.approx(clock.now + 0.5)  # half an interval of slack
    assert slow[1].holder() == 'limits.per_model["slow"].requests_per_second (1)'
    clock.now += 0.5
    assert admitted_now(admission) == [slow[1]]


# --- tokens per minute -----------------------------------------------------------------------------


def test_tokens_estimated_at_admission_then_corrected_by_usage_at_release() -> None:
    clock = Clock()
    admission = Admission(Quota(tokens_per_minute=1000), clock=clock)
    first = admission.enqueue("m", 600)
    second = admission.enqueue("m", 600)
    assert admitted_now(admission) == [first]
    assert second.recheck_at is None  # held by a call in flight: its release decides
    admission.release(first, 100)  # it used far less than estimated
    assert admitted_now(admission) == [second]
    third = admission.enqueue("m", 400)
    assert admitted_now(admission) == []
    clock.now += 1
    admission.release(second, 600)  # 100 + 600 counted for a minute from each end
    assert admitted_now(admission) == []
    assert third.recheck_at == pytest.approx(clock.now - 1 + 60)  # when the first 100 leave the window
    clock.now = clock.now - 1 + 60
    assert admitted_now(admission) == [third]


def test_usage_unknown_keeps_the_estimate() -> None:
    clock = Clock()
    admission = Admission(Quota(tokens_per_minute=1000), clock=clock)
    first = admission.enqueue("m", 700)
    admitted_now(admission)
    admission.release(first)  # None: the estimate stands
    second = admission.enqueue("m", 400)
    assert admitted_now(admission) == []
    assert second.recheck_at == pytest.approx(clock.now + 60)


def test_a_call_larger_than_the_whole_limit_goes_alone_in_an_empty_window() -> None:
    clock = Clock()
    admission = Admission(Quota(tokens_per_minute=1000), clock=clock)
    huge = admission.enqueue("m", 50_000)
    assert admitted_now(admission) == [huge]
    after = admission.enqueue("m", 1)
    assert admitted_now(admission) == []
    admission.release(huge, 50_000)
    clock.now += 60
    assert admitted_now(admission) == [after]


def test_estimate_is_prompt_bytes_over_four_plus_the_output_asked_for() -> None:
    body = b'{"model":"gpt-4o","max_tokens":256,"messages":[{"role":"user","content":"' + b"x" * 400 + b'"}]}'
    assert estimate_tokens(body) == len(body) // 4 + 256
    assert estimate_tokens(b'{"max_completion_tokens": 1000}') == 31 // 4 + 1000
    assert estimate_tokens(None) == 0


def test_estimate_counts_each_base64_payload_as_one_image_not_its_length() -> None:
    parts = [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 4_000_000}},
        {"type": "input_audio", "input_audio": {"data": "B" * 500_000, "format": "wav"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64," + "C" * 70_000}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "D" * 9_000}},
    ]
    for separators in ((",", ":"), (", ", ": ")):
        body = json.dumps({"messages": [{"role": "user", "content": parts}]}, separators=separators).encode()
        estimate = estimate_tokens(body)
        assert 4 * MEDIA_TOKENS <= estimate < 4 * MEDIA_TOKENS + 200


# --- the gateway's headers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("12ms", 0.012), ("1s", 1.0), ("6m0s", 360.0), ("1h2m3.5s", 3723.5), ("0.5", 0.5), ("20us", 2e-5)],
)
def test_reset_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "1x", "5s later", "nan", "inf", "-5", "-1s", "1e400", "NaNs"])
def test_reset_durations_that_do_not_parse(text: str) -> None:
    assert parse_duration(text) is None


def test_a_nodes_hold_holds_that_node_only_and_the_call_is_told_to_avoid_it() -> None:
    clock = Clock()
    admission = Admission(Quota(max_concurrent=10), nodes=("a", "b"), clock=clock)
    admission.observe("m", 429, {"retry-after": "5"}, "a")
    ticket = admission.enqueue("m")
    assert admitted_now(admission) == [ticket]
    assert ticket.avoid == {"a"}
    admission.observe("m", 429, {"retry-after": "3"}, "b")  # now every node holds: the call waits
    held = admission.enqueue("m")
    assert admitted_now(admission) == []
    assert held.recheck_at == pytest.approx(clock.now + 3)  # when the first node frees
    clock.now += 3
    assert admitted_now(admission) == [held] and held.avoid == {"a"}


def test_an_answer_of_no_known_node_holds_every_node() -> None:
    admission = Admission(Quota(max_concurrent=10), nodes=("a", "b"), clock=Clock())
    admission.observe("m", 429, {"retry-after": "5"})
    admission.enqueue("m")
    assert admitted_now(admission) == []


def test_a_budget_counts_calls_against_every_node_not_held() -> None:
    clock = Clock()
    admission = Admission(Quota(max_concurrent=10), nodes=("a", "b"), clock=clock)
    headers = {"x-ratelimit-remaining-requests": "1", "x-ratelimit-reset-requests": "10s"}
    admission.observe("m", 200, headers, "a")
    admission.observe("m", 200, headers, "b")
    first, second = admission.enqueue("m"), admission.enqueue("m")
    assert admitted_now(admission) == [first]  # one left, whichever node says it: one call
    assert second.recheck_at == pytest.approx(clock.now + 10)


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "100000"},
        {"retry-after": "1e308"},
        {"retry-after-ms": "900000000"},
        {"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"},
    ],
)
def test_a_429s_hold_has_a_ceiling(headers: dict[str, str]) -> None:
    clock = Clock()
    admission = Admission(Quota(max_concurrent=10), max_hold=60, clock=clock)
    admission.observe("m", 429, headers)
    ticket = admission.enqueue("m")
    admitted_now(admission)
    assert ticket.recheck_at == pytest.approx(clock.now + 60)


@pytest.mark.parametrize(
    ("reset", "held"),
    [
        ("1733356800", None),  # a Unix time long past: no hold
        ("1733356800000", None),  # the same in milliseconds
        ("1800000004", 4.0),  # a Unix time 4 s ahead of the wall clock
        ("1800000004000", 4.0),
        ("99999h", 60.0),  # a duration far off: the ceiling
        ("6m0s", 60.0),
        ("2.5", 2.5),
        ("1s", 1.0),
    ],
)
def test_reset_epochs_are_told_apart_from_durations(reset: str, held: float | None) -> None:
    clock = Clock()
    admission = Admission(Quota(max_concurrent=10), max_hold=60, clock=clock, wall=lambda: 1_800_000_000.0)
    admission.observe("m", 200, {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": reset})
    ticket = admission.enqueue("m")
    admitted = admitted_now(admission)
    if held is None:
        assert admitted == [ticket]
    else:
        assert admitted == [] and ticket.recheck_at == pytest.approx(clock.now + held)


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after-ms": "nan"},
        {"retry-after": "nan"},
        {"retry-after": "-inf"},
        {"retry-after": "Mon, 99 Foo 0000 99:99:99 GMT"},
        {"retry-after": "x" * 10_000},
    ],
)
def test_a_429_hint_that_is_not_a_number_is_no_hint(headers: dict[str, str]) -> None:
    clock = Clock()
    admission = Admission(Quota(max_concurrent=10), clock=clock)
    admission.observe("m", 429, headers)
    ticket = admission.enqueue("m")
    admitted_now(admission)
    assert ticket.recheck_at == pytest.approx(clock.now + NO_HINT_HOLD)


def test_a_429s_retry_after_holds_that_model_only() -> None:
    clock = Clock()
    admission = Admission(Quota(max_concurrent=10), clock=clock)
    admission.observe("gpt-4o", 429, {"retry-after": "2"})
    held = admission.enqueue("gpt-4o")
    other = admission.enqueue("claude")
    assert admitted_now(admission) == [other]
    assert held.recheck_at == pytest.approx(clock.now + 2) and held.not_before == held.recheck_at
    assert "gateway" in held.holder() and "limits.follow_gateway_headers" in held.holder()
    clock.now += 2
    assert admitted_now(admission) == [held]


def test_retry_after_ms_and_a_429_with_no_hint() -> None:
    clock = Clock()
    admission = Admission(Quota(max_concurrent=10), clock=clock)
    admission.observe(None, 429, {"retry-after-ms": "250"})
    assert admission.root.hints[None].hold_until == pytest.approx(clock.now + 0.25)
    admission.observe("m", 429, {})  # new-api sends no Retry-After
    ticket = admission.enqueue("m")
    admitted_now(admission)
    assert ticket.recheck_at == pytest.approx(clock.now + NO_HINT_HOLD)


def test_no_requests_left_holds_until_the_reset() -> None:
    clock = Clock()
    admission = Admission(Quota(max_concurrent=10), clock=clock)
    admission.observe("m", 200, {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s"})
    ticket = admission.enqueue("m")
    assert admitted_now(admission) == []
    assert ticket.recheck_at == pytest.approx(clock.now + 1)


def test_remaining_budget_refills_linearly_when_the_limit_is_known() -> None:
    clock = Clock()
    admission = Admission(Quota(max_concurrent=100), clock=clock)
    headers = {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "9s",  # one request back per second
    }
    admission.observe("m", 200, headers)
    first, second = admission.enqueue("m"), admission.enqueue("m")
    assert admitted_now(admission) == [first]
    assert second.recheck_at == pytest.approx(clock.now + 1)


def test_remaining_tokens_hold_a_call_that_would_not_fit() -> None:
    clock = Clock()
    admission = Admission(Quota(max_concurrent=100), max_hold=600, clock=clock)
    admission.observe("m", 200, {"x-ratelimit-remaining-tokens": "500", "x-ratelimit-reset-tokens": "6m0s"})
    small, big = admission.enqueue("m", 400), admission.enqueue("m", 400)
    assert admitted_now(admission) == [small]
    assert big.recheck_at == pytest.approx(clock.now + 360)


def test_anthropic_reset_is_a_date() -> None:
    clock = Clock()
    wall = 1_800_000_000.0
    admission = Admission(Quota(max_concurrent=10), clock=clock, wall=lambda: wall)
    reset = (datetime.fromtimestamp(wall, UTC) + timedelta(seconds=3)).isoformat().replace("+00:00", "Z")
    admission.observe(
        "claude", 200, {"anthropic-ratelimit-requests-remaining": "0", "anthropic-ratelimit-requests-reset": reset}
    )
    ticket = admission.enqueue("claude")
    admitted_now(admission)
    assert ticket.recheck_at == pytest.approx(clock.now + 3)


def test_gateway_headers_ignored_when_following_is_off() -> None:
    admission = Admission(Quota(max_concurrent=10), follow_gateway_headers=False, clock=Clock())
    admission.observe("m", 429, {"retry-after": "30"})
    ticket = admission.enqueue("m")
    assert admitted_now(admission) == [ticket]


def test_reset_forgets_everything_and_old_tickets_are_ignored() -> None:
    admission = Admission(Quota(max_concurrent=1), clock=Clock())
    old = admission.enqueue("m")
    admitted_now(admission)
    admission.enqueue("m")
    admission.reset()
    assert admission.waiting() == 0 and admission.root.in_flight == 0
    fresh = admission.enqueue("m")
    assert admitted_now(admission) == [fresh]
    admission.release(old)  # from before the fork: must not free the fresh call's slot
    assert admission.root.in_flight == 1


# --- the limiter: real threads and tasks in one queue --------------------------------------------


@pytest.fixture
def in_flight() -> Iterator[dict[str, int]]:
    yield {"now": 0, "most": 0, "done": 0}


def test_threads_and_tasks_share_one_pool(in_flight: dict[str, int]) -> None:
    limiter = Limiter(Quota(max_concurrent=3))
    lock = threading.Lock()

    def enter() -> None:
        with lock:
            in_flight["now"] += 1
            in_flight["most"] = max(in_flight["most"], in_flight["now"])

    def leave() -> None:
        with lock:
            in_flight["now"] -= 1
            in_flight["done"] += 1

    def thread_calls() -> None:
        for _ in range(5):
            with limiter.acquire("m", 10):
                enter()
                threading.Event().wait(0.002)
                leave()

    async def task_call() -> None:
        permit = await limiter.acquire_async("m", 10)
        enter()
        await asyncio.sleep(0.002)
        leave()
        permit.release(5)

    async def tasks() -> None:
        await asyncio.gather(*(task_call() for _ in range(20)))

    threads = [threading.Thread(target=thread_calls) for _ in range(4)]
    for thread in threads:
        thread.start()
    asyncio.run(tasks())
    for thread in threads:
        thread.join()
    assert in_flight["done"] == 4 * 5 + 20
    assert 1 <= in_flight["most"] <= 3
    assert limiter.waiting() == 0


def wait_until_queued(limiter: Limiter, count: int) -> None:
    """Synchronisation, not timing: spin until ``count`` calls are in the queue."""
    while limiter.waiting() < count:
        threading.Event().wait(0.001)


def test_sync_and_async_callers_are_served_in_arrival_order() -> None:
    limiter = Limiter(Quota(max_concurrent=1))
    gate = limiter.acquire("m")
    order: list[str] = []
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever)
    loop_thread.start()

    def sync_call(name: str) -> None:
        with limiter.acquire("m"):
            order.append(name)

    async def async_call(name: str) -> None:
        with await limiter.acquire_async("m"):
            order.append(name)

    threads, futures = [], []
    for n in range(6):
        name = f"{'thread' if n % 2 == 0 else 'task'}-{n}"
        if n % 2 == 0:
            thread = threading.Thread(target=sync_call, args=(name,))
            thread.start()
            threads.append(thread)
        else:
            futures.append(asyncio.run_coroutine_threadsafe(async_call(name), loop))
        wait_until_queued(limiter, n + 1)
    gate.release()
    for thread in threads:
        thread.join()
    for future in futures:
        future.result()
    loop.call_soon_threadsafe(loop.stop)
    loop_thread.join()
    loop.close()
    assert order == [f"{'thread' if n % 2 == 0 else 'task'}-{n}" for n in range(6)]


def test_queue_timeout_names_the_limit_its_setting_the_wait_and_the_fix() -> None:
    limiter = Limiter(Quota(), {"gpt-4o": Quota(max_concurrent=1)}, queue_timeout=0.05)
    held = limiter.acquire("gpt-4o")
    with pytest.raises(QueueTimeout) as caught:
        limiter.acquire("gpt-4o")
    error = caught.value
    message = str(error)
    assert isinstance(error, YibuError) and error.status == 429
    assert error.setting == 'limits.per_model["gpt-4o"].max_concurrent'
    assert 'limits.per_model["gpt-4o"].max_concurrent (1)' in message
    assert "'gpt-4o'" in message and "waited" in message and "limits.queue_timeout" in message
    assert "Raise" in message and "Nothing reached the gateway" in message
    assert limiter.waiting() == 0
    held.release()
    with limiter.acquire("gpt-4o", timeout=0):  # the slot is free again: no leak
        pass


async def test_async_queue_timeout_leaves_the_queue() -> None:
    limiter = Limiter(Quota(requests_per_second=0.001), queue_timeout=0.02)
    first = await limiter.acquire_async("m")
    with pytest.raises(QueueTimeout) as caught:
        await limiter.acquire_async("m")
    # The rate schedule alone says it cannot go in time: it fails without waiting the timeout out.
    assert "limits.requests_per_second (0.001)" in str(caught.value)
    assert "at least" in str(caught.value)
    first.release()
    assert limiter.waiting() == 0


async def test_cancelled_waiter_frees_its_ticket() -> None:
    limiter = Limiter(Quota(max_concurrent=1))
    held = await limiter.acquire_async("m")
    waiter = asyncio.create_task(limiter.acquire_async("m"))
    while limiter.waiting() < 1:
        await asyncio.sleep(0)
    behind = asyncio.create_task(limiter.acquire_async("m"))
    while limiter.waiting() < 2:
        await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.waiting() == 1
    held.release()
    permit = await behind  # the cancelled one neither holds the queue nor a slot
    permit.release()
    assert limiter.waiting() == 0


def test_release_is_idempotent() -> None:
    limiter = Limiter(Quota(max_concurrent=1))
    permit = limiter.acquire("m")
    permit.release()
    permit.release()
    second = limiter.acquire("m", timeout=0)
    with pytest.raises(QueueTimeout):
        limiter.acquire("m", timeout=0)  # releasing twice did not free a second slot
    second.release()


def test_a_gateway_hold_longer_than_the_queue_timeout_fails_at_once() -> None:
    clock = Clock()
    limiter = Limiter(Quota(max_concurrent=5), queue_timeout=30, clock=clock)
    limiter.observe("gpt-4o", 429, {"retry-after": "50"})
    with pytest.raises(QueueTimeout) as caught:
        limiter.acquire("gpt-4o")  # on a fake clock: returns only because it does not wait
    message = str(caught.value)
    assert caught.value.setting == "limits.follow_gateway_headers"
    assert "at least 50.0 s" in message and "gateway" in message and "max_hold_seconds" in message
    with limiter.acquire("claude"):
        pass


def test_reset_after_fork_gives_a_fresh_queue() -> None:
    limiter = Limiter(Quota(max_concurrent=1))
    old = limiter.acquire("m")
    limiter.reset()
    fresh = limiter.acquire("m", timeout=0)
    old.release()  # a permit from before the fork changes nothing
    with pytest.raises(QueueTimeout):
        limiter.acquire("m", timeout=0)
    fresh.release()


# --- settings ----------------------------------------------------------------------------------------


def test_no_limit_set_means_no_limiter() -> None:
    settings = load_settings()
    assert not settings.limits.active
    assert Limiter.from_settings(settings.limits) is None


def test_limits_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIBU_LIMITS__MAX_CONCURRENT", "8")
    monkeypatch.setenv("YIBU_LIMITS__QUEUE_TIMEOUT", "5")
    monkeypatch.setenv("YIBU_LIMITS__PER_MODEL", '{"gpt-4o": {"requests_per_second": 2.5}}')
    limits = load_settings().limits
    assert limits.max_concurrent == 8 and limits.queue_timeout == 5
    assert limits.per_model["gpt-4o"].requests_per_second == 2.5
    limiter = Limiter.from_settings(limits)
    assert limiter is not None and limiter.queue_timeout == 5


def test_per_model_limits_in_the_file(tmp_path: Path) -> None:
    (tmp_path / "yibu.toml").write_text('[limits.per_model."claude-opus-4"]\ntokens_per_minute = 40000\n')
    limits = load_settings().limits
    assert limits.active and limits.per_model["claude-opus-4"].tokens_per_minute == 40000


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("YIBU_LIMITS__MAX_CONCURRENT", "0", "limits.max_concurrent"),
        ("YIBU_LIMITS__REQUESTS_PER_SECOND", "-1", "limits.requests_per_second"),
        ("YIBU_LIMITS__PER_MODEL", "{gpt-4o: 1}", "JSON object of model = limits"),
        ("YIBU_LIMITS__PER_MODEL", '{"gpt-4o": {"max_concurent": 1}}', "unknown setting"),
    ],
)
def test_bad_limits_are_reported_with_their_source(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert expected in str(caught.value) and name in str(caught.value)


def test_spent_holds_are_forgotten() -> None:
    clock = Clock()
    admission = Admission(Quota(max_concurrent=10), nodes=("a", "b"), clock=clock)
    admission.observe("m", 429, {"retry-after": "1"}, "a")
    admission.observe("m", 200, {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"}, "b")
    clock.now += 2
    ticket = admission.enqueue("m")
    assert admitted_now(admission) == [ticket] and ticket.avoid == frozenset()
    assert all(not scope.hints for scope in ticket.scopes)
