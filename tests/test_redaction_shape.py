"""Masking keeps every log record's shape (issue 14, items 7 and 16).

Formatters, filters and tests read a record's parts, not only its text: uvicorn's access
formatter unpacks ``record.args``, the openai SDK's ``SensitiveHeadersFilter`` replaces
secret headers in the ``record.args`` dict, caplog tests compare ``record.msg`` and
``record.args``. So a masked record keeps ``msg`` as the format string and ``args`` as a
tuple or dict of the same kind and length; only the values that held a key change.
"""

from __future__ import annotations

import io
import logging
import traceback
from collections.abc import Iterator

import pytest
from helpers import GATEWAY_KEY, OPENAI_KEY, root_output
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

import yibu_middleware
from yibu_middleware import runtime

KEY = OPENAI_KEY


@pytest.fixture
def installed() -> None:
    yibu_middleware.install({"api_key": GATEWAY_KEY, "nodes": ["http://127.0.0.1:9/v1"]})


@pytest.fixture
def output(installed: None) -> Iterator[io.StringIO]:
    """What a handler on the root logger writes, at DEBUG."""
    with root_output(logging.DEBUG) as stream:
        yield stream


def make(msg: object, args: object) -> logging.LogRecord:
    return logging.getLogger("shape").makeRecord("shape", logging.INFO, __file__, 1, msg, args, None)  # type: ignore[arg-type]


class Options:
    """An object whose str() and repr() hold a key, like an SDK's request options."""

    def __str__(self) -> str:
        return f"options with Bearer {KEY}"

    def __repr__(self) -> str:
        return f"Options(authorization='Bearer {KEY}')"


def test_records_without_a_key_are_left_exactly_as_made(installed: None) -> None:
    record = make("HTTP Request: %s %s %d", ("POST", "https://api.example.com/v1", 200))
    assert record.msg == "HTTP Request: %s %s %d"
    assert record.args == ("POST", "https://api.example.com/v1", 200)


def test_tuple_args_keep_kind_length_and_position(installed: None) -> None:
    record = make("%s called %s with %s, status %d", ("app", "POST", f"Bearer {KEY}", 401))
    assert record.msg == "%s called %s with %s, status %d"
    assert isinstance(record.args, tuple) and len(record.args) == 4
    assert record.args[:2] == ("app", "POST") and record.args[3] == 401
    assert KEY not in record.args[2] and record.args[2].startswith("Bearer sk-proj-...")
    assert KEY not in record.getMessage() and "status 401" in record.getMessage()


def test_an_object_holding_a_key_becomes_a_masked_string_in_its_place(installed: None) -> None:
    record = make("%s / %r / %s", ("before", Options(), "after"))
    assert isinstance(record.args, tuple) and len(record.args) == 3
    assert record.args[0] == "before" and record.args[2] == "after"
    assert isinstance(record.args[1], str) and KEY not in record.args[1]
    message = record.getMessage()
    assert KEY not in message and message.startswith("before / Options(authorization=")  # %r still a repr


def test_mapping_args_stay_a_dict_with_the_same_keys(installed: None) -> None:
    args = {"method": "post", "headers": {"x-api-key": KEY, "accept": "application/json"}, "retries": 2}
    record = make("Request options: %s", (args,))
    assert type(record.args) is dict and set(record.args) == {"method", "headers", "retries"}
    assert type(record.args["headers"]) is dict and record.args["headers"]["accept"] == "application/json"
    assert KEY not in repr(record.args) and record.args["retries"] == 2
    assert args["headers"]["x-api-key"] == KEY  # the caller's own dict is not changed
    assert record.msg == "Request options: %s"


def test_named_placeholders_still_format(installed: None) -> None:
    record = make("%(who)s sent %(auth)s", ({"who": "app", "auth": f"Bearer {KEY}"},))
    assert record.getMessage().startswith("app sent Bearer sk-proj-...") and KEY not in record.getMessage()


def test_a_key_in_the_format_string_itself_is_masked_and_args_still_fit(installed: None) -> None:
    record = make(f"key {KEY} for %s and %s", ("one", "two"))
    assert isinstance(record.args, tuple) and record.args == ("one", "two")
    assert KEY not in record.msg and record.getMessage().endswith("for one and two")


def test_a_key_split_between_format_and_arg_is_still_masked(installed: None) -> None:
    # The header name sits in the format string, the opaque value in the arg: only the whole
    # message shows it is a secret. The arg itself must not keep the value either.
    opaque = "opaque0secret0value0123"
    record = make("x-api-key: %s, attempt %d", (opaque, 2))
    assert isinstance(record.args, tuple) and len(record.args) == 2 and record.args[1] == 2
    assert opaque not in record.getMessage() and opaque not in repr(record.args)
    assert record.getMessage().endswith(", attempt 2")


def test_caplog_sees_the_records_as_the_app_made_them(installed: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        logging.getLogger("app").info("user %s logged in from %s", "alice", "10.0.0.1")
        logging.getLogger("app").info("calling with %s", f"Bearer {KEY}")
    first, second = caplog.records
    assert first.msg == "user %s logged in from %s" and first.args == ("alice", "10.0.0.1")
    assert second.msg == "calling with %s" and isinstance(second.args, tuple) and len(second.args) == 1
    assert KEY not in caplog.text


def test_the_openai_sdk_header_filter_still_replaces_headers_whole(output: io.StringIO) -> None:
    """openai's SensitiveHeadersFilter (on its ``openai._base_client`` logger) replaces secret
    header values in the ``record.args`` dict with "<redacted>": it must still find that dict."""
    from openai import _base_client

    # Keys by shape, and short values that only their header names tell are secret (the
    # values of openai's own test of this filter): the record must keep its args either way.
    for api_key, token in ((KEY, KEY), ("12345", "token")):
        options = {
            "method": "post",
            "url": "/chat/completions",
            "headers": {"api-key": api_key, "Authorization": f"Bearer {token}"},
        }
        _base_client.log.debug("Request options: %s", options)
        line = output.getvalue()
        assert "'api-key': '<redacted>'" in line and "'Authorization': '<redacted>'" in line, line
        assert KEY not in line and "12345" not in line
        output.seek(0)
        output.truncate()


def test_exceptions_stack_and_extra_are_still_masked(output: io.StringIO) -> None:
    log = logging.getLogger("app")
    try:
        raise RuntimeError(f"bad key {KEY}")
    except RuntimeError:
        log.exception("failed for %s", "alice", extra={"note": f"token={KEY}"})
    log.info("stack", stack_info=True, extra={"detail": KEY})
    assert KEY not in output.getvalue() and "RuntimeError" in output.getvalue()


class NeedsResponse(Exception):
    """Like the SDKs' APIStatusError: an __init__ of its own, the message kept as an attribute."""

    def __init__(self, message: str, *, response: object) -> None:
        super().__init__(message)
        self.message = message
        self.response = response


def test_exc_info_becomes_a_masked_copy_for_handlers_that_format_it_themselves(installed: None) -> None:
    cause = ValueError(f"x-api-key: {KEY}")
    error = NeedsResponse(f"401 for Bearer {KEY}", response=object())
    error.__cause__ = cause
    group = ExceptionGroup("several", [RuntimeError(f"Bearer {KEY}")])
    for raised in (error, group):
        try:
            raise raised
        except Exception:
            import sys

            record = logging.getLogger("app").makeRecord(
                "app", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
            )
        assert record.exc_info is not None and record.exc_info[1] is not None
        shown = record.exc_info[1]
        assert shown is not raised and shown.__traceback__ is raised.__traceback__
        assert type(shown).__name__ == type(raised).__name__ and KEY not in str(shown)
        text = "".join(traceback.format_exception(*record.exc_info))
        assert KEY not in text and record.exc_text is not None and KEY not in record.exc_text
    assert isinstance(shown, Exception)  # the group: a stand-in of the same name
    assert str(error) == f"401 for Bearer {KEY}"  # the app's own exception is unchanged
    assert type(error) is NeedsResponse


# Args of every kind a log call passes, some holding a key in a place the rules know.
ARG = st.one_of(
    st.text(alphabet="abc XYZ019-_:/?=&'\"%", max_size=20),
    st.integers(),
    st.floats(allow_nan=False),
    st.sampled_from([f"Bearer {KEY}", f"https://h/v1?key={KEY}", KEY, f"{{'x-api-key': '{KEY}'}}", None]),
    st.builds(lambda key: {"headers": {"authorization": f"Bearer {key}", "accept": "*/*"}}, st.just(KEY)),
    st.builds(lambda key: [("api-key", key), ("n", 1)], st.just(KEY)),
    st.just(Options()),
)
PREFIX = st.sampled_from(["", "api-key: ", "call ", f"key {KEY} ", "100% done "])


@hypothesis_settings(max_examples=200, deadline=None)
@given(prefix=PREFIX, args=st.lists(ARG, max_size=4), conversion=st.sampled_from(["%s", "%r"]))
def test_any_record_keeps_its_shape_and_formats_to_the_masked_message(
    prefix: str, args: list[object], conversion: str
) -> None:
    yibu_middleware.install({"api_key": GATEWAY_KEY, "nodes": ["http://127.0.0.1:9/v1"]})
    current = runtime.current()
    assert current is not None
    msg = prefix.replace("%", "%%") + " ".join([conversion] * len(args))
    original = logging.LogRecord("p", logging.INFO, __file__, 1, msg, tuple(args), None)
    expected = current.redact(original.getMessage())
    record = make(msg, tuple(args))
    assert type(record.args) is type(original.args)
    assert len(record.args or ()) == len(original.args or ())  # type: ignore[arg-type]
    assert record.getMessage() == expected
    assert KEY not in record.getMessage() and KEY not in repr(record.args)
