"""Context affinity end to end: the real openai and anthropic SDKs against simulator nodes."""

from __future__ import annotations

import time

import anthropic
import openai
from helpers import ANTHROPIC_KEY, OPENAI_KEY, install_for

from yibu_middleware.simulator import GatewaySimulator, Record

SYSTEM = {"role": "system", "content": "You are a terse assistant."}


def converse(client: openai.OpenAI, first: str, turns: int, **extra: object) -> None:
    """A conversation of ``turns`` calls, each sending the whole history, as chat apps do."""
    history: list[dict[str, str]] = [SYSTEM, {"role": "user", "content": first}]
    for turn in range(turns):
        reply = client.chat.completions.create(model="gpt-5.2", messages=history, **extra)  # type: ignore[call-overload]
        history += [
            {"role": "assistant", "content": str(reply.choices[0].message.content)},
            {"role": "user", "content": f"and then {turn}?"},
        ]


def of(gateway: GatewaySimulator, first: str) -> list[Record]:
    """The records of one conversation (by its first user message), in order."""
    return [
        record
        for record in gateway.records
        if isinstance(record.body, dict) and record.body.get("messages", [None, {}])[1].get("content") == first
    ]


def test_a_conversations_turns_stay_on_one_node_and_hit_its_cache(gateway: GatewaySimulator) -> None:
    # The slow-node rule is tested on its own (test_affinity_core); here a process's first calls,
    # which pay for lazy imports, must not make a node look slow when the suite runs them first.
    install_for(gateway, affinity={"slow_factor": 50})
    client = openai.OpenAI(api_key=OPENAI_KEY)
    topics = [f"topic number {n}" for n in range(12)]
    for topic in topics:
        converse(client, topic, 5)
    homes = set()
    for topic in topics:
        records = of(gateway, topic)
        assert len(records) == 5 and all(r.status == 200 for r in records)
        assert len({r.node for r in records}) == 1, [r.node for r in records]
        # The first turn finds at most the shared system message cached; every later one its whole start.
        assert records[0].cached_tokens <= 5 and all(r.cached_tokens > 5 for r in records[1:])
        homes.add(records[0].node)
    assert len(homes) > 1  # conversations are spread over the nodes, not all on one


def test_off_spreads_a_conversation_by_latency(gateway: GatewaySimulator) -> None:
    install_for(gateway, affinity={"enabled": False})
    client = openai.OpenAI(api_key=OPENAI_KEY)
    for n in range(6):
        converse(client, f"subject {n}", 6)
    assert any(len({r.node for r in of(gateway, f"subject {n}")}) > 1 for n in range(6))


def test_an_ejected_nodes_conversation_moves_and_comes_back(gateway: GatewaySimulator) -> None:
    install_for(gateway, ejection={"consecutive_failures": 1, "base_seconds": 0.05})
    client = openai.OpenAI(api_key=OPENAI_KEY)
    history: list[dict[str, str]] = [SYSTEM, {"role": "user", "content": "a long story"}]

    def turn() -> Record:
        gateway.clear()
        reply = client.chat.completions.create(model="gpt-5.2", messages=history)  # type: ignore[arg-type]
        answer = str(reply.choices[0].message.content)
        history.extend([{"role": "assistant", "content": answer}, {"role": "user", "content": "go on"}])
        served = [r for r in gateway.records if r.status == 200]
        assert len(served) == 1
        return served[0]

    home = turn().node
    assert turn().node == home
    gateway.set_faults(home, refuse=True)
    moved = turn()  # refused at home, then answered elsewhere (the retry's own choice): no failed call
    assert moved.node != home
    # The home node is out: the first attempt goes to the next node on the ring (not always the
    # node the retry chose), and the conversation stays there.
    away = turn().node
    assert away != home and not any(r.node == home for r in gateway.records)
    assert turn().node == away
    gateway.set_faults(home, refuse=False)
    time.sleep(0.2)  # the ejection (0.05 s, +-20 %) is over: the next turn is the home node's trial
    back = turn()
    assert back.node == home and back.cached_tokens > 0  # its cache still holds the start
    assert turn().node == home


def test_retries_go_to_another_node(gateway: GatewaySimulator) -> None:
    install_for(gateway)
    client = openai.OpenAI(api_key=OPENAI_KEY)
    messages = [SYSTEM, {"role": "user", "content": "retry me"}]
    client.chat.completions.create(model="gpt-5.2", messages=messages)  # type: ignore[arg-type]
    home = gateway.records[-1].node
    gateway.set_faults(home, error_rate=1.0)
    gateway.clear()
    reply = client.chat.completions.create(model="gpt-5.2", messages=messages)  # type: ignore[arg-type]
    assert "Hello" in str(reply.choices[0].message.content)
    records = gateway.records
    assert [r.status for r in records] == [503, 200]
    assert records[0].node == home and records[1].node != home


def test_anthropic_turns_stay_together(gateway: GatewaySimulator) -> None:
    install_for(gateway)
    client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, base_url="https://api.anthropic.com")
    for topic in ("cats", "dogs", "birds", "fish"):
        messages: list[dict[str, str]] = [{"role": "user", "content": topic}]
        for _ in range(4):
            reply = client.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=50,
                system="Be brief.",
                messages=messages,  # type: ignore[arg-type]
            )
            messages += [{"role": "assistant", "content": reply.content[0].text}, {"role": "user", "content": "more"}]  # type: ignore[union-attr]
        nodes = {r.node for r in gateway.records if r.body["messages"][0]["content"] == topic}
        assert len(nodes) == 1
    assert reply.usage.cache_read_input_tokens  # the last turn read the node's cache


def test_set_prompt_cache_key_adds_one_only_when_absent(gateway: GatewaySimulator) -> None:
    install_for(gateway, affinity={"set_prompt_cache_key": True})
    client = openai.OpenAI(api_key=OPENAI_KEY)
    messages = [SYSTEM, {"role": "user", "content": "keyed"}]
    client.chat.completions.create(model="gpt-5.2", messages=messages)  # type: ignore[arg-type]
    client.chat.completions.create(model="gpt-5.2", messages=messages, prompt_cache_key="mine")  # type: ignore[arg-type]
    client.chat.completions.create(model="gpt-5.2", messages=[*messages, {"role": "user", "content": "again"}])  # type: ignore[arg-type]
    added, own, later = (record.body for record in gateway.records)
    assert added["prompt_cache_key"].startswith("yibu-") and len(added["prompt_cache_key"]) == 21
    assert added["messages"] == messages  # the rest of the body as sent
    assert own["prompt_cache_key"] == "mine"
    assert later["prompt_cache_key"] == added["prompt_cache_key"]  # the same conversation, the same key
    anthropic.Anthropic(api_key=ANTHROPIC_KEY, base_url="https://api.anthropic.com").messages.create(
        model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    assert "prompt_cache_key" not in gateway.records[-1].body  # not an OpenAI request


def test_no_prompt_cache_key_is_added_by_default(gateway: GatewaySimulator) -> None:
    install_for(gateway)
    openai.OpenAI(api_key=OPENAI_KEY).chat.completions.create(
        model="gpt-5.2", messages=[{"role": "user", "content": "plain"}]
    )
    assert "prompt_cache_key" not in gateway.records[-1].body


def test_a_responses_turn_goes_to_the_node_that_produced_the_response_it_continues(
    gateway: GatewaySimulator,
) -> None:
    """Every second turn sends the same input ("go on"): by its prefix alone all of them would map
    to one node; they follow their previous_response_id to the node that answered it."""
    install_for(gateway)
    client = openai.OpenAI(api_key=OPENAI_KEY)
    firsts = {}
    for topic in ("rivers", "mountains", "deserts", "forests", "oceans", "glaciers", "caves", "islands"):
        first = client.responses.create(model="gpt-5.2", input=topic, instructions="Be brief.")
        firsts[first.id] = gateway.records[-1].node
    assert len(set(firsts.values())) > 1
    for response_id, node in firsts.items():
        second = client.responses.create(
            model="gpt-5.2", input="go on", instructions="Be brief.", previous_response_id=response_id
        )
        assert gateway.records[-1].node == node
        assert second.usage is not None and second.usage.input_tokens_details.cached_tokens > 0
