"""Start-up cost of yibu-middleware, measured side by side in one run.

1. Disabled (YIBU_ENABLED unset): which of our modules get imported (must be none),
   and the cost of the .pth line itself, timed in-process with timeit.
2. Enabled: interpreter start + `import openai`, alternating enabled and disabled
   runs so that machine noise hits both alike; prints medians, the difference and
   the ratio. The target is at most +30 ms.

3. With --instructions: the same two starts counted in CPU instructions under
   valgrind's callgrind (about 30 s each). Instruction counts do not move with
   the machine's load, so this ratio is the steady one on a shared machine.

Usage: python benchmarks/startup.py [--runs 30] [--instructions]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

import callgrind  # benchmarks/callgrind.py, beside this script

import yibu_middleware

PTH = Path(yibu_middleware.__file__).resolve().parent.parent / "yibu_middleware.pth"


def timed_start(code: str, env: dict[str, str], cwd: str) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one interpreter run.

    CPU time is the steadier of the two on a shared machine: waiting for a core
    inflates wall time but not CPU time."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=cwd)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"benchmark run failed with exit code {process.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def instructions(code: str, env: dict[str, str], cwd: str) -> int:
    return callgrind.count([sys.executable, "-c", code], env, cwd)[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--instructions", action="store_true", help="also count instructions with callgrind")
    args = parser.parse_args()

    # As on a user's machine, .pyc files are written once and then reused (this
    # workplace sets PYTHONDONTWRITEBYTECODE, which would charge compiling to every start).
    base = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("YIBU_") and name != "PYTHONDONTWRITEBYTECODE"
    }
    # Local, never contacted: start-up reads settings but sends nothing.
    enabled = {
        **base,
        "YIBU_ENABLED": "1",
        "YIBU_NODES": "http://127.0.0.1:9/v1",
        "YIBU_API_KEY": "sk-bench-0000",
    }

    with tempfile.TemporaryDirectory() as cwd:
        ours = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; print(sorted(m for m in sys.modules if m.startswith('yibu')))",
            ],
            env=base,
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        print(f"disabled: our modules imported at start: {ours}")

        line = PTH.read_text().strip() if PTH.is_file() else ""
        if line:
            number = 200_000
            per_start = timeit.timeit(line, setup="import os; os.environ.pop('YIBU_ENABLED', None)", number=number)
            print(f"disabled: the .pth line costs {per_start / number * 1e9:.0f} ns per interpreter start")

        code = "import openai"
        for _ in range(3):  # warm the OS file cache and .pyc files for both
            timed_start(code, base, cwd)
            timed_start(code, enabled, cwd)
        if args.instructions:
            if not shutil.which("valgrind"):
                raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
            timed_start(code, base, cwd)  # .pyc files written before counting
            timed_start(code, enabled, cwd)
            off_count, on_count = instructions(code, base, cwd), instructions(code, enabled, cwd)
            print(
                f"start + import openai, instructions: disabled {off_count / 1e6:,.0f} M, enabled"
                f" {on_count / 1e6:,.0f} M: {on_count - off_count:+,.0f} ({on_count / off_count:.3f}x)"
            )
        off, on = [], []
        for _ in range(args.runs):
            off.append(timed_start(code, base, cwd))
            on.append(timed_start(code, enabled, cwd))
    print(f"start + import openai, {args.runs} alternating runs each (target: at most +30 ms):")
    for index, kind in enumerate(("wall", "cpu")):
        for name, pick in (("median", statistics.median), ("min", min)):
            off_ms = pick(run[index] for run in off) * 1000
            on_ms = pick(run[index] for run in on) * 1000
            print(
                f"  {kind:<4} {name:<6} disabled {off_ms:6.1f} ms  enabled {on_ms:6.1f} ms"
                f"  {on_ms - off_ms:+6.1f} ms  x{on_ms / off_ms:.3f}"
            )


if __name__ == "__main__":
    main()
