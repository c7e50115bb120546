"""Resilience decisions with no sockets: node choice, ejection, retry rules, budget, streams.

A fake clock and seeded random sources make every decision repeatable.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from yibu_middleware.core.nodes import DEFAULT_ESTIMATE, Node, NodePool
from yibu_middleware.core.plan import CallPlan, Deliver, GiveUp, RetryPolicy, Send
from yibu_middleware.core.retry import Kind, RetryBudget, classify_status, full_jitter, gateway_code, retry_after
from yibu_middleware.core.sse import StreamWatch


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


URLS = [f"http://127.0.0.1:{9000 + n}/v1" for n in range(3)]


def make_pool(clock: Clock, **options: object) -> NodePool:
    return NodePool(URLS, clock=clock, rng=random.Random(7), **options)  # type: ignore[arg-type]


def serve(pool: NodePool, node: Node, seconds: float, ok: bool | None = True) -> None:
    pool.finished(node, seconds, ok)


def test_slow_node_gets_little_traffic_without_herding() -> None:
    clock = Clock()
    pool = make_pool(clock)
    a, b, c = pool.nodes
    for node, seconds in ((a, 0.01), (b, 0.01), (c, 0.10)):
        assert pool.choose(exclude=[other for other in pool.nodes if other is not node]) is node
        serve(pool, node, seconds)
    counts = {a: 0, b: 0, c: 0}
    for _ in range(300):
        node = pool.choose()
        assert node is not None
        counts[node] += 1
        clock.now += 0.01
        serve(pool, node, 0.10 if node is c else 0.01)
    assert counts[c] < 15  # the 10x slower node: rarely
    assert min(counts[a], counts[b]) > 100  # and no herding onto one fast node


def test_two_choices_are_two_different_nodes_drawn_evenly() -> None:
    clock = Clock()
    pool = make_pool(clock)
    a, b, c = pool.nodes
    for node, seconds in ((a, 0.01), (b, 0.01), (c, 5.0)):
        assert pool.choose(exclude=[other for other in pool.nodes if other is not node]) is node
        serve(pool, node, seconds)
    counts = {a: 0, b: 0, c: 0}
    for _ in range(3000):
        node = pool.choose()
        assert node is not None
        counts[node] += 1
        serve(pool, node, 0.01)
    # c is never chosen: it is always drawn against a faster node, never against itself.
    assert counts[c] == 0
    # a and b tie on cost, so the first drawn wins: each is drawn first about half the time.
    assert 1300 < counts[a] < 1700


def test_in_flight_load_spreads_concurrent_calls() -> None:
    pool = make_pool(Clock())
    chosen = [pool.choose() for _ in range(30)]  # none finished yet
    assert all(20 >= chosen.count(node) >= 5 for node in pool.nodes)


def test_estimate_jumps_up_at_once_and_decays_slowly() -> None:
    clock = Clock()
    pool = make_pool(clock)
    node = pool.nodes[0]
    serve(pool, pool.choose(exclude=pool.nodes[1:]) or node, 0.01)
    assert node.estimate == pytest.approx(0.01)
    clock.now += 1
    serve(pool, pool.choose(exclude=pool.nodes[1:]) or node, 0.5)
    assert node.estimate == pytest.approx(0.5)  # peak: a slower sample counts in full
    clock.now += 1
    serve(pool, pool.choose(exclude=pool.nodes[1:]) or node, 0.01)
    assert 0.4 < (node.estimate or 0) < 0.5  # a faster one only pulls it down by exp(-1/10)


def test_calls_still_out_count_as_evidence_of_slowness() -> None:
    clock = Clock()
    pool = make_pool(clock)
    node = pool.nodes[0]
    assert pool.choose(exclude=pool.nodes[1:]) is node  # unsampled, one call out
    clock.now += 0.4
    assert pool._decayed(node, clock.now) == pytest.approx(0.4)  # not the 0.05 start any more
    serve(pool, node, 0.4)
    assert node.in_flight == 0 and node.pending_since == 0.0


def test_unsampled_node_starts_at_the_pools_mean() -> None:
    clock = Clock()
    pool = make_pool(clock)
    a, b, c = pool.nodes
    assert pool._decayed(c, clock.now) == DEFAULT_ESTIMATE
    a.estimate, b.estimate = 0.2, 0.4
    a.stamp = b.stamp = clock.now
    assert pool._decayed(c, clock.now) == pytest.approx(0.3)


def test_weights_shift_traffic() -> None:
    clock = Clock()
    pool = make_pool(clock, weights={URLS[0]: 4.0})
    counts = dict.fromkeys(pool.nodes, 0)
    for _ in range(300):
        node = pool.choose()
        assert node is not None
        counts[node] += 1
        clock.now += 0.01
        serve(pool, node, 0.02)
    assert counts[pool.nodes[0]] > counts[pool.nodes[1]] + counts[pool.nodes[2]]


def test_pinned_node_takes_everything_while_healthy_then_others_take_over() -> None:
    clock = Clock()
    pool = make_pool(clock, pin=URLS[1])
    pinned = pool.nodes[1]
    for _ in range(20):
        node = pool.choose()
        assert node is pinned
        serve(pool, node, 0.5)  # even when slower than the others would be
    for _ in range(5):
        node = pool.choose()
        assert node is pinned
        serve(pool, node, 0.01, ok=False)
    assert pool.choose() is not pinned  # ejected: the fallbacks serve


def test_consecutive_failures_eject_with_growing_time_and_one_trial() -> None:
    clock = Clock()
    pool = make_pool(clock, eject_after=5, eject_base=30.0, eject_max=300.0)
    bad = pool.nodes[0]
    for _ in range(4):
        serve(pool, bad, 0.01, ok=False)
    assert bad not in pool.ejected()
    serve(pool, bad, 0.01, ok=False)
    assert bad in pool.ejected()
    first_span = bad.ejected_until - clock.now
    assert 24 <= first_span <= 36  # 30 s +-20 %
    for _ in range(50):
        node = pool.choose()
        assert node is not bad
        serve(pool, node, 0.01)
    clock.now = bad.ejected_until + 0.1
    trial = pool.choose(exclude=pool.nodes[1:])
    assert trial is bad and bad.trial_in_flight
    assert pool.choose(exclude=pool.nodes[1:]) is bad  # only in panic: the trial holds the healthy slot
    serve(pool, bad, 0.01, ok=False)  # the trial fails: out again, for longer
    assert 48 <= bad.ejected_until - clock.now <= 72
    clock.now = bad.ejected_until + 0.1
    pool.choose(exclude=pool.nodes[1:])
    serve(pool, bad, 0.01, ok=True)  # a good trial: back
    assert bad not in pool.ejected() and bad.ejected_until == 0.0


def test_ejection_time_is_capped() -> None:
    clock = Clock()
    pool = make_pool(clock, eject_after=1, eject_base=100.0, eject_max=150.0)
    node = pool.nodes[0]
    for _ in range(5):
        serve(pool, node, None, ok=False)
    assert node.ejected_until - clock.now <= 150 * 1.2


def test_every_node_out_still_answers_panic_mode() -> None:
    clock = Clock()
    pool = make_pool(clock, eject_after=1)
    for node in pool.nodes:
        serve(pool, node, None, ok=False)
    assert len(pool.ejected()) == 3
    assert pool.choose() in pool.nodes


def test_reset_forgets_everything() -> None:
    clock = Clock()
    pool = make_pool(clock, eject_after=1)
    serve(pool, pool.nodes[0], 0.3, ok=False)
    pool.reset()
    assert pool.ejected() == [] and all(node.estimate is None and node.sent == 0 for node in pool.nodes)


# --- failure classes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (200, None, None),
        (503, b'{"error": {"message": "busy"}}', Kind.NODE_FAILED),
        (500, None, Kind.NODE_FAILED),
        (502, None, Kind.NODE_FAILED),
        (504, None, Kind.NODE_FAILED),
        (529, b'{"type": "error", "error": {"type": "overloaded_error"}}', Kind.NODE_FAILED),
        (429, None, Kind.RATE_LIMITED),
        (400, None, Kind.FINAL),
        (401, None, Kind.FINAL),
        (403, b'{"error": {"code": "insufficient_user_quota"}}', Kind.FINAL),
        (404, None, Kind.FINAL),
        (413, None, Kind.FINAL),
        (422, None, Kind.FINAL),
        (503, b'{"error": {"message": "no channel", "type": "new_api_error", "code": "model_not_found"}}', Kind.FINAL),
        (429, b'{"error": {"code": "insufficient_quota"}}', Kind.FINAL),
    ],
)
def test_classify_status(status: int, body: bytes | None, kind: Kind | None) -> None:
    assert classify_status(status, body) is kind


def test_gateway_code_reads_both_formats() -> None:
    assert gateway_code(b'{"error": {"type": "x", "code": "access_denied"}}') == "access_denied"
    assert gateway_code(b'{"type": "error", "error": {"type": "budget_exceeded"}}') == "budget_exceeded"
    assert gateway_code(b"<html>") is None and gateway_code(None) is None


def test_retry_after_forms() -> None:
    assert retry_after({"retry-after-ms": "250"}) == 0.25
    assert retry_after({"retry-after": "3"}) == 3.0
    assert retry_after({"retry-after-ms": "x", "retry-after": "2"}) == 2.0
    now = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert retry_after({"retry-after": later}, now=now.timestamp()) == pytest.approx(30)
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None


def test_full_jitter_stays_under_the_cap() -> None:
    rng = random.Random(1)
    waits = [full_jitter(attempt, 0.1, 2.0, rng) for attempt in range(10) for _ in range(50)]
    assert all(0 <= wait <= 2.0 for wait in waits) and max(waits) > 1.0


def test_budget_allows_a_share_of_requests_with_a_floor() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.2, floor=3, window=10, clock=clock)
    assert [budget.try_spend() for _ in range(4)] == [True, True, True, False]  # the floor
    for _ in range(100):
        budget.record_request()
    assert sum(budget.try_spend() for _ in range(30)) == 17  # 20 % of 100, 3 already spent
    clock.now += 11  # the window slides past all of it
    assert budget.try_spend()


# --- the call plan -------------------------------------------------------------------------------


def make_plan(
    clock: Clock,
    pool: NodePool | None = None,
    *,
    replayable: bool = True,
    timeout: float | None = 30.0,
    policy: RetryPolicy | None = None,
    budget: RetryBudget | None = None,
) -> tuple[CallPlan, NodePool]:
    pool = pool or make_pool(clock)
    plan = CallPlan(
        pool,
        budget or RetryBudget(clock=clock),
        policy or RetryPolicy(),
        replayable=replayable,
        timeout=timeout,
        clock=clock,
        rng=random.Random(3),
    )
    return plan, pool


def test_refused_goes_to_an_untried_node_at_once_without_budget() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.0, floor=0, clock=clock)  # no retries affordable at all
    plan, _ = make_plan(clock, budget=budget)
    first = plan.start()
    assert isinstance(first, Send)
    second = plan.failed(first, Kind.NOT_SENT, "refused")
    assert isinstance(second, Send) and second.node is not first.node and second.delay == 0


def test_5xx_goes_to_another_node_then_backs_off_when_all_were_tried() -> None:
    clock = Clock()
    plan, _pool = make_plan(clock, policy=RetryPolicy(max_attempts=5))
    seen = []
    action = plan.start()
    delays = []
    while isinstance(action, Send) and len(seen) < 4:
        seen.append(action.node)
        delays.append(action.delay)
        action = plan.answered(action, 503, {}, b"{}")
    assert len(set(seen[:3])) == 3 and delays[:3] == [0, 0, 0]
    assert 0 < delays[3] <= 2.0  # every node tried: now a jittered pause


def test_final_statuses_are_delivered_marked_final() -> None:
    plan, _ = make_plan(Clock())
    action = plan.start()
    assert isinstance(action, Send)
    assert plan.answered(action, 401, {}, b"{}") == Deliver(action.node, final=True)


def test_success_is_delivered() -> None:
    plan, _ = make_plan(Clock())
    action = plan.start()
    assert isinstance(action, Send)
    assert plan.answered(action, 200, {}, None) == Deliver(action.node, final=False)


def test_429_prefers_another_node_and_then_honours_retry_after() -> None:
    clock = Clock()
    plan, _ = make_plan(clock, policy=RetryPolicy(max_attempts=4))
    action = plan.start()
    delays = []
    while isinstance(action, Send) and len(delays) < 4:
        delays.append(action.delay)
        action = plan.answered(action, 429, {"retry-after": "1.5"}, None)
    assert delays == [0, 0, 0, 1.5]
    assert action == Deliver(action.node, final=True)  # type: ignore[union-attr]


def test_429_asking_too_long_is_handed_back() -> None:
    plan, _ = make_plan(Clock(), pool=NodePool(URLS[:1]), policy=RetryPolicy(max_retry_after=10))
    action = plan.start()
    assert isinstance(action, Send)
    result = plan.answered(action, 429, {"retry-after": "60"}, None)
    assert isinstance(result, Deliver) and result.final


def test_max_attempts_and_summary() -> None:
    plan, _pool = make_plan(Clock(), policy=RetryPolicy(max_attempts=2))
    action = plan.start()
    assert isinstance(action, Send)
    action = plan.failed(action, Kind.NODE_FAILED, "read timeout")
    assert isinstance(action, Send)
    result = plan.failed(action, Kind.NODE_FAILED, "read timeout")
    assert isinstance(result, GiveUp) and "max_attempts (2)" in result.reason
    assert plan.summary().count("node failed: read timeout") == 2


def test_deadline_stops_waiting() -> None:
    clock = Clock()
    plan, _ = make_plan(clock, pool=NodePool(URLS[:1], clock=clock), timeout=1.0, policy=RetryPolicy(max_attempts=5))
    action = plan.start()
    assert isinstance(action, Send)
    clock.now += 0.9
    result = plan.answered(action, 429, {"retry-after": "0.5"}, None)
    assert isinstance(result, Deliver) and result.final  # 0.5 s would pass the 0.1 s left
    assert plan.timeout_left() == pytest.approx(0.1)


def test_budget_spent_means_no_retry() -> None:
    clock = Clock()
    plan, _ = make_plan(clock, budget=RetryBudget(ratio=0.0, floor=0, clock=clock))
    action = plan.start()
    assert isinstance(action, Send)
    result = plan.failed(action, Kind.NODE_FAILED, "reset")
    assert isinstance(result, GiveUp) and "budget" in result.reason


def test_one_shot_body_is_never_replayed_and_says_why() -> None:
    plan, _ = make_plan(Clock(), replayable=False)
    action = plan.start()
    assert isinstance(action, Send)
    result = plan.failed(action, Kind.NODE_FAILED, "reset")
    assert isinstance(result, GiveUp) and "one-shot stream" in result.reason


def test_one_shot_body_refused_at_connect_goes_to_another_node() -> None:
    """Nothing was sent: the body was never read, so it is still whole."""
    plan, _ = make_plan(Clock(), replayable=False)
    action = plan.start()
    assert isinstance(action, Send)
    result = plan.failed(action, Kind.NOT_SENT, "refused")
    assert isinstance(result, Send) and result.node != action.node


def test_in_flight_slots_are_released_whatever_happens() -> None:
    clock = Clock()
    plan, pool = make_plan(clock, budget=RetryBudget(ratio=0.0, floor=0, clock=clock))
    action = plan.start()
    assert isinstance(action, Send)
    plan.failed(action, Kind.NODE_FAILED, "x")  # gives up on the budget after choosing
    assert all(node.in_flight == 0 for node in pool.nodes)


# --- streams ---------------------------------------------------------------------------------------


def feed(watch: StreamWatch, *events: str, split: int = 7) -> StreamWatch:
    raw = "".join(events).encode()
    for start in range(0, len(raw), split):  # awkward chunk boundaries on purpose
        watch.feed(raw[start : start + split])
    return watch


ROLE = 'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}\n\n'
WORD = 'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}\n\n'
DONE = "data: [DONE]\n\n"


def test_openai_chat_commits_at_first_content_and_ends_at_done() -> None:
    watch = feed(StreamWatch(), ROLE)
    assert not watch.committed
    feed(watch, WORD)
    assert watch.committed and not watch.ended
    assert watch.truncated()
    feed(watch, DONE)
    assert watch.ended and not watch.truncated()


def test_openai_in_band_error_before_content() -> None:
    error = 'data: {"error": {"message": "upstream busy", "type": "server_error"}}\n\n'
    watch = feed(StreamWatch(), ROLE, error)
    assert watch.error and "upstream busy" in watch.error and not watch.committed


def test_usage_only_chunk_and_crlf() -> None:
    watch = feed(
        StreamWatch(), ROLE.replace("\n\n", "\r\n\r\n"), 'data: {"choices": [], "usage": {"total_tokens": 3}}\r\n\r\n'
    )
    assert watch.committed


ANTHROPIC = [
    'event: message_start\ndata: {"type": "message_start", "message": {}}\n\n',
    'event: content_block_start\ndata: {"type": "content_block_start"}\n\n',
    "event: ping\ndata: {}\n\n",
    'event: content_block_delta\ndata: {"type": "content_block_delta", "delta": {"text": "Hi"}}\n\n',
    'event: message_stop\ndata: {"type": "message_stop"}\n\n',
]


def test_anthropic_commit_point_and_final_event() -> None:
    watch = feed(StreamWatch(), *ANTHROPIC[:3])
    assert not watch.committed  # message_start, content_block_start and ping carry no content
    feed(watch, ANTHROPIC[3])
    assert watch.committed and watch.truncated()
    feed(watch, ANTHROPIC[4])
    assert watch.ended


def test_anthropic_overloaded_event_before_content() -> None:
    overloaded = (
        'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n'
    )
    watch = feed(StreamWatch(), ANTHROPIC[0], overloaded)
    assert watch.error == "overloaded_error: Overloaded" and not watch.committed


def test_responses_api_events() -> None:
    watch = feed(StreamWatch(), "event: response.created\ndata: {}\n\n")
    assert not watch.committed
    feed(watch, 'event: response.output_text.delta\ndata: {"delta": "Hi"}\n\n')
    assert watch.committed and watch.truncated()
    feed(watch, "event: response.completed\ndata: {}\n\n")
    assert watch.ended
    failed = feed(StreamWatch(), 'event: error\ndata: {"error": {"type": "server_error", "message": "x"}}\n\n')
    assert failed.error


def test_unknown_stream_is_not_judged() -> None:
    watch = feed(StreamWatch(), "data: hello\n\n")
    assert watch.committed and not watch.truncated()


def test_comments_and_empty_events_carry_nothing() -> None:
    """Keep-alives (comment lines, blank events) neither commit a stream nor fail it."""
    watch = feed(StreamWatch(), ": keep-alive\n\n", "\n\n\n", ":\r\n\r\n", "event: \n\n")
    assert not watch.committed and watch.error is None
    feed(watch, WORD)
    assert watch.committed


def big_event(size: int) -> list[bytes]:
    """One event of ``size`` bytes of data, in 16 KiB chunks, then a chat chunk with content."""
    body = b'data: {"choices": [{"index": 0, "delta": {"content": "' + b"a" * size + b'"}}]}\n\n'
    return [body[at : at + 16 * 1024] for at in range(0, len(body), 16 * 1024)]


@pytest.mark.parametrize("crlf", [False, True])
def test_a_large_event_in_small_chunks_is_scanned_once(crlf: bool) -> None:
    """Linear, not quadratic: each byte of a 16 MB event is looked at about once (the old
    parser joined and rescanned everything held on every chunk: 8 s of CPU for this one)."""
    chunks = big_event(16 * 1024 * 1024)
    if crlf:
        chunks = [chunk.replace(b"\n", b"\r\n") for chunk in chunks]
    watch = StreamWatch()
    for chunk in chunks:
        watch.feed(chunk)
    total = sum(len(chunk) for chunk in chunks)
    assert watch.committed
    assert watch.scanned <= total + 4 * len(chunks)


def test_an_event_split_anywhere_is_read_the_same() -> None:
    """The end of an event split between two chunks (\n|\n, \r|\n\r\n) is still found."""
    text = (ROLE + WORD + DONE).encode()
    for crlf in (False, True):
        data = text.replace(b"\n", b"\r\n") if crlf else text
        for cut in range(1, len(data)):
            watch = StreamWatch()
            watch.feed(data[:cut])
            watch.feed(data[cut:])
            assert watch.committed and watch.ended and watch.events == 3, (crlf, cut)


def test_the_response_reader_reads_a_large_event_in_linear_time() -> None:
    from yibu_middleware.core.genai import ResponseReader

    reader = ResponseReader()
    reader.sse = True
    chunks = big_event(16 * 1024 * 1024)
    usage = b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}\n\n'
    for chunk in [*chunks, usage]:
        reader.chunk(chunk)
    assert reader.total_tokens() == 7
    assert reader.scanned <= sum(map(len, chunks)) + len(usage) + 4 * (len(chunks) + 1)


def test_429_with_a_long_wait_still_goes_to_an_untried_node() -> None:
    plan, _ = make_plan(Clock(), policy=RetryPolicy(max_retry_after=10))
    action = plan.start()
    assert isinstance(action, Send)
    following = plan.answered(action, 429, {"retry-after": "60"}, None)
    assert isinstance(following, Send) and following.node is not action.node and following.delay == 0


def test_release_all_frees_every_slot_and_start_time() -> None:
    clock = Clock()
    plan, pool = make_plan(clock)
    first = plan.start()
    assert isinstance(first, Send)
    clock.now += 5
    plan.release_all()
    assert all(node.in_flight == 0 and node.pending_since == 0.0 for node in pool.nodes)


def test_abandoned_attempt_does_not_skew_the_other_attempts_age() -> None:
    clock = Clock()
    pool = make_pool(clock)
    plan, _ = make_plan(clock, pool=pool, policy=RetryPolicy())
    first = plan.start()
    assert isinstance(first, Send)
    clock.now += 1
    second = plan._send(first.node, 0.0, "hedge")  # a second attempt on the same node
    pool.choose(exclude=[n for n in pool.nodes if n is not first.node])
    clock.now += 4
    plan.abandoned(first)
    assert pool._decayed(first.node, clock.now) == pytest.approx(4.0)  # the remaining one is 4 s old
    assert second.attempt != first.attempt


def test_a_hedge_never_goes_to_a_node_the_gateway_is_holding() -> None:
    """A node held by its own 429 or rate-limit budget (the plan's ``avoid``) is as useless to a
    hedge as to a first attempt: the hedge goes to the one node neither sent to nor held."""
    from yibu_middleware.core.plan import Hedging

    clock = Clock()
    pool = make_pool(clock)
    hedging = Hedging(RetryBudget(ratio=1.0, floor=1000, clock=clock), min_samples=1)
    for _ in range(50):
        plan = CallPlan(pool, RetryBudget(clock=clock), RetryPolicy(), replayable=True, timeout=30.0, hedging=hedging)
        primary = plan.start()
        assert isinstance(primary, Send)
        held = next(node for node in pool.nodes if node is not primary.node)
        plan.avoid = frozenset({held})
        hedge = plan.hedge(primary)
        assert hedge is not None and hedge.node not in (primary.node, held)
        plan.release_all()
