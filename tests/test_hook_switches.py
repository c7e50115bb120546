"""Each hook can be turned off on its own (``hooks.<name>.enabled``), the logging patch included."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from helpers import GATEWAY_KEY, OPENAI_KEY, app_env, install_for, root_output
from sidedoor_servers import Scripted, answering
from test_routing_trust import send

from yibu_middleware import hooks
from yibu_middleware.simulator import GatewaySimulator

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("off", ["requests", "aiohttp", "httpx", "httpx2"])
def test_a_hook_turned_off_leaves_only_its_library_unrouted(gateway: GatewaySimulator, off: str) -> None:
    """A local OpenAI-compatible server, routed by host:port: with one hook off, that library's
    request reaches the server itself (with the app's own key); every other library's is routed."""
    with Scripted(answering()) as provider:
        install_for(gateway, routes={f"127.0.0.1:{provider.port}": "openai"}, hooks={off: {"enabled": False}})
        for client in ("requests", "aiohttp", "httpx", "httpx2"):
            assert send(client, f"http://127.0.0.1:{provider.port}/v1/chat/completions", CHAT) == 200, client
    assert len(provider.seen) == 1 and OPENAI_KEY in provider.seen[0].headers["authorization"]
    assert [record.key for record in gateway.records] == [GATEWAY_KEY] * 3
    patched = {hook.name: hook.patched for hook in hooks.HOOKS}
    assert patched[off] is False and patched["requests" if off != "requests" else "aiohttp"] is True


def test_turning_a_hook_back_on_by_installing_again(gateway: GatewaySimulator) -> None:
    install_for(gateway, hooks={"requests": {"enabled": False}})
    assert not next(hook for hook in hooks.HOOKS if hook.name == "requests").patched
    install_for(gateway)
    import requests  # noqa: F401  # imported by the tests already: the hook is applied at once

    assert next(hook for hook in hooks.HOOKS if hook.name == "requests").patched


def test_the_logging_hook_off_leaves_records_unmasked(gateway: GatewaySimulator) -> None:
    install_for(gateway, hooks={"logging": {"enabled": False}})
    with root_output(logging.INFO) as output:
        logging.getLogger("app").warning("key %s", OPENAI_KEY)
    assert OPENAI_KEY in output.getvalue()  # off means off: nothing masks the app's records
    install_for(gateway)
    with root_output(logging.INFO) as output:
        logging.getLogger("app").warning("key %s", OPENAI_KEY)
    assert OPENAI_KEY not in output.getvalue()


def test_a_switch_from_the_environment_and_doctor_says_so(gateway: GatewaySimulator) -> None:
    env = app_env(gateway, YIBU_HOOKS__REQUESTS__ENABLED="false")
    result = subprocess.run(
        [sys.executable, "-m", "yibu_middleware.cli", "doctor"], env=env, capture_output=True, text=True, timeout=60
    )
    assert "hooks.requests.enabled = false" in result.stdout, result.stdout + result.stderr
    assert "its requests are not routed" in result.stdout


def test_a_misspelt_switch_is_a_settings_error(gateway: GatewaySimulator) -> None:
    env = app_env(gateway, YIBU_HOOKS__REQUEST__ENABLED="false")
    result = subprocess.run(
        [sys.executable, "-c", "import requests"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "YIBU_HOOKS__REQUEST__ENABLED" in result.stderr
