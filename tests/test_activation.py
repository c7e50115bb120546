"""The three ways in, none touching business code: the .pth line, `yibu run`, install();
and the command line's doctor and demo. Everything runs in real subprocesses."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from helpers import GATEWAY_KEY, INTEGRATIONS, PYTHON, ROOT, app_env

from yibu_middleware import demo
from yibu_middleware.core.redact import mask
from yibu_middleware.simulator import GatewaySimulator

PROBE = (
    "import sys, httpx2; hooked = type(httpx2.HTTPTransport.__dict__['handle_request']).__name__ != 'function';"
    " print('imported' if 'yibu_middleware' in sys.modules else 'not-imported', 'hooked' if hooked else 'plain')"
)
YIBU = str(Path(sys.executable).with_name("yibu"))
SECRET = "sk-very-secret-gateway-key-000000000000000000"


def run(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=cwd)


def clean_env(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("YIBU_")}
    env.update(extra)
    return env


def test_pth_file_is_installed() -> None:
    folders = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    assert any((Path(folder) / "yibu_middleware.pth").is_file() for folder in folders)


def test_disabled_imports_nothing_of_ours() -> None:
    result = run([PYTHON, "-c", PROBE], clean_env())
    assert result.stdout.split() == ["not-imported", "plain"], result.stderr


@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_enabled_values_hook_at_start(value: str, tmp_path: Path) -> None:
    result = run([PYTHON, "-c", PROBE], clean_env(YIBU_ENABLED=value, YIBU_API_KEY=SECRET), cwd=tmp_path)
    assert result.stdout.split() == ["imported", "hooked"], result.stderr


@pytest.mark.parametrize("value", ["0", "false", "no", "", "OFF", " False ", "  "])
def test_false_words_leave_the_app_alone(value: str) -> None:
    result = run([PYTHON, "-c", PROBE], clean_env(YIBU_ENABLED=value))
    assert result.stdout.split() == ["not-imported", "plain"]


@pytest.mark.parametrize("value", ["y", "ture", "2", "enable", "1.0", "t"])
def test_unknown_enabled_words_stop_the_app(value: str, tmp_path: Path) -> None:
    """A typo must neither switch routing off silently (keys go to the provider) nor guess."""
    env = clean_env(YIBU_ENABLED=value, YIBU_API_KEY=SECRET, YIBU_NODES="http://127.0.0.1:9/v1")
    result = run([PYTHON, "-c", "print('the app ran')"], env, cwd=tmp_path)
    assert result.returncode == 2 and "the app ran" not in result.stdout
    assert "YIBU_ENABLED" in result.stderr and repr(value) in result.stderr
    assert "1/true/yes/on" in result.stderr and "Traceback" not in result.stderr


def test_bad_settings_stop_the_app_with_one_clear_message(tmp_path: Path) -> None:
    env = clean_env(YIBU_ENABLED="1", YIBU_NODES="ftp://gw.example/v1", YIBU_API_KEY=SECRET)
    result = run([PYTHON, "-c", "print('the app ran')"], env, cwd=tmp_path)
    assert result.returncode == 2
    assert "the app ran" not in result.stdout
    assert "nodes" in result.stderr and "env YIBU_NODES" in result.stderr and "http(s) URL" in result.stderr
    assert "Traceback" not in result.stderr and SECRET not in result.stderr


def test_bad_settings_file_stops_the_app(tmp_path: Path) -> None:
    (tmp_path / "yibu.toml").write_text('nodes = ["https://gw.example/v1"]\nretries = 3\n')
    result = run([PYTHON, "-c", "print('the app ran')"], clean_env(YIBU_ENABLED="1"), cwd=tmp_path)
    assert result.returncode == 2 and "the app ran" not in result.stdout
    assert "unknown setting 'retries'" in result.stderr and "yibu.toml" in result.stderr


def test_yibu_run_runs_the_users_sitecustomize_too(tmp_path: Path) -> None:
    own = tmp_path / "own"
    own.mkdir()
    (own / "sitecustomize.py").write_text("import os\nos.environ['USER_SITECUSTOMIZE'] = 'ran'\n")
    probe = PROBE + "; import os; print(os.environ.get('USER_SITECUSTOMIZE'))"
    env = clean_env(PYTHONPATH=str(own), YIBU_API_KEY=SECRET)
    result = run([YIBU, "run", "--", PYTHON, "-c", probe], env, cwd=tmp_path)
    assert result.stdout.split() == ["imported", "hooked", "ran"], result.stderr


def test_yibu_run_works_where_pth_files_are_not_read(tmp_path: Path, gateway: GatewaySimulator) -> None:
    """A bare venv without our package: only yibu run's sitecustomize can switch us on there."""
    bare = tmp_path / "bare"
    venv.create(bare, with_pip=False)
    bare_python = bare / "bin" / "python"
    # Our package and its dependencies reach that interpreter through PYTHONPATH, whose
    # folders Python never scans for .pth files.
    deps = os.pathsep.join([str(ROOT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    env = app_env(gateway, PYTHONPATH=deps)
    env.pop("YIBU_ENABLED")
    control = run([str(bare_python), "-c", PROBE], env, cwd=tmp_path)
    assert control.stdout.split() == ["not-imported", "plain"], control.stderr
    result = run([YIBU, "run", "--", str(bare_python), str(INTEGRATIONS / "httpx_app.py")], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert gateway.records and {record.key for record in gateway.records} == {GATEWAY_KEY}


def test_yibu_run_reports_bad_settings_before_starting(tmp_path: Path) -> None:
    result = run([YIBU, "run", "--", PYTHON, "-c", "print('ran')"], clean_env(YIBU_BASE_URL="gw.example"), cwd=tmp_path)
    assert result.returncode == 2 and "ran" not in result.stdout and "base_url" in result.stderr


def test_yibu_run_without_a_gateway_key_reports_before_starting(tmp_path: Path) -> None:
    result = run([YIBU, "run", "--", PYTHON, "-c", "print('ran')"], clean_env(), cwd=tmp_path)
    assert result.returncode == 2 and "ran" not in result.stdout
    assert "YIBU_API_KEY" in result.stderr and "YIBU_KEYS__PASS_THROUGH" in result.stderr


def test_yibu_run_without_a_command() -> None:
    result = run([YIBU, "run"], clean_env())
    assert result.returncode == 2 and "no command given" in result.stderr


def test_doctor_shows_sources_hooks_and_nodes(tmp_path: Path, gateway: GatewaySimulator) -> None:
    gateway.set_faults("c", refuse=True)
    env = app_env(gateway, YIBU_API_KEY=SECRET)
    result = run([YIBU, "doctor"], env, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr  # the nodes reject SECRET
    out = result.stdout
    assert SECRET not in out and "...0000" in out
    assert "env YIBU_NODES" in out and "env YIBU_API_KEY" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "hooked" in lines["httpx2"] and "hooked" in lines["httpx"]
    for node in gateway.nodes:
        line = next(line for line in out.splitlines() if line.strip().startswith(node.base_url))
        assert ("unreachable" in line) == (node.name == "c")
    assert "key rejected" in out  # the simulator accepts only GATEWAY_KEY, not SECRET


def test_doctor_reports_bad_settings(tmp_path: Path) -> None:
    result = run([YIBU, "doctor"], clean_env(YIBU_MODEL_ALIASES="gpt-4=gpt-5"), cwd=tmp_path)
    assert result.returncode == 2 and "model_aliases" in result.stdout and "JSON" in result.stdout


def test_demo(tmp_path: Path) -> None:
    result = run([YIBU, "demo"], clean_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "(tried: down: connection failed" in out
    assert "provider key reached the gateway: never" in out
    assert "gateway key" in out and "PROVIDER KEY" not in out
    # Both keys shown masked, so the swap shows, and neither whole.
    assert f"its provider key is {mask(demo.PROVIDER_KEYS['OPENAI_API_KEY'])}, the gateway key sk-..." in out
    assert f"credential: gateway key {mask(demo.GATEWAY_KEY)} " in out
    assert demo.GATEWAY_KEY not in out and not any(key in out for key in demo.PROVIDER_KEYS.values())


def test_demo_names_the_package_an_app_lacks(tmp_path: Path) -> None:
    # The test virtualenv has no LlamaIndex (it needs openai<3): the demo says where it runs.
    result = run([YIBU, "demo", "--app", "llamaindex_app"], clean_env(), cwd=tmp_path)
    assert result.returncode == 1
    assert "This app needs llama-index-llms-openai, which needs openai<3" in result.stdout


def test_the_installed_package_is_under_test() -> None:
    """scripts/test runs the suite against an install; say which kind, and check it is one."""
    import yibu_middleware

    location = Path(yibu_middleware.__file__).resolve()
    in_checkout = location.is_relative_to(ROOT / "yibu_middleware")
    editable = any(Path(folder, "_editable_impl_yibu_middleware.pth").is_file() for folder in site.getsitepackages())
    assert editable or not in_checkout, "a regular install must be imported from site-packages, not the checkout"
