"""Enabling the middleware never breaks the app's own test runner (issue 14, item 15).

The ``.pth`` start-up line imports ``yibu_middleware`` before pytest loads its plugins.
pytest marks every top-level package of a distribution that has a ``pytest11`` entry
point (ours: the ``gateway_simulator`` fixture) for assertion rewriting, and warns when
one is already imported; a project whose pytest settings say ``filterwarnings =
["error"]`` (the openai and anthropic SDKs', and many apps') then cannot start at all.
Only a regular install lists the package's files for pytest to mark, so this test
fails on the regular install CI runs, not on an editable one.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import GATEWAY_KEY, PYTHON

PROJECT = """
[tool.pytest.ini_options]
filterwarnings = ["error"]
asyncio_default_fixture_loop_scope = "function"
"""

TESTS = """
def test_arithmetic():
    assert 1 + 1 == 2


def test_rewritten_assertion_message():
    left = [1, 2]
    try:
        assert left == [1, 3]
    except AssertionError as exc:
        # pytest's rewriting explains a failed comparison; a plain assert would not.
        assert "[1, 3]" in str(exc)
"""


def _run_pytest(project: Path, *launcher: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {name: value for name, value in os.environ.items() if not name.startswith("YIBU_")}
    base.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(
        [*launcher, PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(project)],
        cwd=project,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def strict_project(tmp_path: Path) -> Path:
    (tmp_path / "pyproject.toml").write_text(PROJECT)
    (tmp_path / "test_app.py").write_text(TESTS)
    return tmp_path


# The two ways of turning the middleware on without code: the .pth line, and `yibu run`.
LAUNCHES = {
    "YIBU_ENABLED": ((), {"YIBU_ENABLED": "1"}),
    "yibu run": ((str(Path(PYTHON).parent / "yibu"), "run", "--"), {}),
}


@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_strict_warnings_project_runs_the_same_with_the_middleware_on(strict_project: Path, launch: str) -> None:
    off = _run_pytest(strict_project)
    assert off.returncode == 0, off.stdout + off.stderr
    launcher, env = LAUNCHES[launch]
    on = _run_pytest(strict_project, *launcher, YIBU_API_KEY=GATEWAY_KEY, **env)
    assert on.returncode == 0, on.stdout + on.stderr
    assert "2 passed" in on.stdout
    assert "PytestAssertRewriteWarning" not in on.stdout + on.stderr


def test_the_simulator_fixture_is_still_offered_with_the_middleware_on(strict_project: Path) -> None:
    (strict_project / "test_fixture.py").write_text(
        "def test_nodes(gateway_simulator):\n    assert [n.name for n in gateway_simulator.nodes] == ['a', 'b', 'c']\n"
    )
    on = _run_pytest(strict_project, YIBU_ENABLED="1", YIBU_API_KEY=GATEWAY_KEY)
    assert on.returncode == 0, on.stdout + on.stderr
    assert "3 passed" in on.stdout
