"""The README's configuration reference is rendered from the settings models, and CI fails when
the two disagree (``scripts/config-reference --check``, run here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from yibu_middleware.config_reference import (
    END,
    START,
    attribute_docs,
    differences,
    main,
    reference_rows,
    settings_source,
)
from yibu_middleware.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SCRIPT = ROOT / "scripts" / "config-reference"
MAX_ATTEMPTS_DOC = '"""Attempts per call, the first included, across all nodes."""'


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    """The script itself, as CI and a contributor run it."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120, check=False
    )


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The script's code in this process (each interpreter start costs seconds here): exit code, stderr."""
    code = main(list(args))
    return code, capsys.readouterr().err


def readme_copy(tmp_path: Path, text: str | None = None) -> Path:
    copy = tmp_path / "README.md"
    copy.write_text(README.read_text(encoding="utf-8") if text is None else text, encoding="utf-8")
    return copy


def test_readme_reference_matches_the_settings() -> None:
    """What CI checks: regenerate with scripts/config-reference when this fails."""
    result = run_script("--check")
    assert result.returncode == 0, result.stderr
    assert differences(README.read_text(encoding="utf-8"), reference_rows()) == []


def test_a_changed_docstring_fails_the_check_naming_the_setting() -> None:
    source = settings_source()
    assert MAX_ATTEMPTS_DOC in source  # the edit below must change something real
    edited = source.replace(MAX_ATTEMPTS_DOC, '"""Attempts per call, at most ten."""')
    problems = differences(README.read_text(encoding="utf-8"), reference_rows(edited))
    assert len(problems) == 1
    assert problems[0].startswith("- `retry.max_attempts` differs:")
    assert "Attempts per call, at most ten." in problems[0]


def test_an_edited_readme_row_fails_the_check_with_how_to_regenerate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = README.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `hedge.min_samples` |"))
    readme = readme_copy(tmp_path, text.replace(row, row.replace("`20`", "`25`")))

    code, err = run_main(capsys, "--check", "--readme", str(readme))

    assert code == 1
    assert "`hedge.min_samples` differs" in err
    assert "`25`" in err and "`20`" in err
    assert "edit its docstring in yibu_middleware/settings.py" in err
    assert "scripts/config-reference" in err


def test_a_setting_missing_from_the_readme_and_one_that_is_no_setting_are_named(tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `pin` |"))
    stale = row.replace("`pin`", "`pinned_node`").replace("`YIBU_PIN`", "`YIBU_PINNED_NODE`")
    problems = differences(text.replace(row, stale), reference_rows())
    assert "- `pin`: in the settings, missing from the README" in problems
    assert "- `pinned_node`: in the README, not a setting" in problems


def test_missing_markers_fail_the_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = readme_copy(tmp_path, README.read_text(encoding="utf-8").replace(END, ""))
    code, err = run_main(capsys, "--check", "--readme", str(readme))
    assert code == 1
    assert START in err and END in err


def test_rewriting_an_outdated_readme_restores_the_table_and_nothing_else(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = README.read_text(encoding="utf-8")
    row = next(line for line in original.splitlines() if line.startswith("| `log` |"))
    readme = readme_copy(tmp_path, original.replace(row + "\n", ""))
    assert run_main(capsys, "--check", "--readme", str(readme))[0] == 1

    result = run_script("--readme", str(readme))

    assert result.returncode == 0, result.stderr
    assert readme.read_text(encoding="utf-8") == original
    assert run_main(capsys, "--check", "--readme", str(readme))[0] == 0


def test_every_setting_has_a_row_with_its_meaning() -> None:
    rows = {row.setting: row for row in reference_rows()}
    assert "`retry.max_attempts`" in rows and "`limits.per_model`" in rows and "`keys.pass_through`" in rows
    assert all(row.meaning.strip() for row in rows.values()), [key for key, row in rows.items() if not row.meaning]
    # A top-level section (retry, limits, ...) is not a row of its own; its fields are.
    sections = [name for name, info in Settings.model_fields.items() if f"`{name}`" not in rows]
    expected = ["keys", "spend", "retry", "ejection", "health_check", "stream", "hedge", "affinity", "redaction"]
    expected += ["limits", "policy"]
    assert sections == [*expected, "hooks", "state", "egress"]


@pytest.mark.parametrize(
    ("setting", "environment", "type_", "default"),
    [
        ("`retry.max_attempts`", "`YIBU_RETRY__MAX_ATTEMPTS`", "integer, 1 to 10", "`3`"),
        ("`hedge.max_share`", "`YIBU_HEDGE__MAX_SHARE`", "number > 0, <= 0.5", "`0.05`"),
        ("`nodes`", "`YIBU_NODES` (comma-separated or JSON list)", "list of strings", "empty"),
        ("`redaction.extra_headers`", "`YIBU_REDACTION__EXTRA_HEADERS` (JSON list)", "list of strings", "empty"),
        ("`limits.per_model`", "`YIBU_LIMITS__PER_MODEL` (JSON object)", "table", "empty"),
        ("`stream.first_token_timeout`", "`YIBU_STREAM__FIRST_TOKEN_TIMEOUT`", "number > 0", "unset"),
        ("`log`", "`YIBU_LOG`", "one of `off`, `warning`, `info`, `debug`", "`off`"),
        ("—", "`YIBU_CONFIG`", "path", "unset"),
    ],
)
def test_columns_come_from_the_models(setting: str, environment: str, type_: str, default: str) -> None:
    row = next(row for row in reference_rows() if row.setting == setting and row.environment == environment)
    assert (row.type, row.default) == (type_, default)


def test_docstrings_are_read_from_source_including_inherited_and_module_level_ones() -> None:
    docs = attribute_docs(settings_source())
    assert docs["RetrySettings", "max_attempts"] == "Attempts per call, the first included, across all nodes."
    assert docs["", "CONFIG_ENV"] == "Path of the TOML settings file to read."
    limits = next(row for row in reference_rows() if row.setting == "`limits.max_concurrent`")
    assert limits.meaning == docs["ModelLimits", "max_concurrent"]  # inherited by LimitSettings
