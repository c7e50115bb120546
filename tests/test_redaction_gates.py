"""The shortcuts that make a log line cheap to mask must never let a secret through.

``redact_text`` skips a rule when the line holds none of its trigger words, and first skips
every rule when the line holds none of the fewest words that cover them all; ``KnownValues``
looks words up only where a word can start. Each is checked here against the slow way
(every rule run on every line; every position tried), which must give the same text.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import wrapt
from hypothesis import given, settings
from hypothesis import strategies as st

import yibu_middleware
from yibu_middleware.core import redact
from yibu_middleware.core.redact import SECRET_HEADERS, SECRET_QUERY, KnownValues, redact_text

OPAQUE = "opaqueSecretValue0123456789"  # a secret of no known shape: found only by its place


def ungated(text: str, extra_headers: tuple[str, ...] = (), extra_patterns: tuple[str, ...] = ()) -> str:
    """Every rule run on the line, whatever words it holds: what the gates must not change."""
    for _, pattern, replace in redact._rules(extra_headers, extra_patterns):
        text = pattern.sub(replace, text)
    return text


def variants(word: str) -> list[str]:
    return sorted({word, word.upper(), word.title()})


HEADER_LINES = [
    line
    for name in (*SECRET_HEADERS, "x-tenant-secret")
    for spelt in variants(name)
    for line in (
        f"{spelt}: {OPAQUE}",
        f"{{'{spelt}': '{OPAQUE}'}}",
        f'"{spelt}": "{OPAQUE}"',
        f"[(b'{spelt}', b'{OPAQUE}')]",
    )
]
SHAPED_KEYS = [
    "sk-proj-" + "a1B2" * 6,
    "sk-ant-api03-" + "a1B2" * 6,
    "sk-" + "a1B2" * 6,
    "AIza" + "a1B2c3D4e5" * 3 + "f6G7h",
    "hf_" + "abCD" * 9,
    "gsk_" + "a1B2" * 5,
    "xai-" + "a1B2" * 5,
    "pplx-" + "a1B2" * 5,
    "nvapi-" + "a1B2" * 5,
    "r8_" + "a1B2" * 5,
    "eyJhbGciOiJI.eyJzdWIiOiIx.c2lnbmF0dXJl",
]
OTHER_LINES = [
    *(f"sent {key} along" for key in SHAPED_KEYS),
    *(f"{scheme} {OPAQUE}" for scheme in ("Bearer", "Basic", "Token")),
    f"DefaultEndpointsProtocol=https;AccountKey={OPAQUE}==;EndpointSuffix=core",
    f"https://user:{OPAQUE}@db.example.com/x",
    *(f"GET https://h.example.com/v1?{name}={OPAQUE}&b=1" for name in SECRET_QUERY),
    *(f"GET https://h.example.com/v1?x=1&{name.upper()}={OPAQUE}" for name in SECRET_QUERY),
]


def test_every_rule_word_holds_a_trigger_word() -> None:
    """The first gate is sound: a line holding any rule's word holds a trigger word."""
    triggers = redact._triggers(("x-tenant-secret",), ())
    for words, _, _ in redact._rules(("x-tenant-secret",), ()):
        for word in words:
            assert any(trigger in word for trigger in triggers), word
    assert len(triggers) < sum(len(words) for words, _, _ in redact._rules(("x-tenant-secret",), ()))


@pytest.mark.parametrize("line", HEADER_LINES + OTHER_LINES)
def test_each_trigger_word_and_its_variants_still_mask_the_secret(line: str) -> None:
    masked = redact_text(line, extra_headers=("x-tenant-secret",))
    assert masked == ungated(line, ("x-tenant-secret",)), line
    assert OPAQUE not in masked and not any(key in masked for key in SHAPED_KEYS), masked


def test_extra_patterns_run_on_lines_with_no_trigger_word() -> None:
    line = "tenant secret TENANT-0123456789 in a line with no trigger word"
    assert redact._triggers((), (r"TENANT-\d{10}",))  # the line below holds none of them
    assert not any(word in line.lower() for word in redact._triggers((), (r"TENANT-\d{10}",)))
    assert "TENANT-0123456789" not in redact_text(line, extra_patterns=(r"TENANT-\d{10}",))


PIECES = st.sampled_from(
    [
        *SECRET_HEADERS,
        *(name.upper() for name in SECRET_HEADERS),
        *SECRET_QUERY,
        "Bearer",
        "basic",
        "TOKEN",
        "AccountKey=",
        "://u:",
        "@",
        "?",
        "&",
        "=",
        ": ",
        "'",
        '"',
        " ",
        "\n",
        ",",
        OPAQUE,
        *SHAPED_KEYS,
        "plain words",
        "https://api.openai.com/v1/chat/completions",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(PIECES, max_size=12).map("".join))
def test_gated_masking_is_the_same_as_running_every_rule(line: str) -> None:
    assert redact_text(line) == ungated(line)


WORDISH = st.sampled_from([*"aZ9_- .é\n", "--", "x1y2z3w4"])


@settings(max_examples=600, deadline=None)
@given(st.lists(WORDISH, max_size=40).map("".join))
def test_words_found_after_a_separator_are_the_words_found_anywhere(text: str) -> None:
    """KnownValues looks up what _WORD_AFTER_SEPARATOR finds; _WORD (tried at every position)
    is what masks: the two must find the same words, or a remembered key could be missed."""
    assert redact._WORD_AFTER_SEPARATOR.findall(" " + text) == redact._WORD.findall(text)


@pytest.mark.parametrize(
    "line",
    [
        "{key}",
        "-{key}-",
        "--{key}--x",
        "é{key}é",
        "a-b {key}.",
        "short-1 {key}",
        "x1234567-{key}",  # joined by "-": one longer word, not the key
        "xx\n{key}\n",
    ],
)
def test_a_remembered_key_is_found_wherever_the_old_lookup_found_it(line: str) -> None:
    key = "user0000001key00007919x"
    values = KnownValues()
    values.add(key)
    text = line.format(key=key)
    expected = redact._WORD.sub(
        lambda found: redact.mask(found.group()) if found.group() == key else found.group(), text
    )
    assert values.mask_in(text) == expected


def test_another_tools_make_record_wrapper_still_runs_under_ours() -> None:
    """The hook is a plain function now (not wrapt, for speed): a wrapper another tool put on
    ``Logger.makeRecord`` first is still called, bound to the logger, and is put back on
    uninstall."""
    seen: list[tuple[str, object]] = []

    def other_tool(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        record = wrapped(*args, **kwargs)
        seen.append((record.getMessage(), instance))
        return record

    before = logging.Logger.__dict__["makeRecord"]
    wrapt.wrap_function_wrapper(logging.Logger, "makeRecord", other_tool)
    theirs = logging.Logger.__dict__["makeRecord"]
    try:
        yibu_middleware.install({"nodes": ["http://127.0.0.1:9/v1"], "api_key": "sk-test-gateway-0000000000000000"})
        logger = logging.getLogger("app")
        record = logger.makeRecord("app", logging.INFO, __file__, 1, "key %s", (SHAPED_KEYS[0],), None)
        assert seen == [(f"key {SHAPED_KEYS[0]}", logger)]  # theirs ran, bound, before the mask
        assert SHAPED_KEYS[0] not in record.getMessage()
        yibu_middleware.uninstall()
        assert logging.Logger.__dict__["makeRecord"] is theirs
    finally:
        yibu_middleware.uninstall()
        logging.Logger.makeRecord = before  # type: ignore[method-assign]
