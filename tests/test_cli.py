"""The `yibu` command as a user first meets it: its version, its help, each command's help under
its own name, and `yibu simulate`'s request log showing which key arrived (masked).
Everything runs the installed `yibu` script in a real subprocess."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import GATEWAY_KEY, OPENAI_KEY, PYTHON

from yibu_middleware.core.redact import mask

YIBU = str(Path(sys.executable).with_name("yibu"))
COMMANDS = ("run", "doctor", "demo", "simulate")


def yibu(*args: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("YIBU_")}
    return subprocess.run([YIBU, *args], env=env, capture_output=True, text=True, timeout=60)


def test_version_is_the_installed_distributions() -> None:
    result = yibu("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"yibu {importlib.metadata.version('yibu-middleware')}\n"


def test_yibu_alone_prints_the_help_with_every_command() -> None:
    result = yibu()
    # Exit status 2, argparse's for a usage error: `yibu "$command"` with an empty $command must not pass.
    assert result.returncode == 2
    assert result.stdout.startswith("usage: yibu ")
    for command in COMMANDS:
        assert f"\n    {command} " in result.stdout, command
    assert "--version" in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_each_commands_help_names_it(command: str) -> None:
    result = yibu(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: yibu {command} "), result.stdout


def test_simulate_errors_name_it() -> None:
    result = yibu("simulate", "--node", "a:latncy=1")
    assert result.returncode == 2
    assert result.stderr.startswith("usage: yibu simulate ")
    assert "yibu simulate: error: --node 'a:latncy=1': unknown fault field 'latncy'" in result.stderr


@contextlib.contextmanager
def simulate(*args: str) -> Iterator[tuple[list[str], list[str]]]:
    """`yibu simulate ARGS` running: the nodes' base URLs, then (once stopped) its request log lines."""
    proc = subprocess.Popen([YIBU, "simulate", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    try:
        assert proc.stdout is not None
        nodes = [proc.stdout.readline().split()[1] for _ in range(args.count("--node"))]
        yield nodes, log
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        log.extend(stderr.splitlines())
    assert proc.returncode == 0, stderr


def test_simulator_log_shows_the_swapped_in_gateway_key_masked() -> None:
    """An unmodified openai app with the middleware on: the log shows the gateway key (masked) arrive,
    never the provider key the app holds."""
    with simulate("--node", "healthy", "--key", GATEWAY_KEY) as (nodes, log):
        app = "from openai import OpenAI; OpenAI(max_retries=0).models.list()"
        env = {name: value for name, value in os.environ.items() if not name.startswith("YIBU_")}
        env.update(YIBU_ENABLED="1", YIBU_NODES=nodes[0], YIBU_API_KEY=GATEWAY_KEY, OPENAI_API_KEY=OPENAI_KEY)
        result = subprocess.run([PYTHON, "-c", app], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    requests = [line for line in log if " GET /v1/models " in line]
    assert len(requests) == 1, log
    assert f" key={mask(GATEWAY_KEY)}(accepted) " in requests[0]
    assert mask(GATEWAY_KEY) == "sk-..." + GATEWAY_KEY[-4:]
    text = "\n".join(log)
    assert GATEWAY_KEY not in text and OPENAI_KEY not in text and "sk-proj-" not in text


def test_simulator_log_shows_a_provider_key_that_arrived_masked() -> None:
    """Sent straight to the node (no middleware), the provider key arrives: the log says so, masked,
    and that it was rejected; a request without a key says absent."""
    with simulate("--node", "healthy", "--key", GATEWAY_KEY) as (nodes, log):
        assert httpx.get(nodes[0] + "/models", headers={"authorization": f"Bearer {OPENAI_KEY}"}).status_code == 401
        assert httpx.get(nodes[0] + "/models", headers={"x-api-key": GATEWAY_KEY}).status_code == 200
        assert httpx.get(nodes[0] + "/models").status_code == 401
    requests = [line for line in log if " GET /v1/models " in line]
    assert len(requests) == 3, log
    assert f" key=sk-proj-...{OPENAI_KEY[-4:]}(rejected) " in requests[0]
    assert f" key=sk-...{GATEWAY_KEY[-4:]}(accepted) " in requests[1]
    assert " key=absent " in requests[2]
    text = "\n".join(log)
    assert GATEWAY_KEY not in text and OPENAI_KEY not in text


def test_demo_names_a_missing_package(capsys: pytest.CaptureFixture[str]) -> None:
    from yibu_middleware.demo import _explain_missing_package

    _explain_missing_package("Traceback ...\nModuleNotFoundError: No module named 'langchain_core'\n")
    _explain_missing_package("Traceback ...\nModuleNotFoundError: No module named 'litellm.llms'\n")
    _explain_missing_package("ValueError: not a missing module\n")
    assert capsys.readouterr().out == (
        f"\nThis app needs langchain-openai: {sys.executable} -m pip install langchain-openai\n"
        f"\nThis app needs litellm: {sys.executable} -m pip install litellm\n"
    )
