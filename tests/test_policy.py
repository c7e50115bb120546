"""Client-side policy: every rule on OpenAI (chat, Responses) and Anthropic shapes, and its messages."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from yibu_middleware.core.error_bodies import error_body
from yibu_middleware.core.policy import (
    MB,
    ParsedBody,
    Rules,
    Violation,
    check,
    describe_gateway_refusal,
    media_parts,
    needs_document,
    normalize_format,
)
from yibu_middleware.core.retry import FINAL_CODES
from yibu_middleware.errors import ConfigError
from yibu_middleware.settings import PolicySettings, load_settings

SIGNED_URL_SECRET = "X-Amz-Signature=deadbeefcafe"
PAYLOAD_MARK = "UExBQ0VIT0xERVI"  # appears in the base64 data only


def chat(*parts: dict[str, Any], model: str = "gpt-4o") -> bytes:
    content = [{"type": "text", "text": "look"}, *parts]
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}]}).encode()


def anthropic(*blocks: dict[str, Any]) -> bytes:
    messages = [{"role": "user", "content": [{"type": "text", "text": "look"}, *blocks]}]
    return json.dumps({"model": "claude-sonnet-4", "max_tokens": 100, "messages": messages}).encode()


def responses(*parts: dict[str, Any]) -> bytes:
    return json.dumps({"model": "gpt-4o", "input": [{"role": "user", "content": list(parts)}]}).encode()


def image_url(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def data_url(media_type: str, size: int) -> str:
    """A base64 data URL of a ``size``-byte payload: built from a repeated block, no encoding of real data."""
    return f"data:{media_type};base64," + b64_of(size)


def b64_of(size: int) -> str:
    whole, rest = divmod(size, 3)
    tail = {0: "", 1: "QQ==", 2: "QUI="}[rest]
    return PAYLOAD_MARK + "A" * (whole * 4 - len(PAYLOAD_MARK)) + tail if whole * 4 >= 16 else "A" * whole * 4 + tail


def anthropic_image(media_type: str, size: int) -> dict[str, Any]:
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": b64_of(size)}}


def violation_of(body: bytes, rules: Rules, provider: str = "openai", model: str | None = "gpt-4o") -> Violation:
    path = "/messages" if provider == "anthropic" else "/chat/completions"
    found = check(provider, path, body, model, rules)
    assert found is not None
    assert PAYLOAD_MARK not in found.message and SIGNED_URL_SECRET not in found.message
    return found


DEFAULT = Rules()


# --- allowed models ---------------------------------------------------------------------------------


def test_model_not_allowed_is_a_403_naming_rule_setting_and_model() -> None:
    rules = Rules(allowed_models=["gpt-4o*", "claude-sonnet-4"])
    found = violation_of(b'{"model":"gpt-5"}', rules, model="gpt-5")
    assert found.status == 403 and found.code == "model_not_allowed"
    assert found.setting == "policy.allowed_models" and found.rule == "allowed models"
    assert "'gpt-5'" in found.message and "policy.allowed_models" in found.message
    assert "allowed models" in found.message and "'gpt-4o*'" in found.message


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4"])
def test_allowed_models_exact_or_by_pattern(model: str) -> None:
    rules = Rules(allowed_models=["gpt-4o*", "claude-sonnet-4"])
    assert check("openai", "/chat/completions", b"{}", model, rules) is None


def test_patterns_match_the_whole_name_and_case() -> None:
    rules = Rules(allowed_models=["gpt-4o*"])
    for model in ("xgpt-4o", "GPT-4o", "claude-sonnet-4-5"):
        assert check("openai", "/chat/completions", b"{}", model, rules) is not None


def test_no_allowed_models_allows_all_and_no_model_is_not_checked() -> None:
    assert check("openai", "/chat/completions", b"{}", "anything", DEFAULT) is None
    assert check("openai", "/models", None, None, Rules(allowed_models=["gpt-4o"])) is None


# --- denied modalities ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "body", "modality", "shape"),
    [
        ("openai", chat(image_url("https://img.example/cat.png")), "image", "image_url"),
        ("openai", chat(image_url(data_url("image/png", 10))), "image", "image_url"),
        ("openai", chat({"type": "input_audio", "input_audio": {"data": b64_of(30), "format": "wav"}}), "audio", ""),
        ("openai", chat({"type": "file", "file": {"file_data": data_url("application/pdf", 30)}}), "file", "file"),
        ("openai", chat({"type": "file", "file": {"file_id": "file-abc"}}), "file", "file"),
        ("openai", responses({"type": "input_image", "image_url": "https://img.example/cat.jpg"}), "image", ""),
        ("openai", responses({"type": "input_file", "file_url": "https://docs.example/a.pdf"}), "file", ""),
        ("anthropic", anthropic(anthropic_image("image/png", 10)), "image", "image"),
        ("anthropic", anthropic({"type": "image", "source": {"type": "url", "url": "https://x/a.png"}}), "image", ""),
        (
            "anthropic",
            anthropic(
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "QQ=="}}
            ),
            "file",
            "document",
        ),
        (
            "anthropic",
            anthropic({"type": "tool_result", "tool_use_id": "t1", "content": [anthropic_image("image/jpeg", 10)]}),
            "image",
            "image",
        ),
    ],
)
def test_denied_modality_is_a_403_naming_the_part(provider: str, body: bytes, modality: str, shape: str) -> None:
    rules = Rules(denied_modalities=[modality])
    found = violation_of(body, rules, provider)
    assert found.status == 403 and found.code == "modality_not_allowed"
    assert found.setting == "policy.denied_modalities"
    assert f"{modality} input is not allowed" in found.message and "denied modalities" in found.message
    assert f"{modality} part of type '{shape}" in found.message and "content[" in found.message
    # Another modality denied: this request passes that rule.
    other = next(name for name in ("image", "audio", "file") if name != modality)
    assert check(provider, "/x", body, None, Rules(denied_modalities=[other])) is None


def test_text_only_requests_pass_every_rule() -> None:
    rules = Rules(denied_modalities=["image", "audio", "file"])
    assert check("openai", "/chat/completions", chat(), "gpt-4o", rules) is None
    assert check("anthropic", "/messages", anthropic(), "claude", rules) is None


# --- media formats ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "body"),
    [
        ("openai", chat(image_url(data_url("image/gif", 10)))),
        ("openai", chat(image_url(f"https://img.example/a/cat.GIF?{SIGNED_URL_SECRET}"))),
        ("openai", responses({"type": "input_image", "image_url": "https://img.example/cat.gif"})),
        ("anthropic", anthropic(anthropic_image("image/gif", 10))),
        ("anthropic", anthropic({"type": "image", "source": {"type": "url", "url": "https://x/y/cat.gif"}})),
    ],
)
def test_image_format_outside_the_gateways_list_is_a_400(provider: str, body: bytes) -> None:
    found = violation_of(body, DEFAULT, provider)
    assert found.status == 400 and found.code == "unsupported_media_format"
    assert found.setting == "policy.image_formats"
    assert "image format 'gif'" in found.message and "policy.image_formats = [jpg, png, webp]" in found.message
    assert "media formats" in found.message


@pytest.mark.parametrize(
    "url",
    [
        data_url("image/jpeg", 10),
        data_url("image/webp", 10),
        "https://img.example/photo.jpeg",
        "https://img.example/photo.JPG",
        "https://img.example/photo.png?size=large",
        "https://img.example/render?id=42",  # no extension: nothing to know client-side
        "https://img.example/photo.unknownext",
    ],
)
def test_accepted_or_unknowable_image_formats_pass(url: str) -> None:
    assert check("openai", "/chat/completions", chat(image_url(url)), "gpt-4o", DEFAULT) is None


def test_audio_format_from_input_audio_and_data_urls() -> None:
    flac = chat({"type": "input_audio", "input_audio": {"data": b64_of(30), "format": "flac"}})
    found = violation_of(flac, DEFAULT)
    assert found.setting == "policy.audio_formats" and "audio format 'flac'" in found.message
    for fmt in ("mp3", "wav"):
        ok = chat({"type": "input_audio", "input_audio": {"data": b64_of(30), "format": fmt}})
        assert check("openai", "/chat/completions", ok, "gpt-4o", DEFAULT) is None
    ogg = responses({"type": "input_audio", "input_audio": {"data": data_url("audio/ogg", 30)}})
    assert violation_of(ogg, DEFAULT).setting == "policy.audio_formats"


def test_formats_follow_the_settings() -> None:
    rules = Rules(image_formats=["gif"], audio_formats=["flac"])
    assert check("openai", "/x", chat(image_url(data_url("image/gif", 10))), None, rules) is None
    assert check("openai", "/x", chat(image_url(data_url("image/png", 10))), None, rules) is not None


def test_files_have_no_format_rule() -> None:
    body = chat({"type": "file", "file": {"file_data": data_url("application/zip", 30), "filename": "a.zip"}})
    assert check("openai", "/chat/completions", body, "gpt-4o", DEFAULT) is None


# --- media sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "make"),
    [
        ("openai", lambda size: chat(image_url(data_url("image/png", size)))),
        ("openai", lambda size: chat({"type": "input_audio", "input_audio": {"data": b64_of(size), "format": "mp3"}})),
        ("openai", lambda size: chat({"type": "file", "file": {"file_data": data_url("application/pdf", size)}})),
        ("openai", lambda size: responses({"type": "input_file", "file_data": b64_of(size), "filename": "a.pdf"})),
        ("anthropic", lambda size: anthropic(anthropic_image("image/webp", size))),
        (
            "anthropic",
            lambda size: anthropic(
                {
                    "type": "document",
                    "source": {"type": "base64", "media_type": "application/pdf", "data": b64_of(size)},
                }
            ),
        ),
    ],
)
@pytest.mark.parametrize("limit", [1000, 1001, 1002])  # each padding length lands on the limit
def test_media_over_the_size_limit_is_a_400_to_the_byte(provider: str, make: Any, limit: int) -> None:
    rules = Rules(max_media_bytes=limit)
    assert check(provider, "/x", make(limit), None, rules) is None
    found = violation_of(make(limit + 1), rules, provider, model=None)
    assert found.status == 400 and found.code == "media_too_large" and found.setting == "policy.max_media_bytes"
    assert f"{limit + 1:,} bytes" in found.message and f"policy.max_media_bytes = {limit}" in found.message
    assert "media size" in found.message


def test_default_limit_is_200_mb_and_messages_say_mb() -> None:
    assert DEFAULT.max_media_bytes == 200 * MB == PolicySettings().max_media_bytes
    found = violation_of(chat(image_url(data_url("image/png", 3 * MB))), Rules(max_media_bytes=2 * MB))
    assert "3.0 MB (3,145,728 bytes)" in found.message and "2.0 MB" in found.message


def test_urls_and_file_ids_have_no_size_client_side() -> None:
    rules = Rules(max_media_bytes=1)
    assert check("openai", "/x", chat(image_url("https://img.example/huge.png")), None, rules) is None
    assert check("openai", "/x", chat({"type": "file", "file": {"file_id": "file-1"}}), None, rules) is None


@given(st.binary(max_size=64))
def test_size_from_the_base64_length_is_the_decoded_length(data: bytes) -> None:
    encoded = base64.b64encode(data).decode()
    body = {"messages": [{"content": [{"type": "input_audio", "input_audio": {"data": encoded, "format": "wav"}}]}]}
    (part,) = media_parts(body)
    assert part.size == len(data)


def test_media_checks_off_leaves_only_the_denied_modalities() -> None:
    rules = Rules(check_media=False, max_media_bytes=1)
    assert check("openai", "/x", chat(image_url(data_url("image/gif", 100))), None, rules) is None
    rules = Rules(check_media=False, denied_modalities=["image"])
    assert check("openai", "/x", chat(image_url(data_url("image/gif", 100))), None, rules) is not None


def test_messages_never_show_the_data_or_the_urls_path_and_query() -> None:
    body = chat(image_url(f"https://img.example/private/{PAYLOAD_MARK}/cat.gif?{SIGNED_URL_SECRET}"))
    found = violation_of(body, DEFAULT)
    assert "an https URL ending in .gif" in found.message and "private" not in found.message


# --- parsing once -----------------------------------------------------------------------------------


def test_a_body_without_media_markers_is_never_parsed() -> None:
    parsed = ParsedBody(chat())
    assert not needs_document(parsed.raw, DEFAULT)
    assert check("openai", "/chat/completions", parsed, "gpt-4o", Rules(denied_modalities=["image"])) is None
    assert not parsed.parsed


def test_a_body_with_media_is_parsed_once_and_the_document_shared() -> None:
    parsed = ParsedBody(chat(image_url("https://img.example/cat.png")))
    assert needs_document(parsed.raw, DEFAULT)
    assert check("openai", "/chat/completions", parsed, "gpt-4o", DEFAULT) is None
    assert parsed.parsed
    document = parsed.document()
    assert document is not None and document is parsed.document()  # aliasing reuses this object
    assert document["model"] == "gpt-4o"


def test_a_text_mentioning_image_is_not_a_marker() -> None:
    body = json.dumps({"messages": [{"role": "user", "content": 'the "image" and "file" words'}]}).encode()
    assert not needs_document(body, DEFAULT)


def test_no_rule_means_no_work() -> None:
    rules = Rules(check_media=False)
    assert not rules.active
    parsed = ParsedBody(chat(image_url(data_url("image/gif", 10))))
    assert check("openai", "/x", parsed, "any", rules) is None and not parsed.parsed


@pytest.mark.parametrize("body", [None, b"", b"not json", b'{"messages": "image_url"', b"[1, 2]", b'"image"'])
def test_bodies_that_are_not_json_objects_pass(body: bytes | None) -> None:
    assert check("openai", "/x", body, None, Rules(denied_modalities=["image"])) is None


# --- the error the caller gets ----------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_violation_becomes_an_error_body_in_the_providers_format(provider: str) -> None:
    found = violation_of(chat(image_url(data_url("image/gif", 10))), DEFAULT)
    document = json.loads(error_body(provider, found.status, found.message, found.code))
    if provider == "anthropic":
        assert document["error"]["type"] == "invalid_request_error"
    else:
        assert document["error"]["code"] == "unsupported_media_format"
    assert document["error"]["message"] == found.message


# --- gateway refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(FINAL_CODES))
def test_every_final_gateway_code_has_a_clear_description(code: str) -> None:
    message = describe_gateway_refusal(403, code)
    assert message is not None and code in message and "(403)" in message


def test_ip_and_model_refusals_say_what_to_do() -> None:
    ip = describe_gateway_refusal(403, "access_denied")
    assert ip is not None and "IP" in ip and "allow-list" in ip
    quota = describe_gateway_refusal(401, "insufficient_user_quota")
    assert quota is not None and "quota" in quota and "retrying cannot help" in quota
    model = describe_gateway_refusal(403, None)
    assert model is not None and "model" in model and "policy.allowed_models" in model


def test_other_answers_are_not_refusals() -> None:
    assert describe_gateway_refusal(500, None) is None
    assert describe_gateway_refusal(429, "rate_limit_exceeded") is None
    assert describe_gateway_refusal(400, "invalid_request_error") is None


# --- settings ---------------------------------------------------------------------------------------


def test_policy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIBU_POLICY__ALLOWED_MODELS", "gpt-4o*, claude-*")
    monkeypatch.setenv("YIBU_POLICY__DENIED_MODALITIES", '["Audio", "file"]')
    monkeypatch.setenv("YIBU_POLICY__IMAGE_FORMATS", "JPEG,png")
    monkeypatch.setenv("YIBU_POLICY__MAX_MEDIA_BYTES", "1048576")
    policy = load_settings().policy
    assert policy.allowed_models == ["gpt-4o*", "claude-*"]
    assert policy.denied_modalities == ["audio", "file"]
    assert policy.image_formats == ["jpg", "png"] and policy.max_media_bytes == MB
    rules = Rules.from_settings(policy)
    assert rules.model_allowed("claude-opus-4") and not rules.model_allowed("o3")


def test_policy_defaults() -> None:
    policy = load_settings().policy
    assert policy.allowed_models == [] and policy.denied_modalities == []
    assert policy.image_formats == ["jpg", "png", "webp"] and policy.audio_formats == ["mp3", "wav"]
    assert policy.check_media and policy.active


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("YIBU_POLICY__DENIED_MODALITIES", "video", "'image', 'audio' or 'file'"),
        ("YIBU_POLICY__IMAGE_FORMATS", "jpg,tga", "'tga' is not a format known here"),
        ("YIBU_POLICY__MAX_MEDIA_BYTES", "0", "greater than or equal to 1"),
    ],
)
def test_bad_policy_settings_are_reported_with_their_source(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert expected in str(caught.value) and name in str(caught.value)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("JPEG", "jpg"), (".jpeg", "jpg"), ("image/jpeg", "jpg"), ("audio/mpeg", "mp3"), ("audio/x-wav", "wav")],
)
def test_format_names(name: str, expected: str) -> None:
    assert normalize_format(name) == expected


def test_aliasing_and_policy_share_one_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """A body with media and an aliased model is parsed once, by whichever needs it first."""
    from yibu_middleware.core import policy as policy_module
    from yibu_middleware.core.request import prepare
    from yibu_middleware.core.routes import Route

    parses = []
    real_loads = json.loads

    def counting_loads(raw: Any) -> Any:
        parses.append(len(raw))
        return real_loads(raw)

    monkeypatch.setattr(policy_module.json, "loads", counting_loads)  # the json module: every parse counts
    body = chat(image_url(data_url("image/png", 3000)), model="vision")
    parsed = ParsedBody(body)
    route = Route("api.openai.com", "openai", "/v1")
    gateway = prepare(route, "POST", "/v1/chat/completions", "", [], body, None, {"vision": "gpt-4o"}, parsed)
    assert gateway.model == "gpt-4o" and real_loads(gateway.body or b"")["model"] == "gpt-4o"
    assert check("openai", gateway.path, parsed, gateway.model, DEFAULT) is None
    assert parses == [len(body)]


# --- the model is the top-level field, read the same way by policy, aliasing and limits (item 13) ----

FORBIDDEN = "gpt-5-forbidden"
ALLOW_4O = Rules(allowed_models=["gpt-4o*"])


def policy_verdict(body: bytes, rules: Rules = ALLOW_4O, aliases: dict[str, str] | None = None) -> Violation | None:
    """What the call path decides: the model read by ``prepare`` (as every adapter does), then ``check``."""
    from yibu_middleware.core.request import prepare
    from yibu_middleware.core.routes import Route

    parsed = ParsedBody(body)
    route = Route("api.openai.com", "openai", "/v1")
    gateway = prepare(route, "POST", "/v1/chat/completions", "", [], body, None, aliases or {}, parsed)
    return check("openai", gateway.path, parsed, gateway.model, rules)


def tool_use_turn(model_in_input: str) -> dict[str, Any]:
    block = {"type": "tool_use", "id": "t1", "name": "switch", "input": {"model": model_in_input}}
    return {"role": "assistant", "content": [block]}


@pytest.mark.parametrize(
    "document",
    [
        # A tool call's input (Anthropic: an object, so its "model" key is in the body as it is).
        {"messages": [tool_use_turn("gpt-4o")], "model": FORBIDDEN},
        # metadata.model before the top-level field.
        {"metadata": {"model": "gpt-4o"}, "model": FORBIDDEN, "messages": []},
        # A response_format schema with a "model" property.
        {"response_format": {"json_schema": {"schema": {"properties": {"model": "gpt-4o"}}}}, "model": FORBIDDEN},
    ],
    ids=["tool-input", "metadata", "schema"],
)
def test_a_nested_model_key_does_not_count(document: dict[str, Any]) -> None:
    found = policy_verdict(json.dumps(document).encode())
    assert found is not None and found.code == "model_not_allowed" and FORBIDDEN in found.message


def test_a_top_level_model_spelt_with_escapes_is_read() -> None:
    body = b'{"metadata": {"model": "gpt-4o"}, "mod\\u0065l": "' + FORBIDDEN.encode() + b'"}'
    assert json.loads(body)["model"] == FORBIDDEN  # what the gateway reads
    found = policy_verdict(body)
    assert found is not None and FORBIDDEN in found.message


def test_duplicate_model_keys_are_read_as_json_parsers_read_them() -> None:
    body = b'{"model": "gpt-4o", "messages": [], "model": "' + FORBIDDEN.encode() + b'"}'
    assert policy_verdict(body) is not None


def test_a_model_value_with_escapes_is_decoded() -> None:
    assert policy_verdict(b'{"model": "gpt\\u002d4o-mini", "messages": []}') is None
    found = policy_verdict(b'{"model": "gpt-5\\u002dmini", "messages": []}')
    assert found is not None and "'gpt-5-mini'" in found.message


@pytest.mark.parametrize("length", [199, 200, 201, 5000])
def test_a_long_model_name_is_read_whole(length: int) -> None:
    name = "gpt-4o" + "x" * (length - 6)
    body = json.dumps({"messages": [], "model": name}).encode()
    assert policy_verdict(body) is None  # gpt-4o* allows it: read correctly
    found = policy_verdict(body, Rules(allowed_models=["gpt-4o"]))
    assert found is not None and found.code == "model_not_allowed"  # not "not found, so allowed"


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": 5, "messages": []}',
        b'{"model": null}',
        b'{"model": ["gpt-4o"]}',
        # Not JSON, and two "model" keys: which one a lenient parser would take cannot be known.
        b'{"model": "gpt-4o", "messages": [], "model": "x"',
        # Nested past the parser's depth, with two "model" keys so that only a parse can tell.
        b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b', "model": "gpt-4o", "model": "x"}',
    ],
    ids=["number", "null", "list", "truncated", "deep"],
)
def test_a_model_that_cannot_be_read_is_refused_under_an_allow_list(body: bytes) -> None:
    found = policy_verdict(body)
    assert found is not None and found.status == 403 and found.code == "model_unreadable"
    assert "policy.allowed_models" in found.message and "could not be read" in found.message
    assert policy_verdict(body, Rules()) is None  # no allow-list: nothing to enforce


@pytest.mark.parametrize("body", [b"", b'{"messages": []}', b'{"input": "x", "metadata": {"note": "model"}}'])
def test_a_request_without_a_model_passes(body: bytes) -> None:
    assert policy_verdict(body) is None


def test_anthropic_message_batches_are_checked_request_by_request() -> None:
    def batch(*models: Any) -> bytes:
        requests = [{"custom_id": str(i), "params": {"model": m, "max_tokens": 5}} for i, m in enumerate(models)]
        return json.dumps({"requests": requests}).encode()

    rules = Rules(allowed_models=["claude-*"])
    assert check("anthropic", "/messages/batches", batch("claude-a", "claude-b"), None, rules) is None
    found = check("anthropic", "/messages/batches", batch("claude-a", "gpt-5"), None, rules)
    assert found is not None and "'gpt-5'" in found.message
    found = check("anthropic", "/messages/batches", batch("claude-a", 7), None, rules)
    assert found is not None and found.code == "model_unreadable"


def test_aliases_and_limits_see_the_top_level_model() -> None:
    from yibu_middleware.core.request import read_body

    body = json.dumps({"messages": [tool_use_turn("gpt-4")], "model": "gpt-4o"}).encode()
    assert read_body(body, {"gpt-4": "gpt-5.2"}) == ("gpt-4o", "gpt-4o", body, False)
    body = json.dumps({"metadata": {"model": "gpt-4o"}, "model": "gpt-4", "stream": True}).encode()
    asked, sent, new, stream = read_body(body, {"gpt-4": "gpt-5.2"})
    assert (asked, sent, stream) == ("gpt-4", "gpt-5.2", True)
    assert json.loads(new or b"") == {"metadata": {"model": "gpt-4o"}, "model": "gpt-5.2", "stream": True}
    long_name = "m" * 300
    assert read_body(json.dumps({"model": long_name}).encode(), {})[0] == long_name


@pytest.mark.parametrize("client", ["httpx", "requests", "aiohttp"])
def test_a_forbidden_model_behind_a_nested_allowed_one_is_refused_end_to_end(gateway: Any, client: str) -> None:
    import asyncio

    import aiohttp
    import httpx
    import requests
    from helpers import OPENAI_KEY, install_for
    from offline import offline

    install_for(gateway, policy={"allowed_models": ["gpt-4o*"]})
    body = {"metadata": {"model": "gpt-4o"}, "model": FORBIDDEN, "messages": [{"role": "user", "content": "hi"}]}
    url, headers = "https://api.openai.com/v1/chat/completions", {"Authorization": f"Bearer {OPENAI_KEY}"}

    async def go() -> int:
        async with aiohttp.ClientSession() as session, session.post(url, json=body, headers=headers) as response:
            return response.status

    with offline():  # were it not routed, it would fail here rather than leave
        if client == "httpx":
            status = httpx.post(url, json=body, headers=headers).status_code
        elif client == "requests":
            status = requests.post(url, json=body, headers=headers, timeout=10).status_code
        else:
            status = asyncio.run(go())
    assert status == 403
    assert gateway.records == []  # nothing was sent


# --- uploads: the model of a multipart form -------------------------------------------------------


def form(*fields: tuple[str, bytes, str | None], boundary: bytes = b"b0undary") -> bytes:
    """A multipart/form-data body of (name, content, filename or None) fields."""
    parts = []
    for name, content, filename in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        parts.append(b"--" + boundary + f"\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n")
    return b"".join(parts) + b"--" + boundary + b"--\r\n"


def test_a_forms_model_field_is_read_and_a_file_cannot_stand_in_for_it() -> None:
    from yibu_middleware.core.request import form_model, read_body

    fake = b'\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-4o\r\n'
    body = form(("file", fake, "a.wav"), ("model", FORBIDDEN.encode(), None), ("language", b"en", None))
    assert form_model(body) == FORBIDDEN
    assert read_body(body, {})[:2] == (FORBIDDEN, FORBIDDEN)
    assert form_model(form(("file", fake, "a.wav"), ("purpose", b"assistants", None))) is None
    assert form_model(form(("model", b"whisper-1", "model.txt"))) is None  # a file named "model"
    assert form_model(b"--b\r\nno end") is None
    assert check("openai", "/audio/transcriptions", body, FORBIDDEN, Rules(allowed_models=["gpt-4o"])) is not None


def test_a_streamed_body_cannot_be_checked_under_an_allow_list() -> None:
    rules = Rules(allowed_models=["gpt-4o"])
    violation = check("openai", "/audio/transcriptions", None, None, rules, body_unread=True)
    assert violation is not None and violation.code == "model_unreadable"
    assert "streamed" in violation.message
    assert check("openai", "/models", None, None, rules) is None  # no body at all: nothing to check


@pytest.mark.parametrize("client", ["openai", "requests"])
def test_an_uploads_model_is_checked_against_the_allow_list(gateway: Any, client: str) -> None:
    """The openai SDK streams its multipart form over httpx2 and requests encodes it to bytes:
    both are read, refused for a forbidden model and sent for an allowed one."""
    import openai
    import requests
    from helpers import GATEWAY_KEY, OPENAI_KEY, install_for
    from offline import offline

    install_for(gateway, policy={"allowed_models": ["whisper-1"]})
    audio = ("speech.wav", b"RIFF\x00\x00\x00\x00WAVEfmt ", "audio/wav")

    def transcribe(model: str) -> int:
        if client == "openai":
            sdk = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
            try:
                sdk.audio.transcriptions.create(model=model, file=audio)
            except openai.APIStatusError as exc:
                return exc.status_code
            return 200
        url = "https://api.openai.com/v1/audio/transcriptions"
        headers = {"Authorization": f"Bearer {OPENAI_KEY}"}
        return requests.post(url, data={"model": model}, files={"file": audio}, headers=headers, timeout=10).status_code

    with offline():
        assert transcribe(FORBIDDEN) == 403
        assert gateway.records == []  # nothing was sent
        transcribe("whisper-1")
    assert [record.path for record in gateway.records] == ["/v1/audio/transcriptions"]
    assert gateway.records[0].key == GATEWAY_KEY


def test_an_unread_stream_is_refused_under_an_allow_list(gateway: Any) -> None:
    import httpx
    from helpers import OPENAI_KEY, install_for
    from offline import offline

    install_for(gateway, policy={"allowed_models": ["gpt-4o"]})

    def chunks() -> Any:
        yield b'{"model": "' + FORBIDDEN.encode() + b'", "messages": []}'

    with offline():
        response = httpx.post(
            "https://api.openai.com/v1/chat/completions",
            content=chunks(),
            headers={"Authorization": f"Bearer {OPENAI_KEY}"},
        )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "model_unreadable"
    assert gateway.records == []
