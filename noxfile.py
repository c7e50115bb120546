"""The version matrix: the lowest and the highest version the project claims for each client
library it hooks, one nox session each, running the tests that exercise that library.

CI (`scripts/test`) installs only the newest release of each library; this is how the older
ends of the claimed ranges are checked. It does not fit CI's time budget, so it is run by hand
with `scripts/matrix`, which wraps nox and prints a summary table (see the README's "Supported
client libraries"). `nox -l` lists the sessions; `nox -t requests` runs one library's.

Each session gets a virtualenv of its own holding: the checkout (a regular install, so the
start-up .pth is in place as for a user), the test tools, every hooked client library, and the
one library (or pair) under test pinned. The other client libraries are left for pip to choose,
as a user's installer would around that pin: the test modules import all of them, and the
tests selected for the library under test are those that send through it.
"""

from __future__ import annotations

import json
import os
import tomllib
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
RESULTS = Path(os.environ.get("MATRIX_RESULTS", ROOT / ".nox" / "matrix-results"))

nox.options.sessions = ["matrix"]
nox.options.reuse_venv = "yes"

# The files whose tests send real requests through the hooked clients (against the simulator
# or small servers of the tests' own). Files of pure logic (core, settings, limits) do not
# depend on a client's version and are left to scripts/test.
CLIENT_TEST_FILES = (
    "tests/test_hooks.py",
    "tests/test_clients.py",
    "tests/test_side_doors.py",
    "tests/test_routing_trust.py",
    "tests/test_limits_policy.py",
    "tests/test_resilience.py",
    "tests/test_tracing.py",
)

# The tests' own tools, taken with their specifiers from the `test` extra in pyproject.toml, so
# that the two never disagree (opentelemetry-util-genai is pinned there for a reason).
TEST_TOOLS = (
    "pytest",
    "pytest-asyncio",
    "opentelemetry-sdk",
    "opentelemetry-instrumentation-httpx",
    "opentelemetry-instrumentation-openai-v2",
    "opentelemetry-util-genai",
    "orjson",
)

# Every hooked client library, by name only: pip picks the newest that fits the session's pin.
CLIENT_LIBRARIES = ("httpx", "httpx2", "requests", "aiohttp", "openai", "anthropic")

# Which tests exercise a library, as a pytest -k expression over the test ids. A test that
# sends through a client names it, in the test's name or its parameter id ("httpx2-async",
# "openai-aiohttp", "requests-bearer"); the tests naming no client at all use the openai SDK.
# (pytest's -k matches substrings, case-insensitively: "httpx" alone would take in httpx2.)
SELECT = {
    "httpx": "httpx and not httpx2",
    "httpx2": "httpx2",
    "requests": "requests",
    "aiohttp": "aiohttp",
    "openai": "openai or not (httpx or requests or aiohttp or anthropic)",
    "anthropic": "anthropic",
}


@dataclass(frozen=True)
class Case:
    """One end of one library's claimed range: what to pin and which tests to run."""

    library: str  # the library under test; a key of SELECT
    label: str  # the name shown in the summary ("openai 2.x", "requests + urllib3 1.26")
    end: str  # "lowest" or "highest"
    pins: tuple[str, ...]  # requirement specifiers; "highest" ones are ranges, upgraded to their newest

    @property
    def id(self) -> str:
        return f"{self.label.replace(' + ', '-').replace(' ', '-')}-{self.end}"


# The claimed ranges. The lowest ends are exact pins from what the project states: pyproject's
# dependency and `test` extra floors, the README's "Supported client libraries" table, and the
# client libraries' own requirements where those set the floor. The highest ends are ranges
# resolved to their newest release at install time; the summary shows the version installed.
CASES = (
    # pyproject: httpx>=0.27 (the README's table says 0.28).
    Case("httpx", "httpx", "lowest", ("httpx==0.27.0",)),
    Case("httpx", "httpx", "highest", ("httpx>=0.27,<1",)),
    # The test extra: httpx2>=2; anthropic>=2 accepts httpx2 2.0.0 (openai>=3 asks for 2.7 or newer).
    Case("httpx2", "httpx2", "lowest", ("httpx2==2.0.0",)),
    Case("httpx2", "httpx2", "highest", ("httpx2>=2,<3",)),
    # README: requests 2.28 to 2.34 with urllib3 1.26 and 2.x. requests takes urllib3 2 from 2.30.
    Case("requests", "requests + urllib3 1.26", "lowest", ("requests==2.28.0", "urllib3==1.26.0")),
    Case("requests", "requests + urllib3 1.26", "highest", ("requests>=2.28,<3", "urllib3>=1.26,<1.27")),
    Case("requests", "requests + urllib3 2", "lowest", ("requests==2.30.0", "urllib3==2.0.2")),
    Case("requests", "requests + urllib3 2", "highest", ("requests>=2.30,<3", "urllib3>=2,<3")),
    # README: aiohttp 3.12 to 3.14 (3.12 brought the client middlewares the hook relies on).
    Case("aiohttp", "aiohttp", "lowest", ("aiohttp==3.12.0",)),
    Case("aiohttp", "aiohttp", "highest", ("aiohttp>=3.12,<4",)),
    # README: openai 3 (over httpx2) and openai 2 (over httpx); the test extra: openai>=3. openai 2's
    # DefaultAioHttpClient needs its `aiohttp` extra (httpx-aiohttp); openai 3 carries its own.
    Case("openai", "openai 2", "lowest", ("openai[aiohttp]==2.0.0",)),
    Case("openai", "openai 2", "highest", ("openai[aiohttp]>=2,<3",)),
    Case("openai", "openai 3", "lowest", ("openai==3.0.0",)),
    Case("openai", "openai 3", "highest", ("openai>=3,<4",)),
    # README: anthropic 2 (over httpx2); the test extra: anthropic>=2.
    Case("anthropic", "anthropic", "lowest", ("anthropic==2.0.0",)),
    Case("anthropic", "anthropic", "highest", ("anthropic>=2,<3",)),
)


def _test_tools() -> list[str]:
    """The TEST_TOOLS requirements as the `test` extra in pyproject.toml writes them."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    by_name = {}
    for requirement in extra:
        name = requirement.split(";")[0]
        for stop in "<>=!~[ ":
            name = name.split(stop)[0]
        by_name[name.lower()] = requirement
    return [by_name[name] for name in TEST_TOOLS]


def _pinned_names(case: Case) -> set[str]:
    names = set()
    for pin in case.pins:
        for stop in "<>=!~[":
            pin = pin.split(stop)[0]
        names.add(pin)
    return names


def _write(case: Case, record: dict[str, object]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    shown = {"order": CASES.index(case), "library": case.label, "end": case.end, **record}
    (RESULTS / f"{case.id}.json").write_text(json.dumps(shown))


def _installed(session: nox.Session, names: set[str]) -> str:
    """The versions installed in the session's virtualenv, as `name==version` joined by spaces."""
    code = "import importlib.metadata as m, sys; print(' '.join(f'{n}=={m.version(n)}' for n in sys.argv[1:]))"
    output = session.run("python", "-c", code, *sorted(names), silent=True)
    return str(output).strip()


def _junit_summary(path: Path) -> dict[str, object]:
    """Counts and the first failure from pytest's JUnit XML report."""
    root = ElementTree.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None, f"no testsuite in {path}"
    total = int(suite.get("tests", 0))
    failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skipped = int(suite.get("skipped", 0))
    first_error = ""
    for case in suite.iter("testcase"):
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is not None:
            message = (problem.get("message") or problem.text or "").strip().splitlines()
            where = f"{case.get('classname', '')}::{case.get('name', '')}".removeprefix("tests.")
            first_error = f"{where}: {message[0] if message else problem.tag}"
            break
    return {"passed": total - failed - skipped, "failed": failed, "skipped": skipped, "first_error": first_error}


@nox.session
@nox.parametrize("case", [nox.param(case, id=case.id, tags=[case.library]) for case in CASES])
def matrix(session: nox.Session, case: Case) -> None:
    """One end of one client library's claimed range: install it, run the tests that use it."""
    pinned = _pinned_names(case)
    _write(case, {"stage": "install", "versions": " ".join(case.pins)})
    others = [name for name in CLIENT_LIBRARIES if name not in pinned]
    # The pins and the rest in one resolve, so that pip fits the others around the pins.
    upgrade = ["--upgrade"] if case.end == "highest" else []
    session.install(*upgrade, *case.pins, *others, *_test_tools(), ".")
    versions = _installed(session, pinned)
    around = _installed(session, {*CLIENT_LIBRARIES, "urllib3"} - pinned)
    _write(case, {"stage": "tests", "versions": versions, "with": around})
    session.log(f"testing {versions} (with {around}): -k {SELECT[case.library]!r}")

    report = Path(session.create_tmp()) / "junit.xml"
    pytest_args = session.posargs or ["-x", "-q", "-p", "no:cacheprovider"]
    try:
        # The pytest script, not `python -m pytest`, which would put the checkout first on
        # sys.path and test the source tree instead of the installed package (as scripts/test).
        session.run(
            "pytest",
            *pytest_args,
            f"--junitxml={report}",
            "-k",
            SELECT[case.library],
            *CLIENT_TEST_FILES,
        )
    finally:
        summary = _junit_summary(report) if report.exists() else {"first_error": "pytest wrote no report"}
        _write(case, {"stage": "done", "versions": versions, "with": around, **summary})
