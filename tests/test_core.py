"""The decisions, with no sockets: routes, request rewriting, node URLs."""

from __future__ import annotations

import json

import pytest

from yibu_middleware.core.nodes import Node
from yibu_middleware.core.request import prepare, read_body, scan_headers, swap_credentials
from yibu_middleware.core.routes import Route, RouteTable, gateway_path

OPENAI = Route("api.openai.com", "openai", "/v1")
ANTHROPIC = Route("api.anthropic.com", "anthropic", "/v1")


@pytest.mark.parametrize(
    ("route", "path", "expected"),
    [
        (OPENAI, "/v1/chat/completions", "/chat/completions"),
        (ANTHROPIC, "/v1/messages", "/messages"),
        (OPENAI, "/v1", "/"),
        (OPENAI, "/v10/other", "/v10/other"),  # not the prefix: kept whole
        (Route("api.groq.com", "openai", "/openai/v1"), "/openai/v1/models", "/models"),
        (Route("api.deepseek.com", "openai", ""), "/chat/completions", "/chat/completions"),
    ],
)
def test_gateway_path(route: Route, path: str, expected: str) -> None:
    assert gateway_path(route, path) == expected


def test_route_table_matches_only_listed_hosts() -> None:
    table = RouteTable([OPENAI])
    assert table.match("api.openai.com", 443, "/v1/models") is OPENAI
    assert table.match("openai.com", 443, "/v1/models") is None
    assert table.match("127.0.0.1", 443, "/v1/models") is None


def test_node_url_keeps_base_path_and_query() -> None:
    node = Node("https://eu.gw.example:8443/v1")
    assert (
        node.url_for("/chat/completions", "api-version=2")
        == "https://eu.gw.example:8443/v1/chat/completions?api-version=2"
    )
    assert Node("http://10.0.0.1/v1").url_for("/models", "") == "http://10.0.0.1:80/v1/models"


def test_credentials_are_swapped_in_every_credential_header() -> None:
    headers = [
        (b"Authorization", b"Bearer sk-provider"),
        (b"x-api-key", b"sk-ant-provider"),
        (b"api-key", b"azure-provider"),
        (b"Host", b"api.openai.com"),
        (b"Content-Length", b"12"),
        (b"accept", b"application/json"),
    ]
    out, swapped = swap_credentials(headers, b"sk-gateway")
    assert out == [
        (b"Authorization", b"Bearer sk-gateway"),
        (b"x-api-key", b"sk-gateway"),
        (b"api-key", b"sk-gateway"),
        (b"accept", b"application/json"),
    ]
    assert swapped == ["sk-provider", "sk-ant-provider", "azure-provider"]


def test_without_gateway_key_the_callers_key_passes() -> None:
    out, swapped = swap_credentials([(b"authorization", b"Bearer sk-own")], None)
    assert out == [(b"authorization", b"Bearer sk-own")]
    assert swapped == []


def test_alias_rewrites_model_and_nothing_else() -> None:
    body = json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "héllo"}], "stream": True}).encode()
    asked, sent, new, stream = read_body(body, {"gpt-4": "gpt-5.2"})
    assert stream is True
    assert (asked, sent) == ("gpt-4", "gpt-5.2")
    assert new is not None
    assert json.loads(new) == {**json.loads(body), "model": "gpt-5.2"}


def test_alias_swaps_the_value_in_place_and_keeps_every_other_byte() -> None:
    body = b'{"messages": [{"role": "user", "content": "h\\u00e9 \\"model\\": \\"gpt-4\\""}], "model" : "gpt-4"}'
    new = read_body(body, {"gpt-4": 'gpt-"5"'})[2]
    assert new == body.replace(b'"model" : "gpt-4"', b'"model" : "gpt-\\"5\\""')
    assert json.loads(new or b"")["model"] == 'gpt-"5"'


def test_alias_with_a_nested_model_key_rewrites_the_top_level_one_only() -> None:
    body = json.dumps({"metadata": {"model": "gpt-4"}, "model": "gpt-4", "messages": []}).encode()
    new = json.loads(read_body(body, {"gpt-4": "gpt-5.2"})[2] or b"")
    assert new == {"metadata": {"model": "gpt-4"}, "model": "gpt-5.2", "messages": []}


@pytest.mark.parametrize(
    "body",
    [None, b"", b"not json", b'["model"]', b'{"model": 3}', b'{"input": "no model here"}', b'{"model": "x"'],
)
def test_alias_leaves_other_bodies_alone(body: bytes | None) -> None:
    assert read_body(body, {"x": "y"})[2] is body


def test_alias_not_applied_when_model_unlisted() -> None:
    body = b'{"model": "gpt-4o"}'
    assert read_body(body, {"gpt-4": "gpt-5.2"}) == ("gpt-4o", "gpt-4o", body, False)


def test_prepare_builds_the_gateway_request() -> None:
    call = prepare(
        OPENAI,
        "POST",
        "/v1/chat/completions",
        "x=1",
        [(b"authorization", b"Bearer sk-p")],
        b'{"model":"gpt-4"}',
        b"sk-gw",
        {"gpt-4": "gpt-5.2"},
    )
    assert (call.path, call.query, call.model, call.requested_model) == (
        "/chat/completions",
        "x=1",
        "gpt-5.2",
        "gpt-4",
    )
    assert call.headers == ((b"authorization", b"Bearer sk-gw"),)
    assert call.swapped_keys == ("sk-p",)


def test_header_scan_never_mixes_calls() -> None:
    def sent(key: bytes, stream: bool = False) -> tuple[object, ...]:
        headers = [
            (b"Authorization", b"Bearer " + key),
            (b"Host", b"api.openai.com"),
            (b"X-Stainless-Retry-Count", b"0"),
        ]
        scan = scan_headers(headers, b"sk-gw", stream)
        return scan.headers, scan.swapped, scan.sdk_retried

    first = sent(b"sk-one")
    assert first == (((b"Authorization", b"Bearer sk-gw"), (b"X-Stainless-Retry-Count", b"0")), ("sk-one",), False)
    assert sent(b"sk-one") == first  # the same headers again: the same scan
    assert sent(b"sk-two")[1] == ("sk-two",)  # another key: its own scan
    assert sent(b"sk-one", stream=True)[0][-1] == (b"accept-encoding", b"identity")
    assert sent(b"sk-one")[1] == ("sk-one",)


def test_header_scan_reads_the_sdk_headers() -> None:
    pairs = [
        (b"X-Api-Key", b"sk-provider"),
        (b"Content-Length", b"2"),
        (b"X-Stainless-Retry-Count", b"2"),
        (b"X-Stainless-Read-Timeout", b"12.5"),
    ]
    from_pairs = scan_headers(pairs, b"sk-gw", False)
    assert from_pairs.headers == (
        (b"X-Api-Key", b"sk-gw"),
        (b"X-Stainless-Retry-Count", b"2"),
        (b"X-Stainless-Read-Timeout", b"12.5"),
    )
    assert from_pairs.swapped == ("sk-provider",)
    assert from_pairs.sdk_retried is True
    assert from_pairs.sdk_read_timeout == 12.5
    unreadable = scan_headers([(b"x-stainless-read-timeout", b"soon")], None, False)
    assert unreadable.sdk_read_timeout is None and unreadable.sdk_retried is False


def test_attempt_limits_from_the_deadline_and_a_streams_first_token_timeout() -> None:
    from yibu_middleware.core.plan import attempt_limits

    assert attempt_limits(None, None) == (None, None)  # no deadline: nothing is cut
    assert attempt_limits(5.0, None) == (5.0, 5.0)
    assert attempt_limits(5.0, 2.0) == (5.0, 2.0)  # a stream's reads: its first token sooner
    assert attempt_limits(1.0, 2.0) == (1.0, 1.0)  # but never past the deadline
    assert attempt_limits(None, 2.0) == (None, 2.0)
