"""Start-up cost of yibu-middleware, measured side by side in one run.

1. Disabled (YIBU_ENABLED unset): which of our modules get imported (must be none),
   and the cost of the .pth line itself, timed in-process with timeit.
2. Enabled: interpreter start + `import openai`, alternating enabled and disabled
   runs so that machine noise hits both alike; prints medians, the difference and
   the ratio. The target is at most +30 ms.

Usage: python benchmarks/startup.py [--runs 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

import yibu_middleware

PTH = Path(yibu_middleware.__file__).resolve().parent.parent / "yibu_middleware.pth"


def timed_start(code: str, env: dict[str, str], cwd: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()

    # As on a user's machine, .pyc files are written once and then reused (this
    # workplace sets PYTHONDONTWRITEBYTECODE, which would charge compiling to every start).
    base = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("YIBU_") and name != "PYTHONDONTWRITEBYTECODE"
    }
    # Local, never contacted: start-up reads settings but sends nothing.
    enabled = {**base, "YIBU_ENABLED": "1", "YIBU_NODES": "http://127.0.0.1:9/v1", "YIBU_API_KEY": "sk-bench-0000"}

    with tempfile.TemporaryDirectory() as cwd:
        ours = subprocess.run(
            [sys.executable, "-c", "import sys; print(sorted(m for m in sys.modules if m.startswith('yibu')))"],
            env=base, cwd=cwd, capture_output=True, text=True, check=True,
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
        off, on = [], []
        for _ in range(args.runs):
            off.append(timed_start(code, base, cwd))
            on.append(timed_start(code, enabled, cwd))
    off_ms, on_ms = statistics.median(off) * 1000, statistics.median(on) * 1000
    print(f"start + import openai, median of {args.runs} alternating runs:")
    print(f"  disabled {off_ms:7.1f} ms")
    print(f"  enabled  {on_ms:7.1f} ms   (+{on_ms - off_ms:.1f} ms, x{on_ms / off_ms:.3f}; target: at most +30 ms)")


if __name__ == "__main__":
    main()
