"""The sync code generated from its async source (scripts/unasync) is the code checked in."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "unasync"


def check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / "scripts" / "unasync"), "--check"], capture_output=True, text=True, timeout=120
    )


def test_every_sync_file_is_what_its_async_source_generates() -> None:
    result = check(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_hand_edited_sync_file_is_named(tmp_path: Path) -> None:
    """The check can fail: a copy of the tree whose sync driver was edited by hand."""
    shutil.copytree(ROOT / "yibu_middleware", tmp_path / "yibu_middleware")
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts" / "unasync")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    driver = tmp_path / "yibu_middleware" / "pipeline" / "_sync" / "driver.py"
    driver.write_text(driver.read_text().replace("sleep(action.delay)", "sleep(action.delay * 2)"))
    result = check(tmp_path)
    assert result.returncode == 1
    assert "yibu_middleware/pipeline/_sync/driver.py" in result.stderr and "run scripts/unasync" in result.stderr
