"""Settings: sources and their order, the file's three locations, and the errors users see."""

from __future__ import annotations

from pathlib import Path

import pytest

from yibu_middleware.errors import ConfigError
from yibu_middleware.settings import DEFAULT_BASE_URL, load_settings

SECRET = "sk-secret-gateway-key-abcdefghijklmnop1234"


def test_defaults() -> None:
    settings = load_settings()
    assert settings.base_url == DEFAULT_BASE_URL
    assert settings.gateway_nodes == [DEFAULT_BASE_URL]
    assert set(settings.routes) == {"api.openai.com", "api.anthropic.com"}
    assert settings.routes["api.anthropic.com"].provider == "anthropic"
    assert settings.api_key is None and settings.retry.max_attempts == 3
    assert settings.origin("nodes") == "default"


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIBU_NODES", "https://a.example/v1, https://b.example/v1/")
    monkeypatch.setenv("YIBU_API_KEY", SECRET)
    monkeypatch.setenv("YIBU_RETRY__MAX_ATTEMPTS", "5")
    monkeypatch.setenv("YIBU_MODEL_ALIASES", '{"gpt-4": "gpt-5.2"}')
    monkeypatch.setenv("YIBU_ROUTES", '{"api.deepseek.com": "openai", "api.anthropic.com": false}')
    settings = load_settings()
    assert settings.gateway_nodes == ["https://a.example/v1", "https://b.example/v1"]
    assert settings.api_key is not None and settings.api_key.get_secret_value() == SECRET
    assert settings.retry.max_attempts == 5
    assert settings.model_aliases == {"gpt-4": "gpt-5.2"}
    assert set(settings.routes) == {"api.openai.com", "api.deepseek.com"}
    assert settings.origin("nodes") == "env YIBU_NODES"
    assert settings.origin("retry") == "env YIBU_RETRY__MAX_ATTEMPTS"
    assert SECRET not in repr(settings) and "...1234" in repr(settings)


YIBU_TOML = """
nodes = ["https://file-a.example/v1", "https://file-b.example/v1"]
api_key = "sk-from-file-0000000000000000000"
[model_aliases]
"gpt-4" = "gpt-5.2"
[routes]
"api.groq.com" = { provider = "openai", strip_prefix = "/openai/v1" }
[retry]
max_attempts = 2
"""


def test_yibu_toml_in_cwd(tmp_path: Path) -> None:
    (tmp_path / "yibu.toml").write_text(YIBU_TOML)
    settings = load_settings()
    assert settings.gateway_nodes == ["https://file-a.example/v1", "https://file-b.example/v1"]
    assert settings.routes["api.groq.com"].strip_prefix == "/openai/v1"
    assert settings.retry.max_attempts == 2
    assert settings.origin("nodes") == f"file {tmp_path / 'yibu.toml'}"


def test_pyproject_tool_yibu(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "app"\n[tool.yibu]\nbase_url = "https://pp.example/v1"\n'
    )
    settings = load_settings()
    assert settings.base_url == "https://pp.example/v1"
    assert settings.origin("base_url").endswith("pyproject.toml [tool.yibu]")


def test_yibu_config_wins_over_cwd_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "yibu.toml").write_text('base_url = "https://cwd.example/v1"\n')
    named = tmp_path / "elsewhere.toml"
    named.write_text('base_url = "https://named.example/v1"\n')
    monkeypatch.setenv("YIBU_CONFIG", str(named))
    assert load_settings().base_url == "https://named.example/v1"


def test_order_arguments_then_env_then_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "yibu.toml").write_text(YIBU_TOML)
    monkeypatch.setenv("YIBU_RETRY__MAX_ATTEMPTS", "4")
    monkeypatch.setenv("YIBU_NODES", "https://env.example/v1")
    settings = load_settings({"nodes": ["https://arg.example/v1"]})
    assert settings.gateway_nodes == ["https://arg.example/v1"]
    assert settings.origin("nodes") == "install() argument"
    assert settings.retry.max_attempts == 4  # env over file
    assert settings.model_aliases == {"gpt-4": "gpt-5.2"}  # file over default


def error_of(**env: str) -> str:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        with pytest.raises(ConfigError) as caught:
            load_settings()
    return str(caught.value)


def test_url_that_is_not_http_names_setting_source_and_form() -> None:
    message = error_of(YIBU_NODES="ftp://gw.example/v1")
    assert "nodes" in message and "env YIBU_NODES" in message and "http(s) URL" in message


def test_base_url_error() -> None:
    message = error_of(YIBU_BASE_URL="api.yibuapi.com/v1")
    assert "base_url" in message and "env YIBU_BASE_URL" in message and "http(s) URL" in message


def test_malformed_alias_table_from_env() -> None:
    message = error_of(YIBU_MODEL_ALIASES="{gpt-4: gpt-5}")
    assert "model_aliases" in message and "env YIBU_MODEL_ALIASES" in message and "JSON object" in message


def test_malformed_alias_table_in_file(tmp_path: Path) -> None:
    (tmp_path / "yibu.toml").write_text('model_aliases = ["gpt-4", "gpt-5.2"]\n')
    message = error_of()
    assert "model_aliases" in message and "yibu.toml" in message and "valid dictionary" in message


def test_unknown_key_in_file_suggests_the_right_one(tmp_path: Path) -> None:
    (tmp_path / "yibu.toml").write_text('node = ["https://a.example/v1"]\n[retry]\nmax_attempt = 2\n')
    message = error_of()
    assert "unknown setting 'node'" in message and "did you mean 'nodes'" in message
    assert "unknown setting 'retry.max_attempt'" in message and "'max_attempts'" in message
    assert "yibu.toml" in message


def test_file_that_does_not_parse(tmp_path: Path) -> None:
    (tmp_path / "yibu.toml").write_text('nodes = ["https://a.example/v1"\n')
    message = error_of()
    assert "yibu.toml" in message and "not valid TOML" in message and "line" in message


def test_missing_named_file(tmp_path: Path) -> None:
    message = error_of(YIBU_CONFIG=str(tmp_path / "nope.toml"))
    assert "YIBU_CONFIG" in message and "no such file" in message


def test_secret_is_masked_in_errors(tmp_path: Path) -> None:
    # A value no temporary path can hold (the message names the file, under pytest-<N>).
    (tmp_path / "yibu.toml").write_text(f'api_key = 918273645\nbase_url = "{SECRET}"\n')
    message = error_of()
    assert "api_key" in message and "base_url" in message
    assert SECRET not in message and "918273645" not in message


def test_node_on_a_redirected_host_would_loop() -> None:
    message = error_of(YIBU_NODES="https://api.openai.com/v1")
    assert "nodes" in message and "loop" in message and "env YIBU_NODES" in message


def test_bad_nested_value_from_env() -> None:
    message = error_of(YIBU_RETRY__MAX_ATTEMPTS="many")
    assert "retry.max_attempts" in message and "env YIBU_RETRY__MAX_ATTEMPTS" in message and "integer" in message


def test_bad_route_provider() -> None:
    message = error_of(YIBU_ROUTES='{"api.mistral.ai": "mistral"}')
    assert "routes" in message and "'openai' or 'anthropic'" in message
