"""Counting a command's CPU instructions with valgrind's callgrind, which the machine's load does not move.

Shared by the benchmarks that report instructions besides time (startup, overhead, redaction).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence

# Simulated caches for cache-miss counts: this machine's 32 KiB first level, and a 1 MiB last
# level (half its L2), which the SDK's own work between two of our visits more than fills.
CACHES = ["--cache-sim=yes", "--I1=32768,8,64", "--D1=32768,8,64", "--LL=1048576,16,64"]


def count(
    command: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | None = None, cache_sim: bool = False
) -> tuple[int, int]:
    """(instructions, last-level cache misses: 0 without ``cache_sim``) of one run of ``command``,
    with a fixed hash seed so that runs compare."""
    result = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *(CACHES if cache_sim else []), *command],
        env={**(os.environ if env is None else env), "PYTHONHASHSEED": "0"},
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", result.stderr)
    if not found:
        raise SystemExit("could not read callgrind's instruction count")
    missed = re.search(r"LL misses:\s+([\d,]+)", result.stderr)
    if cache_sim and not missed:
        raise SystemExit("could not read callgrind's cache misses")
    return int(found.group(1)), int(missed.group(1).replace(",", "")) if missed else 0
