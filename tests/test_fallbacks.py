"""Model fallbacks: the triggers and the choice in plain code, then real calls through the simulator
with the openai SDK (a model not served, one the key may not use, one overloaded everywhere, a
request over the context window, a stream)."""

from __future__ import annotations

import json
import logging

import openai
import pytest
from helpers import GATEWAY_KEY, OPENAI_KEY, install_for, root_output

from yibu_middleware.core.fallbacks import Fallbacks, Trigger, trigger_of
from yibu_middleware.errors import ConfigError
from yibu_middleware.settings import load_settings
from yibu_middleware.simulator import GatewaySimulator


def err(code: str | None = None, message: str = "", kind: str = "invalid_request_error") -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "code": code}}).encode()


@pytest.mark.parametrize(
    ("status", "body", "exhausted", "expected"),
    [
        (404, err("model_not_found", "The model `x` does not exist"), False, Trigger.MODEL_REFUSED),
        (503, err("model_not_found", "no available channel"), False, Trigger.MODEL_REFUSED),
        (403, err(None, "this token has no access to model x", "new_api_error"), False, Trigger.MODEL_REFUSED),
        (401, err("key_model_access_denied"), False, Trigger.MODEL_REFUSED),
        (403, err("insufficient_user_quota"), False, None),  # the key's quota: not the model's
        (403, err("access_denied"), False, None),  # an IP refusal
        (400, err("context_length_exceeded", "maximum context length is 8 tokens"), False, Trigger.CONTEXT_LENGTH),
        (400, err(None, "prompt is too long: 9 tokens > 8 maximum"), False, Trigger.CONTEXT_LENGTH),
        (400, err("content_policy_violation", "rejected by the safety system"), False, Trigger.CONTENT_POLICY),
        (400, err(None, "Invalid value for 'temperature'"), False, None),
        (401, err("invalid_api_key"), False, None),
        (422, err(None, "unprocessable"), False, None),
        (503, err(None, "overloaded"), True, Trigger.EXHAUSTED),
        (0, None, True, Trigger.EXHAUSTED),
        (200, None, False, None),
    ],
)
def test_which_answers_trigger_a_fallback(
    status: int, body: bytes | None, exhausted: bool, expected: Trigger | None
) -> None:
    assert trigger_of(status, body, exhausted) == expected


def test_next_model_walks_the_first_models_list_skipping_tried_and_forbidden() -> None:
    rules = Fallbacks(
        {"gpt-5*": ["gpt-5.1", "gpt-4.1", "gpt-4o"]},
        {"gpt-5*": ["gpt-5.2-long"]},
        [Trigger.MODEL_REFUSED, Trigger.EXHAUSTED, Trigger.CONTEXT_LENGTH],
        allowed=lambda model: model != "gpt-4.1",
    )
    assert rules.next_model("gpt-5.2", ["gpt-5.2"], Trigger.MODEL_REFUSED) == "gpt-5.1"
    assert rules.next_model("gpt-5.2", ["gpt-5.2", "gpt-5.1"], Trigger.EXHAUSTED) == "gpt-4o"  # 4.1 forbidden
    assert rules.next_model("gpt-5.2", ["gpt-5.2"], Trigger.CONTEXT_LENGTH) == "gpt-5.2-long"  # only its list
    assert rules.next_model("gpt-5.2", ["gpt-5.2"], Trigger.CONTENT_POLICY) is None  # not switched on
    assert rules.next_model("claude-x", ["claude-x"], Trigger.MODEL_REFUSED) is None
    assert rules.covers("gpt-5.2") and not rules.covers("claude-x") and not rules.covers(None)


def test_fallback_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIBU_FALLBACKS", '{"gpt-5.2": ["gpt-5.1", "gpt-4.1"]}')
    monkeypatch.setenv("YIBU_FALLBACK_ON", "model_refused,content_policy")
    settings = load_settings()
    assert settings.fallbacks == {"gpt-5.2": ["gpt-5.1", "gpt-4.1"]}
    assert settings.fallback_on == ["model_refused", "content_policy"]
    monkeypatch.setenv("YIBU_FALLBACK_ON", "model_refused,typo")
    with pytest.raises(ConfigError, match="fallback_on"):
        load_settings()


# --- through the simulator -------------------------------------------------------------------------


def chat(model: str, words: int = 1, **extra: object) -> openai.types.chat.ChatCompletion:
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    content = " ".join(["hi"] * words)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **extra)  # type: ignore[call-overload,no-any-return]


def models_sent(gateway: GatewaySimulator) -> list[tuple[str | None, int]]:
    return [(record.model, record.status) for record in gateway.records if record.path == "/v1/chat/completions"]


def test_a_call_whose_first_model_is_not_served_succeeds_on_its_fallback(gateway: GatewaySimulator) -> None:
    gateway.set_missing_models({"gpt-5.2"})
    install_for(gateway, fallbacks={"gpt-5.2": ["gpt-5.1", "gpt-4.1"]}, log="info")
    with root_output(logging.INFO) as logged:
        answer = chat("gpt-5.2")
    assert answer.model == "gpt-5.1"  # the answer says what answered
    assert models_sent(gateway) == [("gpt-5.2", 404), ("gpt-5.1", 200)]
    line = logged.getvalue()
    assert "model=gpt-5.2=>gpt-5.1 (fallback)" in line
    assert "gpt-5.2: " in line and "then (model_refused) gpt-5.1: " in line and ": 404" in line


def test_a_model_the_key_may_not_use_falls_back(gateway: GatewaySimulator) -> None:
    gateway.set_key_models(GATEWAY_KEY, ["gpt-4*"])
    install_for(gateway, fallbacks={"gpt-5*": ["gpt-4.1"]})
    assert chat("gpt-5.2").model == "gpt-4.1"
    assert models_sent(gateway) == [("gpt-5.2", 403), ("gpt-4.1", 200)]


def test_a_model_overloaded_on_every_node_falls_back_within_the_retries(gateway: GatewaySimulator) -> None:
    gateway.set_model_status("gpt-5.2", 503)
    install_for(gateway, fallbacks={"gpt-5.2": ["gpt-5.1"]})
    assert chat("gpt-5.2").model == "gpt-5.1"
    sent = models_sent(gateway)
    assert sent[-1] == ("gpt-5.1", 200)
    assert [status for model, status in sent if model == "gpt-5.2"] == [503, 503, 503]  # retry.max_attempts


def test_exhausted_is_switchable(gateway: GatewaySimulator) -> None:
    gateway.set_model_status("gpt-5.2", 503)
    install_for(gateway, fallbacks={"gpt-5.2": ["gpt-5.1"]}, fallback_on=["model_refused"])
    with pytest.raises(openai.InternalServerError):
        chat("gpt-5.2")
    assert {model for model, _ in models_sent(gateway)} == {"gpt-5.2"}


def test_a_context_window_error_goes_only_to_context_fallbacks(gateway: GatewaySimulator) -> None:
    gateway.set_model_window("gpt-4o-mini", 8)
    install_for(gateway, fallbacks={"gpt-4o-mini": ["gpt-4o-nano"]}, context_fallbacks={"gpt-4o-mini": ["gpt-4.1"]})
    assert chat("gpt-4o-mini", words=20).model == "gpt-4.1"
    assert models_sent(gateway) == [("gpt-4o-mini", 400), ("gpt-4.1", 200)]


def test_a_context_window_error_without_context_fallbacks_is_handed_back(gateway: GatewaySimulator) -> None:
    gateway.set_model_window("gpt-4o-mini", 8)
    install_for(gateway, fallbacks={"gpt-4o-mini": ["gpt-4o-nano"]})
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        chat("gpt-4o-mini", words=20)
    assert models_sent(gateway) == [("gpt-4o-mini", 400)]


def test_other_client_errors_never_fall_back(gateway: GatewaySimulator) -> None:
    install_for(gateway, fallbacks={"*": ["gpt-4.1"]})
    gateway.set_model_status("gpt-5.2", 400)
    with pytest.raises(openai.BadRequestError):
        chat("gpt-5.2")
    gateway.set_model_status("gpt-5.2", 422)
    with pytest.raises(openai.UnprocessableEntityError):
        chat("gpt-5.2")
    gateway.set_model_status("gpt-5.2", None)
    install_for(gateway, fallbacks={"*": ["gpt-4.1"]}, api_key="sk-not-accepted-0123456789abcdefgh")
    with pytest.raises(openai.AuthenticationError):
        chat("gpt-5.2")
    assert {model for model, _ in models_sent(gateway)} == {"gpt-5.2"}


def test_a_fallback_the_policy_forbids_is_not_made(gateway: GatewaySimulator) -> None:
    gateway.set_missing_models({"gpt-5.2"})
    install_for(
        gateway,
        fallbacks={"gpt-5.2": ["gpt-4.1", "gpt-5.1"]},
        policy={"allowed_models": ["gpt-5.2", "gpt-5.1"]},
    )
    assert chat("gpt-5.2").model == "gpt-5.1"
    assert models_sent(gateway) == [("gpt-5.2", 404), ("gpt-5.1", 200)]


def test_a_stream_falls_back_before_its_first_content(gateway: GatewaySimulator) -> None:
    gateway.set_missing_models({"gpt-5.2"})
    install_for(gateway, fallbacks={"gpt-5.2": ["gpt-5.1"]})
    chunks = list(chat("gpt-5.2", stream=True))
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert {chunk.model for chunk in chunks} == {"gpt-5.1"}
    assert models_sent(gateway) == [("gpt-5.2", 404), ("gpt-5.1", 200)]


def test_when_every_model_fails_the_error_names_every_model_and_node(gateway: GatewaySimulator) -> None:
    gateway.set_missing_models({"gpt-5.2", "gpt-5.1"})
    install_for(gateway, fallbacks={"gpt-5.2": ["gpt-5.1"]})
    with pytest.raises(openai.NotFoundError) as caught:
        chat("gpt-5.2")
    message = str(caught.value)
    assert "yibu-middleware tried: gpt-5.2: 127.0.0.1:" in message
    assert "then (model_refused) gpt-5.1: 127.0.0.1:" in message
    assert caught.value.response.headers["x-should-retry"] == "false"


def test_the_async_client_falls_back_too(gateway: GatewaySimulator) -> None:
    import asyncio

    gateway.set_missing_models({"gpt-5.2"})
    install_for(gateway, fallbacks={"gpt-5.2": ["gpt-5.1"]})

    async def call() -> str:
        async with openai.AsyncOpenAI(api_key=OPENAI_KEY, max_retries=0) as client:
            answer = await client.chat.completions.create(model="gpt-5.2", messages=[{"role": "user", "content": "hi"}])
            return answer.model

    assert asyncio.run(call()) == "gpt-5.1"


def test_fallbacks_and_a_key_pool_choose_the_fallbacks_keys(gateway: GatewaySimulator) -> None:
    other = "sk-gw-claude-0123456789abcdefghijklmn"
    simulator_keys = {GATEWAY_KEY, other}
    gateway.accepted_keys = frozenset(simulator_keys)
    gateway.set_key_models(GATEWAY_KEY, ["gpt-*"])
    gateway.set_key_models(other, ["claude-*"])
    gateway.set_model_status("gpt-5.2", 503)
    install_for(gateway, keys_by_model={"claude-*": [other]}, fallbacks={"gpt-5.2": ["claude-sonnet-4-5"]})
    assert chat("gpt-5.2").model == "claude-sonnet-4-5"
    last = [r for r in gateway.records if r.path == "/v1/chat/completions"][-1]
    assert (last.model, last.key, last.status) == ("claude-sonnet-4-5", other, 200)


def test_a_fallback_waits_its_turn_under_the_new_models_limits(gateway: GatewaySimulator) -> None:
    gateway.set_missing_models({"gpt-5.2"})
    install_for(
        gateway,
        fallbacks={"gpt-5.2": ["gpt-5.1"]},
        limits={"per_model": {"gpt-5.1": {"max_concurrent": 1}}, "queue_timeout": 0.2},
    )
    held = chat("gpt-5.1", stream=True)  # holds gpt-5.1's one slot until the stream is read or closed
    try:
        with pytest.raises(openai.RateLimitError, match=r'limits.per_model\["gpt-5.1"\].max_concurrent'):
            chat("gpt-5.2")
    finally:
        held.close()
    assert chat("gpt-5.2").model == "gpt-5.1"  # the slot is free again


def test_the_anthropic_sdk_falls_back_in_its_own_protocol(gateway: GatewaySimulator) -> None:
    import anthropic
    from helpers import ANTHROPIC_KEY

    gateway.set_missing_models({"claude-opus-9"})
    install_for(gateway, fallbacks={"claude-opus-9": ["claude-sonnet-4-5"]})
    client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, max_retries=0)
    answer = client.messages.create(model="claude-opus-9", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    assert answer.model == "claude-sonnet-4-5"
    sent = [(r.path, r.model, r.status) for r in gateway.records]
    assert sent == [("/v1/messages", "claude-opus-9", 404), ("/v1/messages", "claude-sonnet-4-5", 200)]
