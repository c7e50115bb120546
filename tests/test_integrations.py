"""Each example app in integrations/, unmodified, in a subprocess with only environment variables set.

Without the middleware these apps would try api.openai.com / api.anthropic.com, which
this machine cannot reach; so an app that finishes and whose calls the simulator
recorded with the gateway key has gone through the hooks.
"""

from __future__ import annotations

import subprocess

import pytest
from helpers import GATEWAY_KEY, INTEGRATIONS, PYTHON, app_env, assert_no_provider_key

from yibu_middleware.simulator import GatewaySimulator

# app -> (paths the gateway must see, at least this many requests)
APPS = {
    "openai_sync_app.py": ({"/v1/chat/completions", "/v1/embeddings"}, 3),
    "openai_async_app.py": ({"/v1/chat/completions"}, 21),
    "openai_legacy_httpx_app.py": ({"/v1/chat/completions"}, 2),
    "openai_aiohttp_app.py": ({"/v1/chat/completions"}, 6),
    "anthropic_app.py": ({"/v1/messages"}, 2),
    "anthropic_async_app.py": ({"/v1/messages"}, 6),
    "langchain_app.py": ({"/v1/chat/completions"}, 2),
    "httpx_app.py": ({"/v1/chat/completions", "/v1/models"}, 4),
}


def run_app(app: str, simulator: GatewaySimulator, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, str(INTEGRATIONS / app)],
        env=app_env(simulator, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_app_is_covered() -> None:
    assert set(APPS) == {path.name for path in INTEGRATIONS.glob("*.py")}


@pytest.mark.parametrize("app", sorted(APPS))
def test_app_reaches_gateway_with_gateway_key_only(app: str, gateway: GatewaySimulator) -> None:
    result = run_app(app, gateway)
    assert result.returncode == 0, result.stderr
    paths, minimum = APPS[app]
    records = gateway.records
    assert {record.path for record in records} == paths
    assert len(records) >= minimum
    assert {record.key for record in records} == {GATEWAY_KEY}
    assert {record.status for record in records} == {200}
    assert_no_provider_key(gateway)
    assert "streamed:" not in result.stdout or "Hello" in result.stdout


def test_apps_fail_over_past_a_down_node(gateway: GatewaySimulator) -> None:
    gateway.set_faults("a", refuse=True)
    result = run_app("openai_async_app.py", gateway, YIBU_LOG="info")
    assert result.returncode == 0, result.stderr
    assert {record.node for record in gateway.records} == {"b", "c"}
    assert "(tried: " in result.stderr and "connection failed" in result.stderr
