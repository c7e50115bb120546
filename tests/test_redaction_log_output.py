"""``YIBU_LOG=info`` prints each call's line once, whatever the app's own logging (issue 14, item 14).

The library's stderr handler stands aside for a record that the app's own handlers already
write to stderr (``logging.basicConfig``), and prints it otherwise; the app's other
handlers (a file) keep getting the library's lines either way.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import GATEWAY_KEY, PROVIDER_KEYS, PYTHON, app_env

from yibu_middleware.simulator import GatewaySimulator

APP = """
import logging, sys

import openai

setup = sys.argv[1]
if setup == "basicConfig":
    logging.basicConfig(level=logging.INFO)
elif setup == "basicConfig-warning":
    logging.basicConfig(level=logging.WARNING)
elif setup == "file":
    logging.basicConfig(level=logging.INFO, filename=sys.argv[2])

client = openai.OpenAI(max_retries=0)
for _ in range(2):
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
"""
CALL_LINE = "POST api.openai.com/v1/chat/completions model=gpt-4o ->"


def run(setup: str, gateway: GatewaySimulator, tmp_path: Path) -> str:
    (tmp_path / "app.py").write_text(APP)
    env = app_env(gateway, YIBU_LOG="info")
    result = subprocess.run(
        [PYTHON, "app.py", setup, str(tmp_path / "app.log")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for key in (*PROVIDER_KEYS, GATEWAY_KEY):
        assert key not in result.stdout + result.stderr
    return result.stderr


@pytest.mark.parametrize("setup", ["basicConfig", "basicConfig-warning"])
def test_each_call_is_printed_once_with_the_apps_basic_config(
    setup: str, gateway: GatewaySimulator, tmp_path: Path
) -> None:
    stderr = run(setup, gateway, tmp_path)
    assert stderr.count(CALL_LINE) == 2, stderr  # two calls, one line each


def test_each_call_is_printed_once_without_app_logging(gateway: GatewaySimulator, tmp_path: Path) -> None:
    stderr = run("none", gateway, tmp_path)
    assert stderr.count(CALL_LINE) == 2 and stderr.count(f"yibu: {CALL_LINE}") == 2, stderr


def test_the_apps_log_file_still_gets_the_lines(gateway: GatewaySimulator, tmp_path: Path) -> None:
    stderr = run("file", gateway, tmp_path)
    assert stderr.count(CALL_LINE) == 2, stderr  # the file is not stderr: ours prints
    assert (tmp_path / "app.log").read_text().count(CALL_LINE) == 2
