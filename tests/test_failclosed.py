"""Fail closed on settings: no gateway key, a misspelt name, a bad key, a clear-text or
credentialed node URL, and malformed input of every kind each stop the middleware with a
settings error that names the setting, never a Python error, and never show a secret."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import httpx
import openai
import pytest
import requests
from helpers import GATEWAY_KEY, INTEGRATIONS, OPENAI_KEY, PYTHON, app_env, install_for

import yibu_middleware
from yibu_middleware.api import installed
from yibu_middleware.errors import ConfigError
from yibu_middleware.settings import Settings, load_settings
from yibu_middleware.simulator import GatewaySimulator

PASSWORD = "hunter2-node-password-7f3a9c"


def config_error(overrides: dict[str, object] | None = None, **env: str) -> str:
    """The text of the ConfigError that loading (and installing) these settings raises."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        with pytest.raises(ConfigError) as caught:
            yibu_middleware.install(overrides)
    assert not installed()
    return str(caught.value)


def run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=cwd)


# --- item 3: no gateway key -----------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "", "  \n"])
def test_no_gateway_key_refuses_to_install(key: str | None) -> None:
    env = {} if key is None else {"YIBU_API_KEY": key}
    message = config_error({"nodes": ["http://127.0.0.1:9/v1"]}, **env)
    assert "api_key" in message and "YIBU_API_KEY" in message
    assert "keys.pass_through" in message and "YIBU_KEYS__PASS_THROUGH" in message
    if key is not None:
        assert "env YIBU_API_KEY" in message and "empty" in message


def test_no_gateway_key_refuses_a_settings_object_too() -> None:
    with pytest.raises(ConfigError, match="YIBU_API_KEY"):
        yibu_middleware.install(Settings(nodes=["http://127.0.0.1:9/v1"]))
    assert not installed()


def test_no_gateway_key_stops_the_app_at_start(gateway: GatewaySimulator, tmp_path: Path) -> None:
    env = app_env(gateway)
    del env["YIBU_API_KEY"]
    result = run([PYTHON, str(INTEGRATIONS / "openai_sync_app.py")], env, tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "YIBU_API_KEY" in result.stderr and "Traceback" not in result.stderr
    assert gateway.records == []  # the provider key never left the process
    assert OPENAI_KEY not in result.stderr


def test_pass_through_is_explicit_and_sends_the_callers_key() -> None:
    """For apps already given gateway keys: their own key goes to the gateway unchanged."""
    app_key = "sk-gw-app-own-gateway-key-0123456789"
    with GatewaySimulator(accepted_keys={app_key}) as simulator:
        simulator.add_node("a")
        yibu_middleware.install({"nodes": [simulator.nodes[0].base_url], "keys": {"pass_through": True}})
        client = openai.OpenAI(api_key=app_key, max_retries=0)
        reply = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
        assert [record.key for record in simulator.records] == [app_key]


def test_pass_through_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIBU_KEYS__PASS_THROUGH", "true")
    yibu_middleware.install({"nodes": ["http://127.0.0.1:9/v1"]})
    assert installed()
    assert load_settings().origin("keys.pass_through") == "env YIBU_KEYS__PASS_THROUGH"


def test_close_misspelling_is_an_error_with_the_suggestion() -> None:
    message = config_error({"nodes": ["http://127.0.0.1:9/v1"]}, YIBU_API_KYE=GATEWAY_KEY)
    assert "YIBU_API_KYE" in message and "YIBU_API_KEY" in message
    assert GATEWAY_KEY not in message


def test_close_misspelling_stops_the_app_at_start(gateway: GatewaySimulator, tmp_path: Path) -> None:
    env = app_env(gateway, YIBU_NODSE="http://127.0.0.1:9/v1")
    result = run([PYTHON, "-c", "print('the app ran')"], env, tmp_path)
    assert result.returncode == 2 and "the app ran" not in result.stdout
    assert "YIBU_NODSE" in result.stderr and "YIBU_NODES" in result.stderr


def test_far_off_unknown_name_stays_a_warning(
    gateway: GatewaySimulator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("YIBU_DEPLOYMENT_COLOUR", "blue")
    with caplog.at_level(logging.WARNING, logger="yibu_middleware"):
        install_for(gateway)
    assert installed()
    assert any("YIBU_DEPLOYMENT_COLOUR" in record.getMessage() for record in caplog.records)


# --- item 4: the key as loaded --------------------------------------------------------------


@pytest.mark.parametrize("padding", ["\n", "\r\n", " ", "\t\n"])
def test_whitespace_around_the_key_is_stripped(
    gateway: GatewaySimulator, monkeypatch: pytest.MonkeyPatch, padding: str
) -> None:
    """A mounted secret ends in a newline; requests would refuse it as a header value."""
    monkeypatch.setenv("YIBU_API_KEY", f"{padding}{GATEWAY_KEY}{padding}")
    yibu_middleware.install({"nodes": [node.base_url for node in gateway.nodes]})
    response = requests.post(
        "https://api.openai.com/v1/chat/completions",
        headers={"Authorization": f"Bearer {OPENAI_KEY}"},
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert {record.key for record in gateway.records} == {GATEWAY_KEY}


@pytest.mark.parametrize(
    "key",
    [
        "sk-gw-abcdefgh\x00ijklmnopqrstuvwxyz0123",
        "sk-gw-abcdefgh\x1bijklmnopqrstuvwxyz0123",
        "sk-gw-abcdefgh\nijklmnopqrstuvwxyz0123",
        "sk-gw-abcdefgh\x7fijklmnopqrstuvwxyz0123",
        "sk-gw-abcdefghйijklmnopqrstuvwxyz0123",
        "sk-gw-abcdefgh ijklmnopqrstuvwxyz0123",
    ],
)
def test_key_with_control_or_non_ascii_characters_is_refused_masked(key: str) -> None:
    messages = [config_error({"nodes": ["http://127.0.0.1:9/v1"], "api_key": key})]
    if "\x00" not in key:  # the environment cannot hold a NUL
        messages.append(config_error({"nodes": ["http://127.0.0.1:9/v1"]}, YIBU_API_KEY=key))
    for message in messages:
        assert "api_key" in message and "position 15" in message
        for piece in ("abcdefgh", "ijklmnop", "wxyz0123"):
            assert piece not in message


# --- item 5: clear text and credentials in node URLs ----------------------------------------


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("YIBU_NODES", "http://gw.example/v1"),
        ("YIBU_NODES", "https://a.example/v1,http://10.0.0.7:8080/v1"),
        ("YIBU_BASE_URL", "http://gw.example/v1"),
    ],
)
def test_clear_text_node_off_loopback_is_refused(setting: str, value: str) -> None:
    message = config_error(**{"YIBU_API_KEY": GATEWAY_KEY, setting: value})
    assert f"env {setting}" in message and "clear text" in message
    assert "allow_insecure_nodes" in message and "YIBU_ALLOW_INSECURE_NODES" in message


def test_clear_text_node_allowed_explicitly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIBU_ALLOW_INSECURE_NODES", "1")
    settings = load_settings({"nodes": ["http://gw.example/v1"], "api_key": GATEWAY_KEY})
    assert settings.gateway_nodes == ["http://gw.example/v1"]


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/v1", "http://127.3.4.5/v1", "http://localhost:8000/v1", "http://[::1]:8000/v1"]
)
def test_clear_text_to_loopback_is_fine(url: str) -> None:
    assert load_settings({"nodes": [url]}).gateway_nodes == [url]


@pytest.mark.parametrize(
    "overrides",
    [
        {"nodes": [f"https://yibu:{PASSWORD}@gw.example/v1"]},
        {"nodes": [f"https://{PASSWORD}@gw.example/v1"]},
        {"base_url": f"https://user:{PASSWORD}@gw.example/v1"},
        {"nodes": [f"https://user:{PASSWORD}@gw.example/" + "v1/" * 40]},  # longer than a shown value
        {"nodes": [f"https://user:pa/{PASSWORD}@gw.example/v1"]},
        {"nodes": ["https://gw.example/v1"], "pin": f"https://user:{PASSWORD}@gw.example/v1"},
        {"nodes": ["https://gw.example/v1"], "node_weights": {f"https://user:{PASSWORD}@gw.example/v1": 2}},
    ],
)
def test_credentials_in_a_node_url_are_refused_masked(overrides: dict[str, object]) -> None:
    message = config_error({"api_key": GATEWAY_KEY, **overrides})
    assert PASSWORD not in message and PASSWORD[:8] not in message
    assert "YIBU_API_KEY" in message


def test_credentials_in_a_setting_name_are_masked() -> None:
    """A node URL is a key of node_weights, so it is part of the name of a bad weight."""
    weights = {f"https://user:{PASSWORD}@gw.example/v1": "heavy"}
    message = config_error({"api_key": GATEWAY_KEY, "nodes": ["https://gw.example/v1"], "node_weights": weights})
    assert "node_weights" in message and PASSWORD not in message and PASSWORD[:8] not in message


def test_credentials_in_a_node_url_at_start_are_masked(tmp_path: Path) -> None:
    env = {**app_env_without_nodes(), "YIBU_NODES": f"https://yibu:{PASSWORD}@gw.example/v1"}
    result = run([PYTHON, "-c", "print('the app ran')"], env, tmp_path)
    assert result.returncode == 2 and "the app ran" not in result.stdout
    assert PASSWORD not in result.stderr and "YIBU_NODES" in result.stderr


def app_env_without_nodes() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("YIBU_")}
    env.update(YIBU_ENABLED="1", YIBU_API_KEY=GATEWAY_KEY)
    return env


# --- item 14: malformed input is a settings error ------------------------------------------

DEEP_VALUES = ["[" * 100_000, "{" * 100_000, '{"a":' * 50_000, "[" * 5_000 + "]" * 5_000]

JSON_SETTINGS = [
    "YIBU_ROUTES",
    "YIBU_MODEL_ALIASES",
    "YIBU_NODE_WEIGHTS",
    "YIBU_NODES",
    "YIBU_LIMITS__PER_MODEL",
    "YIBU_POLICY__ALLOWED_MODELS",
    "YIBU_POLICY__DENIED_MODALITIES",
    "YIBU_POLICY__IMAGE_FORMATS",
    "YIBU_REDACTION__EXTRA_HEADERS",
    "YIBU_REDACTION__EXTRA_PATTERNS",
    "YIBU_RETRY",
    "YIBU_LIMITS",
    "YIBU_KEYS",
]


# Comma-separated lists take JSON only when the value starts with "[": "{{{" is one odd item.
COMMA_LISTS = ["YIBU_POLICY__ALLOWED_MODELS", "YIBU_POLICY__DENIED_MODALITIES", "YIBU_POLICY__IMAGE_FORMATS"]


@pytest.mark.parametrize("name", JSON_SETTINGS)
@pytest.mark.parametrize("value", DEEP_VALUES, ids=["list", "object", "keys", "closed"])
def test_deep_json_is_a_settings_error(name: str, value: str) -> None:
    if name in COMMA_LISTS and value.startswith("{"):
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(name, value)
            try:
                load_settings({"api_key": GATEWAY_KEY})  # may load: never a RecursionError
            except ConfigError as exc:
                assert f"env {name}" in str(exc) and len(str(exc)) < 2000
        return
    message = config_error({"api_key": GATEWAY_KEY}, **{name: value})
    assert f"env {name}" in message


@pytest.mark.parametrize("name", ["YIBU_RETRY", "YIBU_LIMITS", "YIBU_KEYS", "YIBU_HEDGE"])
def test_a_section_given_as_bad_json_is_a_settings_error(name: str) -> None:
    message = config_error({"api_key": GATEWAY_KEY}, **{name: "{not json"})
    assert f"env {name}" in message and "JSON" in message


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("YIBU_NODES", "https://gw.example:99999/v1"),
        ("YIBU_NODES", "https://gw.example:0/v1"),
        ("YIBU_NODES", "https://gw.example:port/v1"),
        ("YIBU_BASE_URL", "https://gw.example:99999/v1"),
        ("YIBU_PIN", "https://gw.example:99999/v1"),
        ("YIBU_NODE_WEIGHTS", '{"https://gw.example:99999/v1": 2}'),
        ("YIBU_NODES", "https://gw exa.example/v1"),
        ("YIBU_NODES", "https://gw..example/v1"),
        ("YIBU_NODES", "https://gw.example/v\x011"),
        ("YIBU_NODES", "https://" + "a" * 64 + ".example/v1"),
    ],
)
def test_malformed_node_urls_are_settings_errors(setting: str, value: str) -> None:
    message = config_error({"api_key": GATEWAY_KEY}, **{setting: value})
    assert f"env {setting}" in message


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    "name",
    [
        "YIBU_RETRY__BACKOFF_MAX",
        "YIBU_RETRY__MAX_RETRY_AFTER",
        "YIBU_EJECTION__MAX_SECONDS",
        "YIBU_HEALTH_CHECK__INTERVAL",
        "YIBU_LIMITS__QUEUE_TIMEOUT",
        "YIBU_LIMITS__REQUESTS_PER_SECOND",
        "YIBU_STREAM__FIRST_TOKEN_TIMEOUT",
    ],
)
def test_numbers_that_are_not_finite_are_settings_errors(name: str, value: str) -> None:
    message = config_error({"api_key": GATEWAY_KEY}, **{name: value})
    assert f"env {name}" in message


def test_node_weight_that_is_not_finite(monkeypatch: pytest.MonkeyPatch) -> None:
    message = config_error(
        {"api_key": GATEWAY_KEY, "nodes": ["https://gw.example/v1"]},
        YIBU_NODE_WEIGHTS='{"https://gw.example/v1": Infinity}',
    )
    assert "env YIBU_NODE_WEIGHTS" in message


HOSTILE = ["[" * 100_000, "\x01", "\udcff", "9" * 5000, "1e999", "nan", "[]", "{}", '"', " ", "-1", "true"]
EVERY_SETTING = [
    "YIBU_ENABLED",
    "YIBU_API_KEY",
    "YIBU_BASE_URL",
    "YIBU_NODES",
    "YIBU_ROUTES",
    "YIBU_MODEL_ALIASES",
    "YIBU_NODE_WEIGHTS",
    "YIBU_PIN",
    "YIBU_ALLOW_INSECURE_NODES",
    "YIBU_KEYS__PASS_THROUGH",
    "YIBU_RETRY__MAX_ATTEMPTS",
    "YIBU_RETRY__BACKOFF_BASE",
    "YIBU_EJECTION__CONSECUTIVE_FAILURES",
    "YIBU_HEALTH_CHECK__TIMEOUT",
    "YIBU_STREAM__FIRST_TOKEN_TIMEOUT",
    "YIBU_HEDGE__ENABLED",
    "YIBU_HEDGE__MAX_SHARE",
    "YIBU_REDACTION__ENABLED",
    "YIBU_LIMITS__MAX_CONCURRENT",
    "YIBU_LIMITS__TOKENS_PER_MINUTE",
    "YIBU_LIMITS__PER_MODEL",
    "YIBU_POLICY__ALLOWED_MODELS",
    "YIBU_POLICY__MAX_MEDIA_BYTES",
    "YIBU_LOG",
]


@pytest.mark.parametrize("name", EVERY_SETTING)
def test_hostile_values_give_a_settings_error_or_load(name: str) -> None:
    """Whatever the value, loading either works or raises a ConfigError: never another error."""
    for value in HOSTILE:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(name, value)
            try:
                yibu_middleware.install({"api_key": GATEWAY_KEY, "nodes": ["http://127.0.0.1:9/v1"]})
            except ConfigError as exc:
                assert name in str(exc), (value[:20], str(exc))
            finally:
                yibu_middleware.uninstall()


def test_settings_file_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "yibu.toml").write_bytes(b'nodes = ["https://gw.example/v1"]\nlog = "\xff\xfe"\n')
    message = config_error({"api_key": GATEWAY_KEY})
    assert "yibu.toml" in message and "UTF-8" in message


def test_pyproject_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_bytes(b'[tool.yibu]\nlog = "\xc3\x28"\n')
    message = config_error({"api_key": GATEWAY_KEY})
    assert "pyproject.toml" in message and "UTF-8" in message


@pytest.mark.parametrize(
    "text", ["nodes = " + "[" * 100_000, "model_aliases = " + "{a = " * 50_000, "x = " + "[" * 500 + "]" * 500]
)
def test_settings_file_nested_too_deeply(tmp_path: Path, text: str) -> None:
    (tmp_path / "yibu.toml").write_text(text + "\n")
    message = config_error({"api_key": GATEWAY_KEY})
    assert "yibu.toml" in message


def test_named_settings_file_that_is_a_folder(tmp_path: Path) -> None:
    message = config_error({"api_key": GATEWAY_KEY}, YIBU_CONFIG=str(tmp_path))
    assert "YIBU_CONFIG" in message and "not a file" in message


def test_tool_yibu_that_is_not_a_table(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool]\nyibu = "on"\n')
    message = config_error({"api_key": GATEWAY_KEY})
    assert "pyproject.toml" in message and "tool.yibu" in message


def test_deep_json_at_start_is_one_clear_message(tmp_path: Path) -> None:
    env = {**app_env_without_nodes(), "YIBU_ROUTES": "[" * 100_000}
    result = run([PYTHON, "-c", "print('the app ran')"], env, tmp_path)
    assert result.returncode == 2 and "the app ran" not in result.stdout
    assert "YIBU_ROUTES" in result.stderr and "RecursionError" not in result.stderr


def test_http_client_sees_only_valid_node_urls() -> None:
    """Every URL the settings accept is one httpx can send to (no error at call time)."""
    for url in ("https://gw.example:65535/v1", "https://xn--bcher-kva.example/v1", "http://[::1]:1/v1"):
        settings = load_settings({"nodes": [url]})
        httpx.URL(settings.gateway_nodes[0])


def test_settings_file_that_is_a_dangling_link(tmp_path: Path) -> None:
    """A mounted yibu.toml that is missing is not the same as no settings file."""
    (tmp_path / "yibu.toml").symlink_to(tmp_path / "mounted" / "yibu.toml")
    message = config_error({"api_key": GATEWAY_KEY})
    assert "yibu.toml" in message and "cannot be read" in message


def test_named_settings_file_that_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "yibu.fifo"
    os.mkfifo(fifo)
    message = config_error({"api_key": GATEWAY_KEY}, YIBU_CONFIG=str(fifo))
    assert "YIBU_CONFIG" in message and "not a regular file" in message


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_settings_file_without_read_permission(tmp_path: Path) -> None:
    path = tmp_path / "yibu.toml"
    path.write_text('log = "info"\n')
    path.chmod(0)
    message = config_error({"api_key": GATEWAY_KEY})
    assert "yibu.toml" in message and "cannot be read" in message
