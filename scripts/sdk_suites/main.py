"""scripts/sdk-suites: the SDKs' own unit tests with the middleware off and on, compared per test.

Steps, per SDK: resolve its version from the project's test extra; make its virtualenv
(.venv/sdk-suites/<sdk>: the checkout plus the SDK and its test dependencies); unpack its
published source release; run its tests once per mode (pytest-xdist, JUnit XML); then compare
each mode with `off` and check every difference against scripts/sdk_suites/expected.txt.

Exit status: 0 when every difference is expected, 1 when one is not (or a suite could not
start with the middleware on), 2 when the run itself could not be set up.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from . import environment, modes, outcomes

HERE = Path(__file__).resolve().parent
EXPECTED = HERE / "expected.txt"
RESULTS = environment.BASE / "results"

# Item 15 of issue 14: with the middleware enabled, the `.pth` start-up imports yibu_middleware
# before pytest marks the package's own pytest11 plugin (yibu_simulator) for assertion
# rewriting; pytest then warns that it cannot rewrite it, and both SDKs' `filterwarnings =
# ["error"]` make that warning fatal, so pytest stops before any test. The start-up failure is
# reported as such; the run is then made once more with this one warning ignored (command-line
# -W filters take precedence over the ini's), so that the per-test comparison still says what
# else differs. Once item 15 is fixed the retry never happens.
STARTUP_WORKAROUND = ("-W", "ignore::pytest.PytestAssertRewriteWarning")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/sdk-suites",
        description="Run the openai and anthropic SDKs' own unit tests with the middleware off, "
        "routed, and on with nothing routed; compare the outcomes per test.",
        epilog="Arguments after -- go to every pytest run, e.g. -- -k streaming.",
    )
    parser.add_argument("--sdk", action="append", choices=sorted(environment.SDKS), help="default: both")
    parser.add_argument(
        "--mode",
        action="append",
        choices=[name for name in modes.MODES if name != "off"],
        help="modes compared with off (always run); default: all",
    )
    for name in environment.SDKS:
        parser.add_argument(f"--{name}-version", help=f"pin {name} instead of resolving the test extra")
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers (default 2)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds one pytest run may take (default 1800)")
    parser.add_argument("--fresh", action="store_true", help="make the virtualenvs and unpack the sources again")
    parser.add_argument(
        "--compare-only",
        action="store_true",
        help="run nothing: compare the results the last run left in .venv/sdk-suites/results",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the results of runs already made for the same SDK version, library code and pytest arguments",
    )
    parser.add_argument(
        "--recheck-max",
        type=int,
        default=400,
        help="run the tests that differ once more, off and on, when there are at most this many (0: never)",
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter for the virtualenvs")
    parser.add_argument("pytest_args", nargs="*", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sdks = [environment.SDKS[name] for name in (args.sdk or list(environment.SDKS))]
    mode_list = [modes.OFF] + [modes.MODES[name] for name in (args.mode or ["routed", "unrouted"])]
    try:
        expected = outcomes.read_expected(EXPECTED)
    except outcomes.ExpectedFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        results = (
            [load_result(sdk.name, mode.name) for sdk in sdks for mode in mode_list]
            if args.compare_only
            else prepare_and_run(args, sdks, mode_list)
        )
    except environment.SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    status = report(results, expected)
    if not args.compare_only:
        print(f"\nwall time: {time.monotonic() - started:.0f} s")
    return status


def prepare_and_run(
    args: argparse.Namespace, sdks: list[environment.Sdk], mode_list: list[modes.Mode]
) -> list[outcomes.RunResult]:
    environment.BASE.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    print("== versions (the project's test extra, as pip resolves it)")
    pip = environment.tools_pip(args.python)
    overrides = {sdk.name: getattr(args, f"{sdk.name}_version") for sdk in sdks if getattr(args, f"{sdk.name}_version")}
    versions = environment.resolve_versions(pip, [sdk.name for sdk in sdks], overrides)
    print("  " + ", ".join(f"{name} {version}" for name, version in versions.items()))
    results: list[outcomes.RunResult] = []
    for sdk in sdks:
        version = versions[sdk.name]
        print(f"\n== {sdk.name} {version}: source release and virtualenv")
        tree = environment.source_release(pip, sdk, version, fresh=args.fresh)
        print(f"  tests from {tree.relative_to(environment.ROOT)}/tests (left out: {', '.join(sdk.ignore)})")
        requirements = environment.test_requirements(sdk, version, tree)
        venv = environment.sdk_venv(args.python, sdk, requirements, fresh=args.fresh)
        routed_hosts = environment.default_routed_hosts(venv)
        port = modes.closed_loopback_port()
        key = run_key(version, args.pytest_args)
        runs: dict[str, tuple[modes.Mode, dict[str, str], outcomes.RunResult]] = {}
        for mode in mode_list:
            env = modes.environment(mode, node_port=port, routed_hosts=routed_hosts)
            print(f"\n== {sdk.name} / {mode.name}: {mode.summary}\n  {modes.describe(mode, env)}")
            if args.resume and saved_key(sdk.name, mode.name) == key:
                result = load_result(sdk.name, mode.name)
                print(f"  kept from an earlier run (--resume): {len(result.tests)} tests")
                runs[mode.name] = (mode, env, result)
                continue
            result = run_suite(sdk, mode, venv, tree, env, args)
            if result.startup_error and mode is not modes.OFF and "PytestAssertRewriteWarning" in result.startup_error:
                print(f"  pytest did not start: {result.startup_error}")
                first_log = log_path(sdk.name, mode.name).rename(RESULTS / f"{sdk.name}-{mode.name}-did-not-start.log")
                print(f"  (its log: {first_log.name}); running again with {' '.join(STARTUP_WORKAROUND)} (item 15)")
                again = run_suite(sdk, mode, venv, tree, env, args, extra=STARTUP_WORKAROUND)
                again.startup_error = result.startup_error
                again.workaround = " ".join(STARTUP_WORKAROUND)
                result = again
            if mode is modes.OFF and (result.startup_error or not result.tests):
                raise environment.SetupError(
                    f"{sdk.name}'s suite did not run with the middleware off, so there is nothing to compare "
                    f"against: {result.startup_error or 'no test ran'} (log: {log_path(sdk.name, mode.name)})"
                )
            save_result(result, key)
            runs[mode.name] = (mode, env, result)
        if args.recheck_max:
            recheck(sdk, venv, tree, runs, key, args)
        results += [result for _, _, result in runs.values()]
    return results


def recheck(
    sdk: environment.Sdk,
    venv: Path,
    tree: Path,
    runs: dict[str, tuple[modes.Mode, dict[str, str], outcomes.RunResult]],
    key: dict[str, object],
    args: argparse.Namespace,
) -> None:
    """Run the tests that differ once more, off and on, so that a test that fails now and then
    under load (the suites hold timing tests) is not taken for a difference the middleware makes."""
    _, off_env, off = runs["off"]
    expected = outcomes.read_expected(EXPECTED)
    for name, (mode, env, result) in runs.items():
        if mode is modes.OFF or result.rechecked:
            continue
        differing = [diff.test_id for diff in outcomes.compare(off, result, expected).unexpected]
        if not differing:
            continue
        if len(differing) > args.recheck_max:
            print(f"\n  {sdk.name} / {name}: {len(differing)} tests differ, over --recheck-max; not run again")
            continue
        nodes = [node for node in (outcomes.node_id(tree, test_id) for test_id in differing) if node]
        print(f"\n== {sdk.name} / {name}: the {len(nodes)} tests that differ, run again off and {name}")
        tests = ("--", *nodes)
        again_off = run_suite(sdk, modes.OFF, venv, tree, off_env, args, label=f"{name}-recheck-off", tests=tests)
        workaround = STARTUP_WORKAROUND if result.workaround else ()
        again = run_suite(sdk, mode, venv, tree, env, args, extra=workaround, label=f"{name}-recheck", tests=tests)
        missing = outcomes.Outcome(outcomes.MISSING)
        result.rechecked = {
            test_id: (again_off.tests.get(test_id, missing).status, again.tests.get(test_id, missing).status)
            for test_id in differing
        }
        save_result(result, key)


def log_path(sdk: str, mode: str) -> Path:
    return RESULTS / f"{sdk}-{mode}.log"


def run_suite(
    sdk: environment.Sdk,
    mode: modes.Mode,
    venv: Path,
    tree: Path,
    env: dict[str, str],
    args: argparse.Namespace,
    extra: tuple[str, ...] = (),
    label: str | None = None,
    tests: tuple[str, ...] = (),
) -> outcomes.RunResult:
    """One pytest run of the suite (or of `tests`, node ids after a `--`), in `env`."""
    stem = f"{sdk.name}-{label or mode.name}"
    junit = RESULTS / f"{stem}.xml"
    junit.unlink(missing_ok=True)
    # The SDK's own pytest settings stay in force (its addopts, filterwarnings, plugins); -n
    # given here overrides its `-n auto`, which would start a worker per core.
    cmd = [
        str(venv / "bin" / "pytest"),
        "-n",
        str(args.workers),
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        "-q",
        *(f"--ignore={path}" for path in sdk.ignore),
        *extra,
        *args.pytest_args,
        *tests,
    ]
    log = RESULTS / f"{stem}.log"
    started = time.monotonic()
    with log.open("w") as out:
        out.write(f"$ {' '.join(cmd)}\n# cwd {tree}\n# {modes.describe(mode, env)}\n")
        out.flush()
        process = subprocess.Popen(cmd, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            exit_code = process.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            # Our own child's process group (start_new_session): the xdist workers go with it.
            os.killpg(process.pid, signal.SIGKILL)
            exit_code = process.wait()
            out.write(f"\n# killed after {args.timeout} s\n")
    seconds = time.monotonic() - started
    result = outcomes.RunResult(sdk.name, mode.name, exit_code, seconds, outcomes.read_junit(junit))
    if not result.tests and exit_code != 0:
        result.startup_error = startup_reason(log)
    print(
        f"  {len(result.tests)} tests: {result.count(outcomes.PASSED)} passed, "
        f"{result.count(outcomes.FAILED) + result.count(outcomes.ERROR)} failed, "
        f"{result.count(outcomes.SKIPPED)} skipped; exit {exit_code} in {seconds:.0f} s (log: {log.name})"
    )
    return result


def startup_reason(log: Path) -> str:
    """The line of pytest's output that says why it stopped before running a test."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if "Warning:" in line or "Error:" in line or line.startswith("E "):
            return line[:300]
    return lines[-1][:300] if lines else "no output"


def run_key(version: str, pytest_args: list[str]) -> dict[str, object]:
    """What a result depends on: the SDK version, the library's code as it is now, the pytest arguments."""
    paths = ["yibu_middleware", "yibu_middleware.pth", "pyproject.toml"]
    git = ["git", "-C", str(environment.ROOT)]
    tree = subprocess.run([*git, "ls-tree", "-r", "HEAD", *paths], capture_output=True, text=True).stdout
    changes = subprocess.run([*git, "diff", "HEAD", "--", *paths], capture_output=True, text=True).stdout
    code = hashlib.sha256((tree + changes).encode()).hexdigest()[:16]
    return {"version": version, "library_code": code, "pytest_args": pytest_args}


def saved_key(sdk: str, mode: str) -> object:
    meta_path = RESULTS / f"{sdk}-{mode}.json"
    return json.loads(meta_path.read_text()).get("key") if meta_path.exists() else None


def save_result(result: outcomes.RunResult, key: dict[str, object]) -> None:
    meta = {
        "key": key,
        "exit_code": result.exit_code,
        "seconds": result.seconds,
        "startup_error": result.startup_error,
        "workaround": result.workaround,
        "rechecked": result.rechecked,
    }
    (RESULTS / f"{result.sdk}-{result.mode}.json").write_text(json.dumps(meta, indent=1))


def load_result(sdk: str, mode: str) -> outcomes.RunResult:
    meta_path = RESULTS / f"{sdk}-{mode}.json"
    if not meta_path.exists():
        raise environment.SetupError(f"no saved result for {sdk} / {mode} in {RESULTS}: run without --compare-only")
    meta = json.loads(meta_path.read_text())
    result = outcomes.RunResult(
        sdk, mode, meta["exit_code"], meta["seconds"], outcomes.read_junit(RESULTS / f"{sdk}-{mode}.xml")
    )
    result.startup_error = meta["startup_error"]
    result.workaround = meta["workaround"]
    result.rechecked = {test_id: (pair[0], pair[1]) for test_id, pair in meta.get("rechecked", {}).items()}
    return result


def report(results: list[outcomes.RunResult], expected: list[outcomes.Expected]) -> int:
    by_key = {(result.sdk, result.mode): result for result in results}
    comparisons: dict[tuple[str, str], outcomes.Comparison] = {}
    for (sdk, mode), result in by_key.items():
        if mode != "off":
            comparisons[(sdk, mode)] = outcomes.compare(by_key[(sdk, "off")], result, expected)

    print("\n== outcomes per mode; a difference = passed with the middleware off, not passed in this mode")
    header = f"{'sdk':<10} {'mode':<9} {'tests':>6} {'passed':>7} {'failed':>7} {'skipped':>8} "
    header += f"{'differ':>7} {'expected':>9} {'flaky':>6} {'UNEXPECTED':>10} {'seconds':>8}  started"
    print(header)
    print("-" * len(header))
    failing = False
    for (sdk, mode), result in by_key.items():
        comparison = comparisons.get((sdk, mode))
        differ = len(comparison.differences) if comparison else 0
        unexpected = len(comparison.unexpected) if comparison else 0
        flaky = len(comparison.flaky) if comparison else 0
        started = "yes"
        if result.startup_error:
            started = "NO (see below)"
            failing = True
        failing = failing or unexpected > 0
        print(
            f"{sdk:<10} {mode:<9} {len(result.tests):>6} {result.count(outcomes.PASSED):>7} "
            f"{result.count(outcomes.FAILED) + result.count(outcomes.ERROR):>7} {result.count(outcomes.SKIPPED):>8} "
            f"{differ if comparison else '-':>7} {differ - unexpected - flaky if comparison else '-':>9} "
            f"{flaky if comparison else '-':>6} {unexpected if comparison else '-':>10} "
            f"{result.seconds:>8.0f}  {started}"
        )

    for (sdk, mode), comparison in comparisons.items():
        result = by_key[(sdk, mode)]
        details = RESULTS / f"differences-{sdk}-{mode}.txt"
        write_details(details, comparison)
        if result.startup_error:
            print(f"\n-- {sdk} / {mode}: pytest did not start: {result.startup_error}")
            if result.workaround:
                print(f"   (the tests above ran with {result.workaround} added to get past it)")
        if not comparison.differences and not comparison.now_passing:
            continue
        print(f"\n-- {sdk} / {mode}: {len(comparison.differences)} differences (all of them: {details})")
        grouped: dict[str, list[outcomes.Difference]] = defaultdict(list)
        for diff in comparison.unexpected:
            grouped[f"{diff.now.status}: {diff.now.message}"].append(diff)
        for reason, diffs in sorted(grouped.items(), key=lambda item: -len(item[1])):
            print(f"   UNEXPECTED x{len(diffs)}  {reason}")
            for diff in diffs[:3]:
                print(f"      {diff.test_id}")
            if len(diffs) > 3:
                print(f"      ... and {len(diffs) - 3} more")
        by_entry: dict[int, list[outcomes.Difference]] = defaultdict(list)
        for diff in comparison.differences:
            if diff.expected:
                by_entry[diff.expected.line].append(diff)
        for line, diffs in sorted(by_entry.items()):
            entry = diffs[0].expected
            assert entry is not None
            print(f"   expected   x{len(diffs)}  {entry.pattern} (expected.txt:{line}): {entry.reason}")
        for diff in comparison.flaky:
            off_again, on_again = result.rechecked[diff.test_id]
            print(f"   flaky      {diff.test_id}: {diff.now.status} first, then off {off_again} / {mode} {on_again}")
        if comparison.now_passing:
            print(f"   (and {len(comparison.now_passing)} that failed with the middleware off passed here)")

    for entry in outcomes.unused_entries(expected, list(comparisons.values())):
        print(f"\nnote: expected.txt:{entry.line} matched no difference in this run: {entry.pattern}")

    print("\nresult: " + ("UNEXPECTED differences (exit 1)" if failing else "every difference is expected (exit 0)"))
    return 1 if failing else 0


def write_details(path: Path, comparison: outcomes.Comparison) -> None:
    lines = []
    for diff in comparison.differences:
        tag = f"expected (expected.txt:{diff.expected.line})" if diff.expected else "UNEXPECTED"
        tag = "flaky" if diff.flaky and not diff.expected else tag
        lines.append(f"{tag}\t{diff.test_id}\t{diff.now.status}\t{diff.now.message}")
    lines += [f"now passing\t{test_id}" for test_id in comparison.now_passing]
    path.write_text("\n".join(lines) + "\n")
