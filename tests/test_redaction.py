"""No key in any log line: masking rules (property-based) and the logging hook, then real apps at DEBUG."""

from __future__ import annotations

import io
import logging
import subprocess
import warnings
from collections.abc import Iterator

import pytest
from helpers import GATEWAY_KEY, INTEGRATIONS, PROVIDER_KEYS, PYTHON, app_env, root_output
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import yibu_middleware
from yibu_middleware.core.redact import mask, redact_text
from yibu_middleware.simulator import GatewaySimulator

ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def text(alphabet: str, size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, min_size=size, max_size=size)


# Keys of every shape in the shared notes.
KEYS = st.one_of(
    st.builds(
        lambda kind, body: f"sk-{kind}-{body}T3BlbkFJ{body[:20]}",
        st.sampled_from(["proj", "svcacct", "admin"]),
        text(ALNUM + "_-", 40),
    ),
    st.builds(lambda a, b: f"sk-{a}T3BlbkFJ{b}", text(ALNUM, 20), text(ALNUM, 20)),
    st.builds(
        lambda kind, body: f"sk-ant-{kind}-{body}", st.sampled_from(["api03", "admin01"]), text(ALNUM + "_-", 60)
    ),
    st.builds(lambda body, channel: f"sk-{body}{channel}", text(ALNUM, 48), st.sampled_from(["", "-1", "-42"])),
    st.builds(lambda body: f"sk-or-v1-{body}", text(ALNUM, 40)),
    st.builds(lambda body: f"AIza{body}", text(ALNUM + "_-", 35)),
    st.builds(lambda body: f"hf_{body}", text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", 34)),
    st.builds(
        lambda prefix, body: prefix + body, st.sampled_from(["gsk_", "xai-", "pplx-", "nvapi-", "r8_"]), text(ALNUM, 32)
    ),
    st.builds(lambda a, b, c: f"eyJ{a}.eyJ{b}.{c}", text(ALNUM, 20), text(ALNUM, 30), text(ALNUM + "_-", 30)),
)
# Free-form secrets are found by the place they sit in (a header, a URL), not by shape.
OPAQUE = text(ALNUM, 24)

PLACES = [
    "{key}",
    "Authorization: Bearer {key}",
    "{{'authorization': 'Bearer {key}', 'x-api-key': '{key}'}}",
    '{{"headers": {{"api-key": "{key}"}}, "json_data": {{"model": "gpt-4o"}}}}',
    "[(b'x-goog-api-key', b'{key}')]",
    "https://api.example.com/v1/models?key={key}&alt=json",
    "https://bot:{key}@proxy.example.com:8080/",
    "error: invalid key {key} (request id: abc)",
]


def leaks(output: str, key: str) -> bool:
    return key in output


@settings(max_examples=300, deadline=None)
@given(key=KEYS, place=st.sampled_from(PLACES), noise=st.text(max_size=30))
def test_every_key_shape_is_masked_in_every_place(key: str, place: str, noise: str) -> None:
    line = noise + place.format(key=key) + noise
    assert not leaks(redact_text(line), key)


@settings(max_examples=100, deadline=None)
@given(key=OPAQUE, place=st.sampled_from(PLACES[1:7]))
def test_opaque_secrets_in_secret_places_are_masked(key: str, place: str) -> None:
    assert not leaks(redact_text(place.format(key=key)), key)


@settings(max_examples=100, deadline=None)
@given(secret=st.text(alphabet=ALNUM + "!#%&*.:;~", min_size=8, max_size=40))
def test_known_values_are_masked_whatever_their_shape(secret: str) -> None:
    assert not leaks(redact_text(f"prefix {secret} suffix", [secret]), secret)


def test_masks_keep_keys_apart_but_unusable() -> None:
    first, second = "sk-proj-" + "a" * 40 + "1111", "sk-proj-" + "a" * 40 + "2222"
    assert mask(first) == "sk-proj-...1111" and mask(first) != mask(second)
    assert mask("short") == "***"


def test_ordinary_text_is_left_alone() -> None:
    line = "POST api.openai.com/v1/chat/completions model=gpt-4o max_tokens=100 -> 10.0.0.7:443 200 in 41.2 ms"
    assert redact_text(line) == line
    assert redact_text("missing api-key, set OPENAI_API_KEY") == "missing api-key, set OPENAI_API_KEY"


# --- the logging hook ---------------------------------------------------------------------------


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """A handler added after install(), as an app's later logging.basicConfig would."""
    yibu_middleware.install({"api_key": GATEWAY_KEY, "nodes": ["http://127.0.0.1:9/v1"]})
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s %(note)s", defaults={"note": ""})
    with root_output(logging.DEBUG, formatter) as stream:
        yield stream


class RequestOptions:
    """Like the SDKs' FinalRequestOptions: a key deep inside an object's repr."""

    def __init__(self, key: str) -> None:
        self.headers = {"Authorization": f"Bearer {key}"}

    def __repr__(self) -> str:
        return f"FinalRequestOptions(headers={self.headers!r})"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=KEYS)
def test_log_records_are_masked_everywhere(captured: io.StringIO, key: str) -> None:
    captured.seek(0)
    captured.truncate()  # one capture shared by the examples: start each one empty
    log = logging.getLogger("some.library")
    log.debug("Request options: %s", RequestOptions(key))
    log.info("nested %r", {"outer": {"headers": [("x-api-key", key)]}})
    log.warning("url %s", f"https://api.example.com/v1?api_key={key}")
    log.info("with extra", extra={"note": f"token={key}"})
    try:
        raise RuntimeError(f"bad key {key}")
    except RuntimeError:
        log.exception("failed")
    log.error("stack", stack_info=True)
    output = captured.getvalue()
    assert key not in output
    assert "FinalRequestOptions" in output and "failed" in output and "RuntimeError" in output


def test_gateway_and_swapped_keys_masked_by_value(captured: io.StringIO) -> None:
    logging.getLogger("app").warning("configured with %s and %s", GATEWAY_KEY, "plainvalue")
    assert GATEWAY_KEY not in captured.getvalue()


def test_warnings_routed_to_logging_are_masked(captured: io.StringIO) -> None:
    logging.captureWarnings(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn(f"deprecated key {PROVIDER_KEYS[0]}", UserWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
    output = captured.getvalue()
    assert "deprecated key" in output and PROVIDER_KEYS[0] not in output


def make(message: str, *args: object) -> logging.LogRecord:
    return logging.getLogger("x").makeRecord("x", logging.INFO, __file__, 1, message, args, None)


def test_redaction_off_only_when_asked() -> None:
    yibu_middleware.install(
        {"api_key": GATEWAY_KEY, "nodes": ["http://127.0.0.1:9/v1"], "redaction": {"enabled": False}}
    )
    assert PROVIDER_KEYS[0] in make("key %s", PROVIDER_KEYS[0]).getMessage()
    yibu_middleware.install({"api_key": GATEWAY_KEY, "nodes": ["http://127.0.0.1:9/v1"]})
    assert PROVIDER_KEYS[0] not in make("key %s", PROVIDER_KEYS[0]).getMessage()


def test_extra_patterns_and_headers_from_settings() -> None:
    yibu_middleware.install(
        {
            "api_key": GATEWAY_KEY,
            "nodes": ["http://127.0.0.1:9/v1"],
            "redaction": {"extra_patterns": [r"corp-[0-9]{6}"], "extra_headers": ["x-corp-auth"]},
        }
    )
    record = make("%s %s", "id corp-123456", "x-corp-auth: opaque-secret-value")
    assert "corp-123456" not in record.getMessage() and "opaque-secret-value" not in record.getMessage()


def test_uninstall_restores_make_record() -> None:
    before = logging.Logger.__dict__["makeRecord"]
    yibu_middleware.install({"api_key": GATEWAY_KEY, "nodes": ["http://127.0.0.1:9/v1"]})
    assert logging.Logger.__dict__["makeRecord"] is not before
    yibu_middleware.uninstall()
    assert logging.Logger.__dict__["makeRecord"] is before


# --- end to end: the example apps at DEBUG everywhere, failing nodes included -------------------------

DEBUG_RUNNER = (
    "import logging, runpy, sys; logging.basicConfig(level=logging.DEBUG);"
    " runpy.run_path(sys.argv[1], run_name='__main__')"
)


@pytest.mark.parametrize(
    "app", ["openai_sync_app.py", "openai_async_app.py", "anthropic_app.py", "httpx_app.py", "langchain_app.py"]
)
def test_apps_at_debug_log_no_key_but_show_the_node(app: str, gateway: GatewaySimulator) -> None:
    gateway.set_faults("a", refuse=True)
    gateway.set_faults("b", error_rate=0.5, seed=3)
    env = app_env(gateway, OPENAI_LOG="debug", ANTHROPIC_LOG="debug", YIBU_LOG="info")
    result = subprocess.run(
        [PYTHON, "-c", DEBUG_RUNNER, str(INTEGRATIONS / app)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    for key in (*PROVIDER_KEYS, GATEWAY_KEY):
        assert key not in output
    assert "HTTP Request" in output or "Request options" in output  # DEBUG logging really was on
    assert f"127.0.0.1:{gateway.node('c').port}" in output  # which node served is still shown
