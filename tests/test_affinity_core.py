"""Context affinity's decisions, without a network: the key, the ring, the bounded load, the pool's choice."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from yibu_middleware.core.affinity import (
    CONVERSATION,
    HEAD_BYTES,
    METADATA_USER_ID,
    PREFIX,
    PREVIOUS_RESPONSE_ID,
    PROMPT_CACHE_KEY,
    USER,
    Remembered,
    Ring,
    affinity_key,
    capacity,
    pick,
    place,
    slow_nodes,
    with_prompt_cache_key,
)
from yibu_middleware.core.nodes import NodePool

SYSTEM = {"role": "system", "content": "You are a terse assistant."}
URLS = ["http://10.0.0.1/v1", "http://10.0.0.2/v1", "http://10.0.0.3/v1"]


def chat(messages: list[dict[str, str]], **fields: object) -> bytes:
    """A body as the openai SDK writes it: messages first, then the model, then the rest."""
    return json.dumps({"messages": messages, "model": "gpt-5.2", **fields}).encode()


def turns(first: str, count: int) -> list[list[dict[str, str]]]:
    """The message lists of a conversation's turns, each holding the whole history before it."""
    history = [SYSTEM, {"role": "user", "content": first}]
    out = [list(history)]
    for turn in range(1, count):
        history += [{"role": "assistant", "content": f"answer {turn}"}, {"role": "user", "content": f"question {turn}"}]
        out.append(list(history))
    return out


def key_of(body: bytes, path: str = "/chat/completions", model: str = "gpt-5.2"):  # type: ignore[no-untyped-def]
    key = affinity_key(path, body, model)
    assert key is not None
    return key


# --- the key ------------------------------------------------------------------------------------


def test_every_turn_of_a_conversation_has_the_same_key_and_conversations_differ() -> None:
    first = {key_of(chat(messages)) for messages in turns("plan a trip to Lisbon", 8)}
    second = {key_of(chat(messages)) for messages in turns("explain monads", 8)}
    assert len(first) == 1 and len(second) == 1 and first != second
    assert next(iter(first)).source == PREFIX


def test_the_model_is_part_of_the_prefix_key() -> None:
    body = chat(turns("hello", 1)[0])
    assert key_of(body, model="gpt-5.2").point != key_of(body, model="gpt-4o-mini").point


def test_explicit_fields_come_first_in_order() -> None:
    messages = turns("hello", 3)[-1]
    assert key_of(chat(messages, prompt_cache_key="k1", user="u1")).source == PROMPT_CACHE_KEY
    assert key_of(chat(messages, user="u1")).source == USER
    anthropic = json.dumps({"max_tokens": 10, "messages": messages[1:], "metadata": {"user_id": "u9"}}).encode()
    assert key_of(anthropic, "/messages").source == METADATA_USER_ID
    # The same user gives the same key whatever the conversation; another user another key.
    assert key_of(chat(turns("a", 1)[0], user="u1")) == key_of(chat(turns("b", 4)[-1], user="u1"))
    assert key_of(chat(messages, user="u1")).point != key_of(chat(messages, user="u2")).point


def test_a_field_after_a_large_conversation_is_found_in_the_tail() -> None:
    big = turns("hello", 1)[0] + [{"role": "user", "content": "x" * 4000} for _ in range(100)]
    body = chat(big, prompt_cache_key="conversation-17", user="someone")
    assert len(body) > 400_000
    key = key_of(body)
    assert key.source == PROMPT_CACHE_KEY and key.has_cache_key
    assert key.point == key_of(chat(turns("other", 1)[0], prompt_cache_key="conversation-17")).point


def test_text_that_looks_like_a_field_is_not_one() -> None:
    """A role "user" is no user field, and a quoted field inside a message's text is text."""
    fake = 'please set \\"user\\": \\"mallory\\" and "prompt_cache_key": "x"'
    messages = [SYSTEM, {"role": "user", "content": fake}]
    filler = [{"role": "user", "content": "y" * 2000} for _ in range(20)]
    for body in (chat(messages), chat(messages + filler), chat(filler + messages)):
        key = key_of(body)
        assert key.source == PREFIX and not key.has_cache_key


def test_only_the_head_of_a_long_first_message_counts() -> None:
    """A first message longer than the head window: what the window holds is the key, and a later
    turn (same start) still has it."""
    long_first = [SYSTEM, {"role": "user", "content": "z" * (3 * HEAD_BYTES)}]
    later = [*long_first, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "more"}]
    assert key_of(chat(long_first)) == key_of(chat(later))


def test_responses_fields() -> None:
    body = json.dumps({"input": "next question", "model": "gpt-5.2", "previous_response_id": "resp_1"}).encode()
    key = key_of(body, "/responses")
    assert key.follow == "resp_1" and key.source == PREFIX  # the input is keyed; the id is followed
    conversation = json.dumps({"conversation": {"id": "conv_9"}, "input": "hi", "model": "gpt-5.2"}).encode()
    key = key_of(conversation, "/responses")
    assert (key.source, key.follow) == (CONVERSATION, "conv_9")
    only_id = json.dumps({"previous_response_id": "resp_2", "model": "gpt-5.2"}).encode()
    assert key_of(only_id, "/responses").source == PREVIOUS_RESPONSE_ID


def test_no_key_for_other_calls_or_bodies() -> None:
    body = chat(turns("hello", 1)[0])
    assert affinity_key("/embeddings", body, "gpt-5.2") is None
    assert affinity_key("/chat/completions", None, "gpt-5.2") is None
    assert affinity_key("/chat/completions", b"not json", "gpt-5.2") is None
    assert affinity_key("/chat/completions", b"{}", "gpt-5.2") is None
    assert affinity_key("/chat/completions", b'{"messages": [', "gpt-5.2") is None


def test_the_key_is_the_same_in_another_process() -> None:
    """No Python hash(): another interpreter, with another hash seed, agrees on keys and on the ring."""
    body = chat(turns("hello", 2)[-1])
    script = (
        "import sys; from yibu_middleware.core.affinity import affinity_key, Ring;"
        f"k = affinity_key('/chat/completions', {body!r}, 'gpt-5.2');"
        f"r = Ring({URLS!r}, {URLS!r}, [1.0, 1.0, 1.0]);"
        "print(k.point, r.order(k.point)[0], r.order(12345)[0])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True).stdout
    key = key_of(body)
    ring = Ring(URLS, URLS, [1.0, 1.0, 1.0])
    assert out.split() == [str(key.point), ring.order(key.point)[0], ring.order(12345)[0]]


def test_prompt_cache_key_is_added_first_and_the_body_stays_json() -> None:
    body = b'  { "messages": [], "model": "m"}'
    added = with_prompt_cache_key(body, "yibu-00ff")
    assert json.loads(added) == {"prompt_cache_key": "yibu-00ff", "messages": [], "model": "m"}
    assert json.loads(with_prompt_cache_key(b"{}", "k")) == {"prompt_cache_key": "k"}


# --- the ring -----------------------------------------------------------------------------------

POINTS = [(i * 0x9E3779B97F4A7C15) % 2**64 for i in range(20_000)]  # spread over the ring


def owners(ring: Ring[str]) -> list[str]:
    return [ring.order(point)[0] for point in POINTS]


def test_each_node_owns_about_its_share() -> None:
    ring = Ring(URLS, URLS, [1.0, 1.0, 1.0])
    counts = {url: owners(ring).count(url) for url in URLS}
    assert all(0.2 < count / len(POINTS) < 0.47 for count in counts.values()), counts


def test_adding_a_node_moves_only_its_share() -> None:
    before = owners(Ring(URLS, URLS, [1.0] * 3))
    more = [*URLS, "http://10.0.0.4/v1"]
    after = owners(Ring(more, more, [1.0] * 4))
    moved = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert all(new == "http://10.0.0.4/v1" for _, new in moved)  # only to the new node
    assert 0.12 < len(moved) / len(POINTS) < 0.4  # about a quarter


def test_removing_a_node_moves_only_its_keys() -> None:
    before = owners(Ring(URLS, URLS, [1.0] * 3))
    fewer = URLS[:2]
    after = owners(Ring(fewer, fewer, [1.0] * 2))
    for old, new in zip(before, after, strict=True):
        assert old == new or old == URLS[2]


def test_order_lists_every_node_once() -> None:
    ring = Ring(URLS, URLS, [1.0, 2.0, 1.0])
    for point in POINTS[:200]:
        assert sorted(ring.order(point)) == sorted(URLS)


# --- bounded loads -------------------------------------------------------------------------------


def test_capacity_is_the_papers_bound() -> None:
    assert capacity(1.25, 11, 1.0, 3.0) == math.ceil(1.25 * 12 / 3)
    assert capacity(1.25, 0, 1.0, 3.0) == 1  # the first call always fits somewhere


def test_a_hot_key_never_puts_more_than_the_bound_on_a_node() -> None:
    """Every call of one conversation at once: each node stays within ceil(c (m+1) / n)."""
    loads = dict.fromkeys(URLS, 0)
    weights = dict.fromkeys(URLS, 1.0)
    order = URLS
    for placed in range(300):
        node = pick(order, URLS, loads, weights, (), 1.25)
        assert node is not None
        loads[node] += 1
        bound = math.ceil(1.25 * (placed + 1) / 3)
        assert max(loads.values()) <= bound


def test_pick_passes_over_slow_and_ineligible_nodes() -> None:
    loads = dict.fromkeys(URLS, 0)
    weights = dict.fromkeys(URLS, 1.0)
    assert pick(URLS, URLS, loads, weights, (), 1.25) == URLS[0]
    assert pick(URLS, URLS[1:], loads, weights, (), 1.25) == URLS[1]
    assert pick(URLS, URLS, loads, weights, {URLS[0]}, 1.25) == URLS[1]
    assert pick(URLS, URLS, loads, weights, set(URLS), 1.25) is None


def test_slow_is_well_over_the_median() -> None:
    assert slow_nodes({"a": 0.1, "b": 0.12, "c": 0.5}, 3.0) == {"c"}
    assert slow_nodes({"a": 0.1, "b": 0.12, "c": 0.25}, 3.0) == set()
    assert slow_nodes({"a": 5.0}, 3.0) == set()
    assert slow_nodes({"a": 0.1, "b": 1.0}, 3.0) == {"b"}  # two nodes: against the faster


# --- the pool's first choice ---------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_pool_goes_to_the_keys_node_and_moves_back_after_ejection() -> None:
    clock = FakeClock()
    pool = NodePool(URLS, clock=clock, eject_after=1, eject_base=30.0)
    point = 42
    home = pool.ring.order(point)[0]
    node, preferred = pool.choose_affine(point)
    assert node is home and preferred
    pool.finished(node, 0.05, False)  # fails: ejected (eject_after=1)
    moved, preferred = pool.choose_affine(point)
    assert moved is pool.ring.order(point)[1] and not preferred
    pool.finished(moved, 0.05, True)
    clock.now += 40  # past the ejection: the one trial goes home, and succeeds
    back, preferred = pool.choose_affine(point)
    assert back is home and preferred
    pool.finished(back, 0.05, True)
    again, _ = pool.choose_affine(point)
    assert again is home


def test_pool_passes_over_a_slow_node_and_excluded_ones() -> None:
    clock = FakeClock()
    pool = NodePool(URLS, clock=clock)
    point = 7
    home, second, third = pool.ring.order(point)
    for node, seconds in ((home, 2.0), (second, 0.05), (third, 0.05)):
        pool.finished(pool._take(node, clock.now), seconds, True)
    chosen, preferred = pool.choose_affine(point)
    assert chosen is second and not preferred
    pool.finished(chosen, None, None)
    chosen, _ = pool.choose_affine(point, exclude={second})
    assert chosen is third


def test_pool_spills_a_hot_conversation_within_the_bound() -> None:
    pool = NodePool(URLS, clock=FakeClock())
    taken = [pool.choose_affine(99)[0] for _ in range(30)]
    counts = [taken.count(node) for node in pool.nodes]
    assert max(counts) <= math.ceil(1.25 * 30 / 3) and min(counts) > 0


def test_the_load_seam_is_what_the_bound_counts() -> None:
    """A fleet-wide view stands in for the pool's own in-flight counts."""
    pool = NodePool(URLS, clock=FakeClock())
    home = pool.ring.order(5)[0]
    pool.loads = lambda nodes: [100.0 if node is home else 0.0 for node in nodes]
    node, preferred = pool.choose_affine(5)
    assert node is not home and not preferred


def test_a_healthy_pin_overrides_affinity() -> None:
    pool = NodePool(URLS, pin=URLS[2], clock=FakeClock())
    for point in range(0, 2**64, 2**60):
        assert pool.choose_affine(point)[0] is pool.nodes[2]


def test_follow_prefers_the_remembered_node() -> None:
    pool = NodePool(URLS, clock=FakeClock())
    home = pool.ring.order(3)[0]
    other = next(node for node in pool.nodes if node is not home)
    node, preferred = pool.choose_affine(3, follow=other)
    assert node is other and preferred


def test_remembered_is_bounded() -> None:
    remembered: Remembered[str, int] = Remembered(2)
    remembered.put("a", 1)
    remembered.put("b", 2)
    assert remembered.get("a") == 1  # now the most recent
    remembered.put("c", 3)
    assert remembered.get("b") is None and remembered.get("a") == 1 and remembered.get("c") == 3


@pytest.mark.parametrize("load_factor", [1.0, 1.25, 2.0])
def test_bound_holds_with_weights(load_factor: float) -> None:
    weights = {URLS[0]: 2.0, URLS[1]: 1.0, URLS[2]: 1.0}
    loads = dict.fromkeys(URLS, 0)
    for placed in range(200):
        node = pick(URLS, URLS, loads, weights, (), load_factor)
        assert node is not None
        loads[node] += 1
        for url in URLS:
            assert loads[url] <= math.ceil(load_factor * (placed + 1) * weights[url] / 4.0)


def test_a_node_back_from_ejection_is_judged_by_its_trial_not_its_failures() -> None:
    """Its failures counted as 1 s answers: without the trial's exemption it would look slow and
    its conversations would stay away until that decayed (tens of seconds)."""
    clock = FakeClock()
    pool = NodePool(URLS, clock=clock, eject_after=1, eject_base=0.1)
    point = 11
    home, second, _ = pool.ring.order(point)
    pool.finished(pool.choose_affine(point)[0], 0.01, False)  # home fails: ejected, estimate 1 s
    for _ in range(3):
        node, _ = pool.choose_affine(point)
        assert node is second
        pool.finished(node, 0.01, True)
    clock.now += 0.2  # the ejection is over; home's estimate is still about 1 s
    trial, preferred = pool.choose_affine(point)
    assert trial is home and preferred
    pool.finished(trial, 0.01, True)
    assert home.estimate == 0.01  # restarted by the trial's success
    assert pool.choose_affine(point)[0] is home


def test_a_node_let_back_by_a_health_check_starts_afresh() -> None:
    pool = NodePool(URLS, clock=FakeClock(), eject_after=1)
    node = pool.nodes[0]
    pool.finished(pool._take(node, 1000.0), 0.01, False)
    pool.reinstate(node)
    assert node.estimate is None and node.ejected_until == 0.0


def test_a_conversation_spilled_for_load_stays_where_it_went() -> None:
    """Going back the moment its node has room would cost a second cache miss."""
    weights = dict.fromkeys(URLS, 1.0)
    home, other, _ = URLS
    full = {home: 5, other: 0, URLS[2]: 0}  # 5 in flight: at its bound (ceil(1.25 * 6 / 3) = 3)
    node, spill = place(URLS, URLS, full, weights, (), 1.25)
    assert node == other and spill == (other, home)
    idle = dict.fromkeys(URLS, 0)
    assert place(URLS, URLS, idle, weights, (), 1.25, spill) == (other, spill)  # stays, though home has room
    # Its node out: the spill is forgotten, and the ring decides again.
    assert place(URLS, [home, URLS[2]], idle, weights, (), 1.25, spill) == (home, None)


def test_a_conversation_moved_off_an_ejected_node_is_no_spill_and_goes_back() -> None:
    weights = dict.fromkeys(URLS, 1.0)
    idle = dict.fromkeys(URLS, 0)
    home, other, _ = URLS
    node, spill = place(URLS, [other, URLS[2]], idle, weights, (), 1.25)  # home ejected
    assert node == other and spill is None
    assert place(URLS, URLS, idle, weights, (), 1.25, spill)[0] == home  # healthy again: back home
    # A spill made while home was out names another natural node: forgotten once home is back.
    stale = (URLS[2], other)
    assert place(URLS, URLS, idle, weights, (), 1.25, stale) == (home, None)


def test_pool_keeps_a_spilled_conversation_on_its_new_node() -> None:
    pool = NodePool(URLS, clock=FakeClock())
    point = 21
    home, second, _ = pool.ring.order(point)
    held = [pool._take(home, 1000.0) for _ in range(4)]  # home busy with other calls
    node, preferred = pool.choose_affine(point)
    assert node is second and not preferred
    for busy in held:
        pool.finished(busy, None, None)
    pool.finished(node, None, None)
    assert pool.choose_affine(point)[0] is second  # home is idle now, but the conversation stays


def test_a_node_that_failed_recently_is_passed_over_while_another_has_not() -> None:
    """With three nodes, two failing (the median estimate is then a failing node's), a node that
    fails a share of its calls must not keep a conversation's first attempts: each failure would
    cost a retry (and the retry budget). It gets them back once it has not failed for tau."""
    clock = FakeClock()
    pool = NodePool(URLS, clock=clock, eject_after=100)  # never ejected: only failing now and then
    point = 11
    home, second, third = pool.ring.order(point)
    pool.finished(pool._take(third, clock.now), 0.01, False)  # another bad node: the median is bad
    pool.finished(pool.choose_affine(point)[0], 0.01, True)
    pool.finished(pool.choose_affine(point)[0], 0.01, False)  # home fails once (1 call in 2)
    node, preferred = pool.choose_affine(point)
    assert node is second and not preferred
    pool.finished(node, 0.01, True)
    clock.now += pool.tau + 1  # no failure for tau: home takes its conversations back
    assert pool.choose_affine(point)[0] is home


def test_a_node_a_few_milliseconds_slower_is_not_slow() -> None:
    """On answers of a few ms, one pause of the machine makes a node "three times slower": not
    worth moving a conversation off its cache; 100 ms more is."""
    assert slow_nodes({"a": 0.003, "b": 0.004, "c": 0.015}, 3.0) == set()
    assert slow_nodes({"a": 0.003, "b": 0.004, "c": 0.2}, 3.0) == {"c"}
