"""Masking by exact value (issue 14, items 8 and 17) and the extra patterns' safety (item 8).

A provider key swapped out at run time is masked by value in every later log line. That
must never mask ordinary text (a key "t" or "EMPTY" is a placeholder, not a secret), must
not cost more per record as more keys are seen, and must not hold every key ever seen.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import anthropic
import openai
import pytest
from helpers import GATEWAY_KEY, install_for, root_output

import yibu_middleware
from yibu_middleware import runtime
from yibu_middleware.core.redact import KnownValues, redact_text
from yibu_middleware.errors import ConfigError
from yibu_middleware.simulator import GatewaySimulator

ORDINARY = "the test of the EMPTY path returned data: tt, changeme and password are words, t=1 2026-12-04"


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    with root_output(logging.INFO) as stream:
        yield stream


@pytest.mark.parametrize("placeholder", ["t", "EMPTY", "test", "sk-xxx", "changeme", "password"])
def test_placeholder_provider_keys_never_mask_ordinary_text(
    placeholder: str, gateway: GatewaySimulator, output: io.StringIO
) -> None:
    """anthropic's own tests use api_key="t"; "EMPTY" and "test" are common for local models."""
    install_for(gateway)
    claude = anthropic.Anthropic(api_key=placeholder, max_retries=0)
    claude.messages.create(model="claude-sonnet-5-5", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    gpt = openai.OpenAI(api_key=placeholder, max_retries=0)
    gpt.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert {record.key for record in gateway.records} == {GATEWAY_KEY}  # both calls were swapped
    logging.getLogger("app").warning("%s", ORDINARY)
    logging.getLogger("app").warning(ORDINARY)
    assert output.getvalue().endswith(f"{ORDINARY}\n{ORDINARY}\n"), output.getvalue()
    assert "POST https://api.anthropic.com/v1/messages" in output.getvalue()  # the SDK's own lines too


OPAQUE = "opaque7Key0With0No0Known0Shape42"  # a provider key of no known shape: masked by value only


def test_a_swapped_key_is_masked_by_value_wherever_it_stands_alone(
    gateway: GatewaySimulator, output: io.StringIO
) -> None:
    install_for(gateway)
    anthropic.Anthropic(api_key=OPAQUE, max_retries=0).messages.create(
        model="claude-sonnet-5-5", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
    )
    log = logging.getLogger("app")
    for line in (
        OPAQUE,
        f"key {OPAQUE}.",
        f"({OPAQUE})",
        f"'{OPAQUE}'",
        f"k={OPAQUE}&x=1",
        f"{OPAQUE}:x",
        f"-{OPAQUE}",
    ):
        log.warning("%s", line)
    assert OPAQUE not in output.getvalue() and output.getvalue().count("...pe42") == 7
    # Word boundaries: a longer word that only contains the key is another value.
    log.warning("%s", f"x{OPAQUE}y")
    assert output.getvalue().endswith(f"x{OPAQUE}y\n")


def test_exact_values_need_eight_characters_and_a_digit() -> None:
    values = KnownValues(capacity=10)
    for value in ("t", "EMPTY", "test", "1234567", "changeme", "password", "not-needed-key"):
        values.add(value)
    assert len(values) == 0
    values.add("abcd1234")
    assert len(values) == 1 and redact_text("a abcd1234 b", values) == "a *** b"
    # The gateway key is a secret whatever it looks like, as long as it is not a mere letter.
    values.add("letters-only-gateway-key", any_shape=True)
    assert redact_text("x letters-only-gateway-key y", values) == "x ...-key y"


def test_remembered_keys_are_bounded_and_recent_ones_kept(gateway: GatewaySimulator) -> None:
    install_for(gateway, redaction={"remembered_keys": 1000})
    current = runtime.current()
    assert current is not None
    keys = [f"user{number:06d}opaque0key0abcdef" for number in range(5000)]
    for key in keys:
        current.remember_swapped([key])
    current.remember_swapped([keys[0]])  # in use again: it is the most recent now
    assert len(current.known_values) == 1000
    for key in (keys[0], keys[-1], keys[-999]):
        assert key not in current.redact(f"calling with {key} now")
    assert GATEWAY_KEY not in current.redact(f"gateway {GATEWAY_KEY}")  # never pushed out


def test_many_keys_mask_the_right_ones(gateway: GatewaySimulator) -> None:
    install_for(gateway, redaction={"remembered_keys": 20000})
    current = runtime.current()
    assert current is not None
    current.remember_swapped([f"tenant{number:05d}Key0abcdefgh" for number in range(20000)])
    line = "tenant00042Key0abcdefgh and tenant00042Key0abcdefgX and tenant19999Key0abcdefgh"
    assert current.redact(line) == "...efgh and tenant00042Key0abcdefgX and ...efgh"


@pytest.mark.parametrize(
    "pattern",
    [
        r"(a+)+$",
        r"(a*)*b",
        r"(\w+\s?)*x",
        r"(?:[a-z]+-?)+!",
        r"(a|aa)+$",
        r"(a|a?)+",
        r"(x+x+)+y",
        r"(\d|\d\d)+x",
        r"\w+\w+x",
        r".*.*=",
    ],
)
def test_a_pattern_that_can_backtrack_forever_is_refused(pattern: str) -> None:
    with pytest.raises(ConfigError) as caught:
        yibu_middleware.install(
            {"api_key": GATEWAY_KEY, "nodes": ["http://127.0.0.1:9/v1"], "redaction": {"extra_patterns": [pattern]}}
        )
    message = str(caught.value)
    assert "redaction.extra_patterns" in message and repr(pattern) in message and "backtrack" in message, message


@pytest.mark.parametrize(
    "pattern",
    [
        r"corp-[0-9]{6}",
        r"(?:ab)+c",
        r"tok_[A-Za-z0-9]{20,}",
        r"(?:key|token)=\w+",
        r"x(?:-[a-z]{2,8})*",
        r"((ab)*c)*d",
        r"(?:foo|bar)+",
        r"(?:\d|1)+z",
        r"(?>a+)+b",
        r"[a-z]+[0-9]+",
        r"\s*\w+",
    ],
)
def test_ordinary_patterns_are_accepted(pattern: str) -> None:
    yibu_middleware.install(
        {"api_key": GATEWAY_KEY, "nodes": ["http://127.0.0.1:9/v1"], "redaction": {"extra_patterns": [pattern]}}
    )
