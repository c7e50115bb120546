"""Per-test outcomes from pytest's JUnit XML, and how a mode's differ from the `off` run's.

A test's id is `<classname>::<name>` as the JUnit report gives it, e.g.
`tests.test_client.TestOpenAI::test_copy[True]`. A difference is a test that passed with the
middleware off and did not pass (failed, errored, was skipped, or was not run at all) in
another mode.
"""

from __future__ import annotations

import fnmatch
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

PASSED, FAILED, ERROR, SKIPPED, MISSING = "passed", "failed", "error", "skipped", "missing"
# When one id appears more than once (a test that passed then errored in teardown), the
# worst outcome stands.
_RANK = {SKIPPED: 0, PASSED: 1, FAILED: 2, ERROR: 3}


@dataclass
class Outcome:
    status: str
    message: str = ""


@dataclass
class RunResult:
    """One pytest run: whether it started, and each test's outcome."""

    sdk: str
    mode: str
    exit_code: int
    seconds: float
    tests: dict[str, Outcome] = field(default_factory=dict)
    # Set when pytest stopped before running any test; the reason, from its output.
    startup_error: str | None = None
    # Set when the run was made again with extra pytest options after a start-up failure.
    workaround: str | None = None
    # The tests that differed, run again in `off` and in this mode: test id -> (off, this mode).
    rechecked: dict[str, tuple[str, str]] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(1 for outcome in self.tests.values() if outcome.status == status)


def read_junit(path: Path) -> dict[str, Outcome]:
    tests: dict[str, Outcome] = {}
    if not path.exists():
        return tests
    for case in ET.parse(path).getroot().iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        status, message = PASSED, ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                status = {"failure": FAILED, "error": ERROR, "skipped": SKIPPED}[child.tag]
                message = _first_line(child.get("message") or child.text or "")
                break
        previous = tests.get(test_id)
        if previous is None or _RANK[status] > _RANK[previous.status]:
            tests[test_id] = Outcome(status, message)
    return tests


def _first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return " ".join(line.split())[:240]
    return ""


@dataclass(frozen=True)
class Expected:
    """One line of expected.txt: `<sdk> <mode> <test-id pattern> | <reason>`."""

    sdk: str
    mode: str
    pattern: str
    reason: str
    line: int

    def matches(self, sdk: str, mode: str, test_id: str) -> bool:
        return (
            fnmatch.fnmatchcase(sdk, self.sdk)
            and fnmatch.fnmatchcase(mode, self.mode)
            and fnmatch.fnmatchcase(test_id, self.pattern)
        )


class ExpectedFileError(Exception):
    pass


def read_expected(path: Path) -> list[Expected]:
    entries: list[Expected] = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        head, bar, reason = line.partition("|")
        fields = head.split()
        if not bar or len(fields) != 3 or not reason.strip():
            raise ExpectedFileError(
                f"{path.name} line {number}: expected '<sdk> <mode> <test-id pattern> | <reason>', got {raw!r}"
            )
        entries.append(Expected(fields[0], fields[1], fields[2], reason.strip(), number))
    return entries


@dataclass
class Difference:
    test_id: str
    off: str
    now: Outcome
    expected: Expected | None
    # Run again, it passed in this mode or failed with the middleware off: the first
    # difference came from the test itself (timing under load), not from the middleware.
    flaky: bool = False


@dataclass
class Comparison:
    sdk: str
    mode: str
    differences: list[Difference]
    # Tests that failed with the middleware off and passed in this mode: shown, not an error.
    now_passing: list[str]

    @property
    def unexpected(self) -> list[Difference]:
        return [diff for diff in self.differences if diff.expected is None and not diff.flaky]

    @property
    def flaky(self) -> list[Difference]:
        return [diff for diff in self.differences if diff.expected is None and diff.flaky]


def compare(off: RunResult, other: RunResult, expected: list[Expected]) -> Comparison:
    differences: list[Difference] = []
    now_passing: list[str] = []
    for test_id, before in sorted(off.tests.items()):
        now = other.tests.get(test_id, Outcome(MISSING, "not run in this mode"))
        if before.status == PASSED and now.status != PASSED:
            match = next((entry for entry in expected if entry.matches(off.sdk, other.mode, test_id)), None)
            again_off, again_now = other.rechecked.get(test_id, (PASSED, now.status))
            flaky = again_off != PASSED or again_now == PASSED
            differences.append(Difference(test_id, before.status, now, match, flaky))
        elif before.status in (FAILED, ERROR) and now.status == PASSED:
            now_passing.append(test_id)
    return Comparison(off.sdk, other.mode, differences, now_passing)


def unused_entries(expected: list[Expected], comparisons: list[Comparison]) -> list[Expected]:
    """Entries of expected.txt that matched no difference in this run (stale, or a mode not run)."""
    used = {id(diff.expected) for comparison in comparisons for diff in comparison.differences if diff.expected}
    run = {(comparison.sdk, comparison.mode) for comparison in comparisons}
    return [
        entry
        for entry in expected
        if id(entry) not in used
        and any(fnmatch.fnmatchcase(sdk, entry.sdk) and fnmatch.fnmatchcase(mode, entry.mode) for sdk, mode in run)
    ]


def node_id(tree: Path, test_id: str) -> str | None:
    """pytest's node id for a JUnit test id: `a.b.test_x.TestC::name` -> `a/b/test_x.py::TestC::name`."""
    classname, _, name = test_id.partition("::")
    parts = classname.split(".")
    for split in range(len(parts), 0, -1):
        path = "/".join(parts[:split]) + ".py"
        if (tree / path).is_file():
            return "::".join([path, *parts[split:], name])
    return None
