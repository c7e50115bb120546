"""`yibu doctor`: its verdict on whether this process's app would be routed, and its exit
status when a node rejects the key or the node URL's path is wrong. Real subprocesses
against the gateway simulator and small loopback servers."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import GATEWAY_KEY, app_env

from yibu_middleware.simulator import GatewaySimulator

YIBU = str(Path(sys.executable).with_name("yibu"))
PASSWORD = "hunter2-node-password-7f3a9c"


def doctor(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [YIBU, "doctor", "--timeout", "5"], env=env, capture_output=True, text=True, timeout=120, cwd=cwd
    )


def clean_env(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("YIBU_")}
    env.update(extra)
    return env


def verdict(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("Routing:"))


def test_routed_when_enabled_with_a_key_and_nodes_accept_it(gateway: GatewaySimulator, tmp_path: Path) -> None:
    result = doctor(app_env(gateway), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert verdict(result.stdout).startswith("Routing: ON")


def test_not_routed_when_yibu_enabled_is_unset(gateway: GatewaySimulator, tmp_path: Path) -> None:
    env = app_env(gateway)
    del env["YIBU_ENABLED"]
    (tmp_path / "yibu.toml").write_text("enabled = true\n")  # the file cannot switch it on at start
    result = doctor(env, tmp_path)
    assert result.returncode == 0, result.stdout  # the settings are fine: `yibu run` would route it
    line = verdict(result.stdout)
    assert line.startswith("Routing: OFF") and "YIBU_ENABLED is not set" in line


@pytest.mark.parametrize("word", ["y", "ture", "2"])
def test_unknown_enabled_word_is_a_settings_error(gateway: GatewaySimulator, tmp_path: Path, word: str) -> None:
    result = doctor(app_env(gateway, YIBU_ENABLED=word), tmp_path)
    assert result.returncode == 2
    assert "YIBU_ENABLED" in result.stdout and "Routing: ON" not in result.stdout


def test_no_gateway_key_is_not_routed_and_exits_2(gateway: GatewaySimulator, tmp_path: Path) -> None:
    env = app_env(gateway)
    del env["YIBU_API_KEY"]
    result = doctor(env, tmp_path)
    assert result.returncode == 2, result.stdout
    line = verdict(result.stdout)
    assert line.startswith("Routing: OFF") and "YIBU_API_KEY" in line and "would not start" in line
    enabled = next(line for line in result.stdout.splitlines() if line.split()[:1] == ["enabled"])
    assert "not routed" in enabled


def test_pass_through_is_routed_without_a_key(tmp_path: Path) -> None:
    with GatewaySimulator(accepted_keys=None) as simulator:
        simulator.add_node("a")
        env = clean_env(YIBU_ENABLED="1", YIBU_NODES=simulator.nodes[0].base_url, YIBU_KEYS__PASS_THROUGH="1")
        result = doctor(env, tmp_path)
    assert result.returncode == 0, result.stdout
    assert verdict(result.stdout).startswith("Routing: ON") and "pass through" in result.stdout


def test_misspelt_setting_is_reported_not_routed(gateway: GatewaySimulator, tmp_path: Path) -> None:
    result = doctor(app_env(gateway, YIBU_API_KYE="x"), tmp_path)
    assert result.returncode == 2
    assert "YIBU_API_KYE" in result.stdout and "did you mean YIBU_API_KEY" in result.stdout


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_key_exits_non_zero(gateway: GatewaySimulator, tmp_path: Path, status: int) -> None:
    if status == 401:
        env = app_env(gateway, YIBU_API_KEY="sk-gw-not-the-right-key-000000000000")
    else:
        env = app_env(gateway)
        for node in gateway.nodes:
            gateway.set_faults(node.name, status_override=403)
    result = doctor(env, tmp_path)
    assert result.returncode == 1, result.stdout
    assert ("key rejected" if status == 401 else "key not allowed") in result.stdout
    assert "sk-gw-not-the-right-key" not in result.stdout


def test_one_rejecting_node_among_good_ones_exits_non_zero(gateway: GatewaySimulator, tmp_path: Path) -> None:
    gateway.set_faults("b", status_override=401)
    result = doctor(app_env(gateway), tmp_path)
    assert result.returncode == 1, result.stdout
    line = next(line for line in result.stdout.splitlines() if line.strip().startswith(gateway.nodes[1].base_url))
    assert "key rejected" in line


def test_missing_v1_in_node_url_is_named(gateway: GatewaySimulator, tmp_path: Path) -> None:
    """The simulator serves /v1/models; a node URL without /v1 gets 404 on /models."""
    env = app_env(gateway, YIBU_NODES=",".join(node.origin for node in gateway.nodes))
    result = doctor(env, tmp_path)
    assert result.returncode == 1, result.stdout
    assert "404" in result.stdout and f"{gateway.nodes[0].origin}/v1" in result.stdout


class _Answer(BaseHTTPRequestHandler):
    status = 404

    def do_GET(self) -> None:
        body = b"<html>not here</html>"
        self.send_response(self.status)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def not_found_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_404_on_a_node_that_has_v1_says_the_path_is_wrong(not_found_server: str, tmp_path: Path) -> None:
    env = clean_env(YIBU_ENABLED="1", YIBU_NODES=f"{not_found_server}/v1", YIBU_API_KEY=GATEWAY_KEY)
    result = doctor(env, tmp_path)
    assert result.returncode == 1, result.stdout
    assert "404" in result.stdout and "not a gateway" in result.stdout


def test_userinfo_in_a_node_url_is_never_printed(tmp_path: Path) -> None:
    env = clean_env(YIBU_ENABLED="1", YIBU_NODES=f"https://yibu:{PASSWORD}@gw.example/v1", YIBU_API_KEY=GATEWAY_KEY)
    result = doctor(env, tmp_path)
    assert result.returncode == 2
    assert PASSWORD not in result.stdout + result.stderr and "YIBU_NODES" in result.stdout
