"""Retries, failover and safe streams against the simulator's injected faults, real sockets."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator

import anthropic
import httpx2
import openai
import pytest
from helpers import GATEWAY_KEY, OPENAI_KEY, assert_no_provider_key, install_for

from yibu_middleware.runtime import current
from yibu_middleware.simulator import GatewaySimulator, NodeFaults

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def mixed() -> Iterator[GatewaySimulator]:
    """The issue's pool: one node down, one failing 30 % with 503, one healthy."""
    simulator = GatewaySimulator(accepted_keys={GATEWAY_KEY})
    simulator.add_node("down", NodeFaults(refuse=True))
    simulator.add_node("flaky", NodeFaults(error_rate=0.3, seed=11))
    simulator.add_node("healthy")
    with simulator:
        yield simulator


def one_shot_body() -> Iterator[bytes]:
    """A request body that can be read once only, as an upload or a generator is."""
    yield b'{"model": "gpt-4o-mini", '
    yield b'"messages": [{"role": "user", "content": "hi"}]}'


def chat(client: openai.OpenAI, **extra: object) -> str:
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, **extra)  # type: ignore[call-overload]
    return str(reply.choices[0].message.content)


def test_mixed_pool_sync_every_call_succeeds_within_the_attempt_budget(mixed: GatewaySimulator) -> None:
    install_for(mixed)
    client = openai.OpenAI(api_key=OPENAI_KEY)
    answers = [chat(client) for _ in range(60)]
    assert len(answers) == 60 and all("Hello" in answer for answer in answers)
    records = mixed.records
    assert len(records) <= 1.4 * 60
    assert [r for r in records if r.status == 200 and r.node == "flaky"] or [r for r in records if r.node == "healthy"]
    assert_no_provider_key(mixed)


def test_mixed_pool_async(mixed: GatewaySimulator) -> None:
    install_for(mixed)

    async def main() -> list[str]:
        async with openai.AsyncOpenAI(api_key=OPENAI_KEY) as client:
            replies = await asyncio.gather(
                *(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES) for _ in range(60))  # type: ignore[call-overload]
            )
        return [str(reply.choices[0].message.content) for reply in replies]

    assert len(asyncio.run(main())) == 60
    assert len(mixed.records) <= 1.4 * 60


def test_5xx_retried_on_another_node_invisibly(gateway: GatewaySimulator) -> None:
    gateway.set_faults("a", error_rate=1.0)
    install_for(gateway, pin=gateway.node("a").base_url)  # first attempt always on "a"
    assert "Hello" in chat(openai.OpenAI(api_key=OPENAI_KEY, max_retries=0))
    first, second = gateway.records
    assert (first.node, first.status) == ("a", 503) and second.node != "a" and second.status == 200


def test_429_storm_one_retry_loop_not_two(gateway: GatewaySimulator) -> None:
    for node in gateway.nodes:
        gateway.set_faults(node.name, rate_limit_rate=1.0, retry_after=0.05)
    install_for(gateway)
    client = openai.OpenAI(api_key=OPENAI_KEY)  # SDK retries on: they must not multiply ours
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client)
    assert len(gateway.records) == 3  # retry.max_attempts, not 3 x the SDK's 3
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert "yibu-middleware tried:" in str(caught.value)
    assert {r.node for r in gateway.records} == {"a", "b", "c"}  # another node first, no waiting


def test_429_with_retry_after_waits_when_no_node_is_left(gateway: GatewaySimulator) -> None:
    gateway.set_faults("a", rate_limit_rate=1.0, retry_after=0.2)
    install_for(gateway, nodes=[gateway.node("a").base_url], retry={"max_attempts": 2})
    with pytest.raises(openai.RateLimitError):
        chat(openai.OpenAI(api_key=OPENAI_KEY))
    first, second = gateway.records
    assert second.started - first.started >= 0.2  # it honoured retry-after


def test_quota_and_permission_errors_are_never_retried(gateway: GatewaySimulator) -> None:
    body = {"error": {"message": "no channel for model", "type": "new_api_error", "code": "model_not_found"}}
    for node in gateway.nodes:
        gateway.set_faults(node.name, status_override=503, status_body=body)
    install_for(gateway)
    with pytest.raises(openai.InternalServerError) as caught:
        chat(openai.OpenAI(api_key=OPENAI_KEY))
    assert len(gateway.records) == 1 and caught.value.response.headers["x-should-retry"] == "false"


def test_all_nodes_down_fails_once_with_every_node_named(
    gateway: GatewaySimulator, caplog: pytest.LogCaptureFixture
) -> None:
    for node in gateway.nodes:
        gateway.set_faults(node.name, refuse=True)
    install_for(gateway)
    caplog.set_level(logging.WARNING, logger="yibu_middleware")
    with pytest.raises(openai.InternalServerError) as caught:
        chat(openai.OpenAI(api_key=OPENAI_KEY))  # SDK retries on
    gave_up = [r for r in caplog.records if "got no answer from the gateway" in r.getMessage()]
    assert len(gave_up) == 1  # the SDK did not go round again
    assert all(f":{node.port}" in str(caught.value) for node in gateway.nodes)


def test_deadline_covers_all_attempts(gateway: GatewaySimulator) -> None:
    for node in gateway.nodes:
        gateway.set_faults(node.name, latency=2.0)
    install_for(gateway)
    client = openai.OpenAI(api_key=OPENAI_KEY, timeout=0.5, max_retries=0)
    with pytest.raises(openai.APITimeoutError) as caught:  # what the SDK alone raises for a timeout
        chat(client)
    ours = str(caught.value.__cause__)  # httpx2.ReadTimeout, naming the nodes tried
    assert "deadline" in ours or "max_attempts" in ours


def test_one_shot_body_is_not_retried_and_says_why(gateway: GatewaySimulator) -> None:
    """Refused at connect, a one-shot body is still whole and goes to the next node
    (tests/test_side_doors.py); dropped after it was sent, it cannot be sent again."""
    for name in ("a", "b"):
        gateway.set_faults(name, latency=5.0)
    install_for(gateway, nodes=[gateway.node("a").base_url, gateway.node("b").base_url], pin=gateway.node("a").base_url)

    with httpx2.Client(timeout=httpx2.Timeout(5.0, read=0.3)) as client, pytest.raises(httpx2.ReadTimeout) as caught:
        client.post(
            "https://api.openai.com/v1/chat/completions",
            content=one_shot_body(),
            headers={"Authorization": f"Bearer {OPENAI_KEY}", "content-type": "application/json"},
        )
    assert "one-shot stream" in str(caught.value)
    assert f":{gateway.node('b').port}" not in str(caught.value)  # b was never tried


def test_stream_cut_before_first_content_is_retried_invisibly(gateway: GatewaySimulator) -> None:
    gateway.set_faults("a", cut_stream_after=1)  # the role chunk only: no content yet
    install_for(gateway, pin=gateway.node("a").base_url)
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    text = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        if c.choices
    )  # type: ignore[call-overload]
    assert text.startswith("Hello from yibu simulator node")
    assert "'a'" not in text  # the answer came whole from another node
    assert next(r.node for r in gateway.records) == "a" and len(gateway.records) == 2


def test_stream_cut_after_first_content_raises_never_truncates(gateway: GatewaySimulator) -> None:
    gateway.set_faults("a", cut_stream_after=3)
    install_for(gateway, pin=gateway.node("a").base_url)
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    pieces = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):
            pieces.append(chunk)
    assert len(pieces) == 3 and len(gateway.records) == 1  # not retried after content
    cause = caught.value.__cause__ or caught.value.__context__
    assert "broke after its first content" in str(caught.value) + str(cause)


def test_async_stream_cut_before_first_content_is_retried(gateway: GatewaySimulator) -> None:
    gateway.set_faults("b", cut_stream_after=1)
    install_for(gateway, pin=gateway.node("b").base_url)

    async def main() -> str:
        async with openai.AsyncOpenAI(api_key=OPENAI_KEY, max_retries=0) as client:
            stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    assert asyncio.run(main()).startswith("Hello")
    assert len(gateway.records) == 2


def test_anthropic_stream_retried_before_content(gateway: GatewaySimulator) -> None:
    gateway.set_faults("c", cut_stream_after=2)  # message_start, content_block_start: no content
    install_for(gateway, pin=gateway.node("c").base_url)
    client = anthropic.Anthropic(api_key="sk-ant-api03-provider-anthropic-key-not-real-0123", max_retries=0)
    with client.messages.stream(model="claude-sonnet-5-5", max_tokens=20, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
    assert text.startswith("Hello") and len(gateway.records) == 2


def test_forked_worker_starts_clean(gateway: GatewaySimulator) -> None:
    install_for(gateway)
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    for _ in range(3):
        chat(client)

    runtime = current()
    assert runtime is not None and sum(node.sent for node in runtime.pool.nodes) == 3
    pid = os.fork()
    if pid == 0:  # the worker: fresh statistics, and it still routes
        code = 1
        try:
            child = current()
            fresh = child is not None and all(node.sent == 0 and node.estimate is None for node in child.pool.nodes)
            worker = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
            code = 0 if fresh and "Hello" in chat(worker) else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(gateway.records) == 4 and {r.key for r in gateway.records} == {GATEWAY_KEY}


def test_active_health_check_brings_an_ejected_node_back(gateway: GatewaySimulator) -> None:
    import threading
    import time

    gateway.set_faults("a", refuse=True)
    assert not [t for t in threading.enumerate() if t.name == "yibu-health-check"]
    install_for(
        gateway,
        health_check={"interval": 0.05},
        ejection={"consecutive_failures": 2, "base_seconds": 600},
        pin=gateway.node("a").base_url,  # every call tries "a" first, so it is ejected at once
    )
    assert not [t for t in threading.enumerate() if t.name == "yibu-health-check"]  # nothing at install
    runtime = current()
    assert runtime is not None
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    node_a = next(node for node in runtime.pool.nodes if node.port == gateway.node("a").port)
    for _ in range(2):
        chat(client)
    assert node_a in runtime.pool.ejected()
    assert [t for t in threading.enumerate() if t.name == "yibu-health-check"]  # started by the first call
    gateway.set_faults("a", refuse=False)
    for _ in range(100):  # the checker runs every 50 ms; give it up to 5 s
        if node_a not in runtime.pool.ejected():
            break
        time.sleep(0.05)
    assert node_a not in runtime.pool.ejected()
    assert node_a.ejected_until == 0.0


def hedged_setup(gateway: GatewaySimulator) -> None:
    install_for(
        gateway,
        pin=gateway.node("a").base_url,
        # The p95 is first known after 16 answers, so the 17th call is the first that can hedge.
        hedge={"enabled": True, "min_samples": 16, "max_share": 0.05},
    )


def test_hedge_sync_first_answer_wins(gateway: GatewaySimulator) -> None:
    hedged_setup(gateway)
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    for _ in range(16):  # learn the p95 time to an answer
        assert "'a'" in chat(client)
    gateway.set_faults("a", latency=1.0)
    answer = chat(client)
    assert "'a'" not in answer  # the hedge on another node answered first
    assert len([r for r in gateway.records if r.node != "a"]) == 1  # one hedge, answered 200
    assert [r.status for r in gateway.records if r.node != "a"] == [200]


def test_hedge_async_and_the_cap(gateway: GatewaySimulator) -> None:
    hedged_setup(gateway)

    async def main() -> list[str]:
        async with openai.AsyncOpenAI(api_key=OPENAI_KEY, max_retries=0) as client:
            answers = []
            for number in range(18):
                if number == 16:
                    gateway.set_faults("a", latency=1.5)
                reply = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
                answers.append(str(reply.choices[0].message.content))
            return answers

    answers = asyncio.run(main())
    assert "'a'" not in answers[16]  # hedged: another node answered
    assert "'a'" in answers[17]  # the hedge share (5 %, floor 1) is spent: no second hedge


def stream_text(client: openai.OpenAI) -> str:
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)  # type: ignore[call-overload]
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_anthropic_overloaded_event_before_content_is_retried(gateway: GatewaySimulator) -> None:
    gateway.set_faults("a", stream_error_after=1)  # message_start, then overloaded_error
    install_for(gateway, pin=gateway.node("a").base_url)
    client = anthropic.Anthropic(api_key="sk-ant-api03-provider-anthropic-key-not-real-0123", max_retries=0)
    with client.messages.stream(model="claude-sonnet-5-5", max_tokens=20, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
    assert text.startswith("Hello") and "'a'" not in text
    assert next((r.node, r.fault) for r in gateway.records) == ("a", "stream_error")


def test_openai_in_band_error_before_content_is_retried(gateway: GatewaySimulator) -> None:
    gateway.set_faults("b", stream_error_after=1)
    install_for(gateway, pin=gateway.node("b").base_url)
    text = stream_text(openai.OpenAI(api_key=OPENAI_KEY, max_retries=0))
    assert text.startswith("Hello") and "'b'" not in text and len(gateway.records) == 2


def test_stream_ending_before_content_is_retried(gateway: GatewaySimulator) -> None:
    gateway.set_faults("c", truncate_stream_after=1)  # the role chunk, then a clean end
    install_for(gateway, pin=gateway.node("c").base_url)
    assert stream_text(openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)).startswith("Hello")
    assert len(gateway.records) == 2


def test_silently_truncated_stream_raises(gateway: GatewaySimulator) -> None:
    gateway.set_faults("a", truncate_stream_after=3)  # content, then a clean end with no [DONE]
    install_for(gateway, pin=gateway.node("a").base_url)
    with pytest.raises((openai.APIError, httpx2.HTTPError)) as caught:
        stream_text(openai.OpenAI(api_key=OPENAI_KEY, max_retries=0))
    error = caught.value
    assert "ended before its final event" in str(error) + str(error.__cause__) + str(error.__context__)
    assert len(gateway.records) == 1  # after content: not retried


def test_anthropic_truncated_stream_raises(gateway: GatewaySimulator) -> None:
    gateway.set_faults("b", truncate_stream_after=4)  # a content delta, then no message_stop
    install_for(gateway, pin=gateway.node("b").base_url)
    client = anthropic.Anthropic(api_key="sk-ant-api03-provider-anthropic-key-not-real-0123", max_retries=0)
    with (
        pytest.raises((anthropic.APIError, httpx2.HTTPError)),
        client.messages.stream(model="claude-sonnet-5-5", max_tokens=20, messages=MESSAGES) as stream,
    ):
        "".join(stream.text_stream)


@pytest.mark.parametrize("events", [0, 1])
def test_first_token_timeout_retries_a_stalled_stream(gateway: GatewaySimulator, events: int) -> None:
    gateway.set_faults("a", stall_stream_after=events, stall_max=5.0)  # headers (and the role), then nothing
    install_for(gateway, pin=gateway.node("a").base_url, stream={"first_token_timeout": 0.3})
    assert stream_text(openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)).startswith("Hello")
    assert [r.node for r in gateway.records][-1] != "a"


def test_first_token_timeout_async(gateway: GatewaySimulator) -> None:
    gateway.set_faults("a", stall_stream_after=1, stall_max=5.0)
    install_for(gateway, pin=gateway.node("a").base_url, stream={"first_token_timeout": 0.3})

    async def main() -> str:
        async with openai.AsyncOpenAI(api_key=OPENAI_KEY, max_retries=0) as client:
            stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    assert asyncio.run(main()).startswith("Hello")


def test_sdk_retries_that_still_come_cost_budget(gateway: GatewaySimulator) -> None:

    install_for(gateway)
    runtime = current()
    assert runtime is not None
    with httpx2.Client() as client:
        for count in ("0", "1", "2"):
            client.post(
                "https://api.openai.com/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": MESSAGES},
                headers={"Authorization": f"Bearer {OPENAI_KEY}", "x-stainless-retry-count": count},
            ).raise_for_status()
    requests = sum(bucket[0] for bucket in runtime.budget._buckets.values())
    retries = sum(bucket[1] for bucket in runtime.budget._buckets.values())
    assert (requests, retries) == (3, 2)  # the SDK's second and third tries were counted


def test_streamed_request_body_reaches_the_gateway(gateway: GatewaySimulator) -> None:
    install_for(gateway)

    with httpx2.Client() as client:
        response = client.post(
            "https://api.openai.com/v1/chat/completions",
            content=one_shot_body(),
            headers={"Authorization": f"Bearer {OPENAI_KEY}", "content-type": "application/json"},
        )
    assert response.status_code == 200, response.text
    (record,) = gateway.records
    assert record.key == GATEWAY_KEY and record.model == "gpt-4o-mini"


def test_streams_are_asked_for_uncompressed(gateway: GatewaySimulator) -> None:
    install_for(gateway)
    stream_text(openai.OpenAI(api_key=OPENAI_KEY, max_retries=0))
    chat(openai.OpenAI(api_key=OPENAI_KEY, max_retries=0))
    streamed, plain = gateway.records
    assert streamed.headers["accept-encoding"] == "identity"
    assert plain.headers["accept-encoding"] != "identity"


def test_cancelled_calls_free_their_node_slots(gateway: GatewaySimulator) -> None:

    for node in gateway.nodes:
        gateway.set_faults(node.name, latency=1.0)
    install_for(gateway)

    async def main() -> None:
        async with openai.AsyncOpenAI(api_key=OPENAI_KEY, max_retries=0) as client:
            for _ in range(5):
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(client.chat.completions.create(model="m", messages=MESSAGES), 0.05)  # type: ignore[arg-type]

    asyncio.run(main())
    runtime = current()
    assert runtime is not None and all(node.in_flight == 0 for node in runtime.pool.nodes)


def test_hedge_that_fails_first_does_not_beat_a_healthy_primary(gateway: GatewaySimulator) -> None:
    install_for(gateway, pin=gateway.node("a").base_url, hedge={"enabled": True, "min_samples": 16, "max_share": 0.5})
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    for _ in range(16):
        chat(client)
    gateway.set_faults("a", latency=0.3)
    gateway.set_faults("b", error_rate=1.0)
    gateway.set_faults("c", error_rate=1.0)
    assert "'a'" in chat(client)  # the hedge failed fast; the primary's answer was waited for
    assert len(gateway.records_for("a")) == 17  # and the primary was not sent twice


# --- a failed first attempt: one plan per call, its budget counted once ---


def counting_plans(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every CallPlan made from now on (one per call that went through the loop)."""
    from yibu_middleware.core.plan import CallPlan
    from yibu_middleware.pipeline import call as call_module

    made: list[object] = []

    def counted(*args: object, **kwargs: object) -> CallPlan:
        plan = CallPlan(*args, **kwargs)  # type: ignore[arg-type]
        made.append(plan)
        return plan

    monkeypatch.setattr(call_module, "CallPlan", counted)
    return made


def budget_counts() -> tuple[int, int]:
    runtime = current()
    assert runtime is not None
    buckets = runtime.budget._buckets.values()
    return sum(bucket[0] for bucket in buckets), sum(bucket[1] for bucket in buckets)


@pytest.mark.parametrize("fault", [{"status_override": 503}, {"refuse": True}])
def test_a_first_attempt_that_fails_is_retried_within_its_calls_plan(
    gateway: GatewaySimulator, monkeypatch: pytest.MonkeyPatch, fault: dict[str, object]
) -> None:
    gateway.set_faults("a", **fault)  # type: ignore[arg-type]
    install_for(gateway, pin=gateway.node("a").base_url)
    plans = counting_plans(monkeypatch)
    assert "Hello" in chat(openai.OpenAI(api_key=OPENAI_KEY, max_retries=0))

    async def main() -> None:
        async with openai.AsyncOpenAI(api_key=OPENAI_KEY, max_retries=0) as client:
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]

    asyncio.run(main())
    assert len(plans) == 2  # one plan per call, retrying within it
    served = [r for r in gateway.records if r.status == 200]
    assert len(served) == 2 and all(r.node != "a" for r in served)
    if "status_override" in fault:
        assert [r.node for r in gateway.records].count("a") == 2  # tried once per call, not again
        assert budget_counts() == (2, 2)  # each call counted once, and its retry once
    else:
        assert budget_counts() == (2, 0)  # a refused connection cost the gateway nothing: no budget
    runtime = current()
    assert runtime is not None and all(node.in_flight == 0 for node in runtime.pool.nodes)


def test_an_error_before_the_first_attempt_is_sent_frees_its_node_slot(
    gateway: GatewaySimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from yibu_middleware.hooks.httpx import adapter

    def broken(*args: object) -> None:
        raise RuntimeError("the request could not be built")

    install_for(gateway)
    monkeypatch.setattr(adapter, "node_url", broken)
    with pytest.raises(RuntimeError, match="could not be built"):
        chat(openai.OpenAI(api_key=OPENAI_KEY, max_retries=0))
    runtime = current()
    assert runtime is not None and all(node.in_flight == 0 for node in runtime.pool.nodes)
    assert gateway.records == []


def test_a_refused_first_attempt_keeps_no_exception_alive(gateway: GatewaySimulator) -> None:
    """The failure is handed to the loop as plain data: no reference cycle holds the transport
    error, its frames and the request (gateway key included) until a garbage collection."""
    import gc

    gateway.set_faults("a", refuse=True)
    install_for(gateway, pin=gateway.node("a").base_url)
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    chat(client)
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            chat(client)
        alive = [found for found in gc.get_objects() if isinstance(found, httpx2.ConnectError)]
    finally:
        gc.enable()
    assert alive == [] and [r.node for r in gateway.records].count("a") == 0
