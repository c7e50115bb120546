"""Each example app in integrations/, unmodified, in a subprocess with only environment variables set.

Without the middleware these apps would try api.openai.com / api.anthropic.com, which
this machine cannot reach; so an app that finishes and whose calls the simulator
recorded with the gateway key has gone through the hooks. Each app also runs under a
network guard (a ``sitecustomize`` on ``PYTHONPATH``, see ``NETWORK_GUARD``) that refuses,
and reports, any DNS lookup of or connection to a host that is not loopback: a library
phoning home (a price list, telemetry) fails the test instead of reaching out.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

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
    "requests_app.py": ({"/v1/chat/completions", "/v1/models"}, 3),
    "aiohttp_app.py": ({"/v1/messages"}, 4),
    "litellm_app.py": ({"/v1/chat/completions"}, 6),
    "llamaindex_app.py": ({"/v1/chat/completions"}, 6),
}

# Environment of the test run (never of the app's code) that some libraries need here.
APP_ENV = {
    # LiteLLM fetches its model price map from the internet at import unless told to use the
    # copy it ships (LITELLM_LOCAL_MODEL_COST_MAP); LITELLM_OFFLINE_MODE stops every other
    # fetch of its own too. The network guard checks that nothing else is reached.
    "litellm_app.py": {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_OFFLINE_MODE": "true"},
}

# The openai SDK these apps go through, by its User-Agent: LiteLLM's is the openai 3 of the
# test extra (over a legacy httpx client, sync, and LiteLLM's aiohttp transport, async);
# LlamaIndex's is an openai 2, whose clients are httpx (not httpx2) ones.
SDK_USER_AGENT = {
    "litellm_app.py": r"(Async)?OpenAI/Python 3\.",
    "llamaindex_app.py": r"(Async)?OpenAI/Python 2\.",
}

# llama-index-llms-openai needs openai<3, which cannot share a virtualenv with the openai 3
# the other apps use: scripts/test builds a second virtualenv (the checkout plus
# llama-index-llms-openai) and names its python in this variable.
LLAMAINDEX_PYTHON = "LLAMAINDEX_PYTHON"

NETWORK_GUARD = """\
import ipaddress
import os
import socket
import sys

_LOG = os.environ["NETWORK_GUARD_LOG"]


def _loopback(host):
    if isinstance(host, bytes):
        host = host.decode()
    if host is None or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _refuse(what):
    with open(_LOG, "a") as log:
        log.write(what + "\\n")
    raise PermissionError("network guard of the tests: " + what)


def _guard(event, args):
    if event == "socket.connect":
        sock, address = args
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            _refuse("connect to %r" % (address,))
    elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex"):
        if not _loopback(args[0]):
            _refuse("%s(%r)" % (event, args[0]))


sys.addaudithook(_guard)
"""


def interpreter(app: str) -> str:
    if app != "llamaindex_app.py":
        return PYTHON
    python = os.environ.get(LLAMAINDEX_PYTHON)
    if not python:
        pytest.skip(f"{LLAMAINDEX_PYTHON} is unset: scripts/test sets it to a virtualenv with llama-index-llms-openai")
    return python


def guarded_env(guard: Path, env: dict[str, str]) -> dict[str, str]:
    """``env`` with the network guard first on PYTHONPATH; it logs what it refused to ``guard/refused.log``."""
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(NETWORK_GUARD)
    paths = [str(guard), *filter(None, [env.get("PYTHONPATH")])]
    return {**env, "PYTHONPATH": os.pathsep.join(paths), "NETWORK_GUARD_LOG": str(guard / "refused.log")}


def refused(guard: Path) -> str:
    log = guard / "refused.log"
    return log.read_text() if log.exists() else ""


def run_app(app: str, simulator: GatewaySimulator, guard: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run an app under the network guard; fail if it tried to reach any host but loopback."""
    result = subprocess.run(
        [interpreter(app), str(INTEGRATIONS / app)],
        env=guarded_env(guard, app_env(simulator, **APP_ENV.get(app, {}), **env)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert not refused(guard), f"{app} tried to leave loopback:\n{refused(guard)}{result.stderr}"
    return result


def test_every_app_is_covered() -> None:
    assert set(APPS) == {path.name for path in INTEGRATIONS.glob("*.py")}


@pytest.mark.parametrize("app", sorted(APPS))
def test_app_reaches_gateway_with_gateway_key_only(app: str, gateway: GatewaySimulator, tmp_path: Path) -> None:
    result = run_app(app, gateway, tmp_path / "guard")
    assert result.returncode == 0, result.stderr
    paths, minimum = APPS[app]
    records = gateway.records
    assert {record.path for record in records} == paths
    assert len(records) >= minimum
    assert {record.key for record in records} == {GATEWAY_KEY}
    assert {record.status for record in records} == {200}
    assert_no_provider_key(gateway)
    if app in SDK_USER_AGENT:
        assert all(re.match(SDK_USER_AGENT[app], record.headers.get("user-agent", "")) for record in records)
    assert "streamed:" not in result.stdout or "Hello" in result.stdout
    for line in result.stdout.splitlines():
        if "streamed:" in line:  # every streamed reply arrived whole
            assert re.search(r"streamed: Hello from yibu simulator node '[abc]'\.$", line), line


def test_apps_fail_over_past_a_down_node(gateway: GatewaySimulator, tmp_path: Path) -> None:
    gateway.set_faults("a", refuse=True)
    result = run_app("openai_async_app.py", gateway, tmp_path / "guard", YIBU_LOG="info")
    assert result.returncode == 0, result.stderr
    assert {record.node for record in gateway.records} == {"b", "c"}
    assert "(tried: " in result.stderr and "connection failed" in result.stderr


def test_network_guard_refuses_other_hosts(tmp_path: Path) -> None:
    # Audit events raised by hand: the guard is exercised without any lookup or connection.
    probe = (
        "import socket, sys\n"
        "sys.audit('socket.getaddrinfo', '127.0.0.1', 80, 0, 0, 0)\n"
        "with socket.socket() as sock:\n"
        "    sys.audit('socket.connect', sock, ('127.0.0.1', 80))\n"
        "    for event, args in [('socket.connect', (sock, ('192.0.2.1', 443))),\n"
        "                        ('socket.getaddrinfo', ('api.openai.com', 443, 0, 0, 0))]:\n"
        "        try:\n"
        "            sys.audit(event, *args)\n"
        "        except PermissionError:\n"
        "            print('refused', event)\n"
    )
    guard = tmp_path / "guard"
    env = guarded_env(guard, {name: value for name, value in os.environ.items() if not name.startswith("YIBU_")})
    result = subprocess.run([PYTHON, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["refused socket.connect", "refused socket.getaddrinfo"]
    assert refused(guard) == "connect to ('192.0.2.1', 443)\nsocket.getaddrinfo('api.openai.com')\n"
