"""Virtualenvs, SDK versions and the SDKs' published source releases, all from package registries.

Everything here goes through pip by package name: the versions come from resolving the
project's `test` extra, the tests from the SDK's sdist (`pip download --no-binary`), the test
dependencies from the `dev` dependency group in that sdist's pyproject.toml. No other host is
contacted, and none is named.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / ".venv" / "sdk-suites"


@dataclass(frozen=True)
class Sdk:
    """One SDK whose suite we run, and what of its source release we leave out, with why."""

    name: str
    # Extras that cannot install here (they need system libraries), so are left out.
    skip_extras: frozenset[str]
    # Test paths left out of the run. tests/api_resources talks to a mock server (Prism, run
    # from an OpenAPI spec fetched from the SDK vendor's site) on 127.0.0.1:4010: without it
    # every test there fails in every mode after its retries, which costs minutes and
    # compares nothing.
    ignore: tuple[str, ...] = ("tests/api_resources",)


SDKS = {
    # voice_helpers needs sounddevice, which needs the PortAudio system library.
    "openai": Sdk("openai", skip_extras=frozenset({"voice_helpers"})),
    "anthropic": Sdk("anthropic", skip_extras=frozenset()),
}

# Entries of an SDK's `dev` dependency group that are linters and type checkers, not test
# dependencies (pyright even fetches node at run time): left out.
NOT_TEST_TOOLS = frozenset({"ty", "pyright", "ruff", "mypy", "basedpyright"})

# What is printed (and kept in pins.txt in full) after each install.
SHOWN_PACKAGES = (
    "yibu-middleware",
    "openai",
    "anthropic",
    "httpx2",
    "httpx",
    "aiohttp",
    "requests",
    "pytest",
    "pytest-xdist",
    "pytest-asyncio",
    "respx",
)


class SetupError(Exception):
    """Something the run needs could not be made; the message says what and how to fix it."""


def run(cmd: list[str], *, quiet: bool = False, cwd: Path | None = None) -> str:
    """Run a set-up command; its output is shown only when it fails (or when not quiet)."""
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
        raise SetupError(f"command failed ({result.returncode}): {' '.join(cmd)}\n{tail}")
    if not quiet and result.stdout.strip():
        print(result.stdout.rstrip())
    return result.stdout


def _pip_lines(text: str) -> str:
    # The machine's pip configuration points at local indexes that may lack some names; pip
    # warns for each. That noise is not ours to show.
    return "\n".join(line for line in text.splitlines() if "is ignored: it is neither" not in line)


def fresh_venv(path: Path, python: str) -> Path:
    if path.exists():
        shutil.rmtree(path)
    run([python, "-m", "venv", str(path)], quiet=True)
    pip = path / "bin" / "pip"
    run([str(pip), "install", "--quiet", "--upgrade", "pip"], quiet=True)
    return pip


def tools_pip(python: str) -> Path:
    """pip in .venv/sdk-suites/tools, a virtualenv holding nothing else: for resolving and downloading."""
    pip = BASE / "tools" / "bin" / "pip"
    if not pip.exists():
        fresh_venv(BASE / "tools", python)
    return pip


def resolve_versions(pip: Path, names: list[str], overrides: dict[str, str]) -> dict[str, str]:
    """The versions of `names` that `pip install '.[test]'` would install today.

    pip resolves the whole extra without installing it (`--dry-run --report`). The answer is
    kept for this pyproject.toml for a day, as resolving takes a minute or two.
    """
    wanted = [name for name in names if name not in overrides]
    versions = {name: overrides[name] for name in names if name in overrides}
    if not wanted:
        return versions
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    cache = BASE / f"resolved-{digest}.json"
    if cache.exists() and _age_hours(cache) < 24:
        resolved = json.loads(cache.read_text())
        print(f"  (resolved earlier for this pyproject.toml: {cache.name}; delete it to resolve again)")
    else:
        print("  resolving the test extra with pip (--dry-run), about a minute...")
        report = run(
            [str(pip), "install", "--quiet", "--dry-run", "--ignore-installed", "--report", "-", f"{ROOT}[test]"],
            quiet=True,
        )
        resolved = {
            item["metadata"]["name"].lower(): item["metadata"]["version"] for item in json.loads(report)["install"]
        }
        cache.write_text(json.dumps(resolved, indent=1, sort_keys=True))
    for name in wanted:
        if name not in resolved:
            raise SetupError(f"the project's test extra does not install {name}; pass --{name}-version")
        versions[name] = resolved[name]
    return versions


def _age_hours(path: Path) -> float:
    import time

    return (time.time() - path.stat().st_mtime) / 3600


def source_release(pip: Path, sdk: Sdk, version: str, *, fresh: bool) -> Path:
    """The SDK's sdist, unpacked under .venv/sdk-suites/src/ (again with `fresh`), holding its tests/."""
    sdists = BASE / "sdists"
    sdists.mkdir(parents=True, exist_ok=True)
    archive = sdists / f"{sdk.name}-{version}.tar.gz"
    if not archive.exists():
        print(f"  pip download --no-binary {sdk.name} --no-deps {sdk.name}=={version}")
        # --no-binary for this one name only: with :all: pip would also build the SDK's build
        # backend from source just to read the sdist's metadata, which takes minutes.
        out = subprocess.run(
            [
                str(pip),
                "download",
                "--quiet",
                "--no-binary",
                sdk.name,
                "--no-deps",
                "--dest",
                str(sdists),
                f"{sdk.name}=={version}",
            ],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0 or not archive.exists():
            raise SetupError(
                f"could not download the source release {sdk.name}=={version}:\n{_pip_lines(out.stdout + out.stderr)}"
            )
    tree = BASE / "src" / f"{sdk.name}-{version}"
    # Unpacked once and kept: a run still going from it (another invocation) must not see it go.
    if fresh and tree.exists():
        shutil.rmtree(tree)
    if not tree.exists():
        tree.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(tree.parent, filter="data")
    if not (tree / "tests").is_dir():
        # Both SDKs have shipped tests/ in their sdists so far. The wheels never hold them, and
        # no other registry package does, so without them there is nothing to run.
        raise SetupError(
            f"the source release {archive.name} has no tests/ folder, so its unit tests cannot be run "
            f"from the package registry; pin an earlier version with --{sdk.name}-version"
        )
    return tree


def test_requirements(sdk: Sdk, version: str, tree: Path) -> list[str]:
    """The SDK (from its wheel, with its extras) and the `dev` group of its pyproject.toml."""
    project = tomllib.loads((tree / "pyproject.toml").read_text())
    extras = sorted(set(project["project"].get("optional-dependencies", {})) - sdk.skip_extras)
    requirements = [f"{sdk.name}[{','.join(extras)}]=={version}" if extras else f"{sdk.name}=={version}"]
    for entry in project.get("dependency-groups", {}).get("dev", []):
        if not isinstance(entry, str):  # {include-group = ...}: the dev group includes none today
            continue
        name = entry.split(";")[0].strip()
        for separator in "[<>=!~ ":
            name = name.split(separator)[0]
        name = name.lower()
        if name in NOT_TEST_TOOLS or name.endswith("-stubs") or name.startswith("types-"):
            continue
        requirements.append(entry)
    # Both list it today; the run depends on it for -n.
    if not any(req.lower().startswith("pytest-xdist") for req in requirements):
        requirements.append("pytest-xdist")
    return requirements


def sdk_venv(python: str, sdk: Sdk, requirements: list[str], *, fresh: bool) -> Path:
    """.venv/sdk-suites/<sdk>: the checkout (pip install .) plus the SDK and its test deps.

    The virtualenv is made again only when the requirements change (or with --fresh); the
    checkout is reinstalled every time, so the run always tests the code as it is.
    """
    path = BASE / sdk.name
    stamp = path / "sdk-suites-requirements.json"
    wanted = json.dumps(requirements, indent=1)
    if fresh or not stamp.exists() or stamp.read_text() != wanted:
        print(f"  new virtualenv {path.relative_to(ROOT)}: pip install . {' '.join(requirements)}")
        pip = fresh_venv(path, python)
        run([str(pip), "install", "--quiet", str(ROOT), *requirements], quiet=True)
        stamp.write_text(wanted)
    else:
        print(f"  reusing {path.relative_to(ROOT)}; reinstalling the checkout (pip install .)")
        pip = path / "bin" / "pip"
        run([str(pip), "install", "--quiet", "--force-reinstall", "--no-deps", str(ROOT)], quiet=True)
        run([str(pip), "install", "--quiet", str(ROOT)], quiet=True)
    freeze = run([str(pip), "list", "--format=freeze"], quiet=True)
    (path / "pins.txt").write_text(freeze)
    installed = dict(line.split("==", 1) for line in freeze.splitlines() if "==" in line)
    lowered = {name.lower(): version for name, version in installed.items()}
    shown = [f"{name} {lowered[name]}" for name in SHOWN_PACKAGES if name in lowered]
    print(f"  installed: {', '.join(shown)} (all pins: {(path / 'pins.txt').relative_to(ROOT)})")
    return path


def default_routed_hosts(venv: Path) -> list[str]:
    """The hosts the installed middleware routes by default, read from the package itself."""
    code = "import json; from yibu_middleware.settings import DEFAULT_ROUTES; print(json.dumps(sorted(DEFAULT_ROUTES)))"
    result = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True)
    if result.returncode == 0:
        hosts: list[str] = json.loads(result.stdout)
        return hosts
    print(f"  (could not read the default routes from the package, using the README's: {result.stderr.strip()})")
    return ["api.anthropic.com", "api.openai.com"]
