"""Cost of masking a log record, against the same logging without the middleware, and with
no provider key seen against 100,000 seen (masking by exact value must not grow with them).

Records go to a handler that formats them into memory (as a file or stream handler
would: "%(asctime)s %(levelname)s %(name)s %(message)s"). Three kinds of record, timed side by side:
  below level: logger.debug(...) with the logger at INFO (target: no added cost);
  typical:     the INFO line httpx writes for every request, which is most of what an app
               using the SDKs logs: 'HTTP Request: %s %s "%s"' with the args "POST",
               "https://api.openai.com/v1/chat/completions" and "200 OK" (70 characters,
               no secret, no `extra=` field, no exception); target: under 20 us added
               (issue 14), with 100,000 keys seen;
  with key:    a line carrying a request's headers with a key in them (the SDKs' debug line
               "Request options: %s" with a dict holding an Authorization header).
Each is timed in four set-ups, alternating so that noise lands on all: without the
middleware ("plain"), installed with no provider key swapped out yet ("0 keys"), after one
was ("1 key": the words of each line are now looked up), and after --keys distinct provider
keys were swapped out and all are remembered (``redaction.remembered_keys`` raised to hold
them). The ratios: N/plain against no middleware, N/0 against no key seen, N/1 against one;
N/1 at 1.00 means the number of keys seen costs nothing. Times are CPU time of this process
(``time.process_time``), so that other work on a shared machine, which takes the CPU away
between records, is not counted as ours.

With --instructions, the typical and with-key records are also counted in CPU instructions
under valgrind's callgrind, which do not move with the machine's load: each set-up runs
alone twice (1,000 and 4,000 records after the same set-up and warm-up), and the difference
over 3,000 is the instructions per record; added = with the middleware less plain.

Usage: python benchmarks/redaction.py [--records 20000] [--keys 100000] [--instructions]
"""

from __future__ import annotations

import argparse
import io
import logging
import shutil
import statistics
import sys
import time

import callgrind  # benchmarks/callgrind.py, beside this script

import yibu_middleware
from yibu_middleware import runtime

HEADERS = {"authorization": "Bearer sk-proj-" + "a" * 48, "content-type": "application/json"}


def per_record(log: logging.Logger, kind: str, count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        if kind == "below level":
            log.debug("HTTP Request: %s %s", "POST", "https://api.openai.com/v1/chat/completions")
        elif kind == "typical":
            log.info('HTTP Request: %s %s "%s"', "POST", "https://api.openai.com/v1/chat/completions", "200 OK")
        else:
            log.info("Request options: %s", {"method": "post", "headers": HEADERS, "url": "/chat/completions"})
    return (time.process_time() - started) / count


def install(keys: list[str]) -> None:
    yibu_middleware.install(
        {
            "nodes": ["http://127.0.0.1:9/v1"],
            "api_key": "sk-bench-gateway-0000000000000000",
            "redaction": {"remembered_keys": max(len(keys), 100)},
        }
    )
    current = runtime.current()
    assert current is not None
    for key in keys:
        current.remember_swapped((key,))  # as each call does, one key at a time
    assert len(current.known_values) == len(keys)


def bench_logger() -> logging.Logger:
    log = logging.getLogger("bench")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    log.addHandler(handler)
    return log


def provider_keys(count: int) -> list[str]:
    """Provider keys of a multi-tenant app, one per user, of no shape the rules know."""
    return [f"user{number:07d}key0{number * 7919 % 1000003:07d}x" for number in range(count)]


def child(setup: str, kind: str, records: int, keys: int) -> None:
    """One set-up alone, for callgrind: the set-up, a warm-up, then ``records`` records."""
    log = bench_logger()
    if setup != "plain":
        install(provider_keys(keys))
    per_record(log, kind, 200)
    per_record(log, kind, records)


def instructions(setup: str, kind: str, keys: int) -> float:
    """Instructions per record: (4,000 records - 1,000 records) / 3,000, so set-up cancels out."""
    counts = []
    for records in (1000, 4000):
        command = [sys.executable, __file__, "--child", setup, kind, "--records", str(records), "--keys", str(keys)]
        counts.append(callgrind.count(command)[0])
    return (counts[1] - counts[0]) / 3000


def count_instructions(keys: int) -> None:
    print(f"instructions per record (callgrind), {keys} keys seen:")
    print(f"{'':12} {'plain':>9} {'0 keys':>9} {f'{keys} keys':>12} {'added (0)':>10} {'added (N)':>10} {'N/plain':>8}")
    for kind in ("typical", "with key"):
        plain, none_seen, many_seen = (instructions(setup, kind, keys) for setup in ("plain", "0", "N"))
        print(
            f"{kind:<12} {plain:9.0f} {none_seen:9.0f} {many_seen:12.0f} {none_seen - plain:+10.0f}"
            f" {many_seen - plain:+10.0f} {many_seen / plain:8.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--instructions", action="store_true", help="also count instructions with callgrind")
    parser.add_argument("--child", nargs=2, metavar=("SETUP", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        setup, kind = args.child
        child(setup, kind, args.records, 0 if setup == "0" else args.keys)
        return
    if args.instructions and not shutil.which("valgrind"):
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    log = bench_logger()
    keys = provider_keys(args.keys)
    print(f"{args.records} records per kind and set-up; {args.keys} keys seen; per record:")
    columns = ("plain", "0 keys", "1 key", f"{args.keys} keys", "added (0)", "added (N)", "N/plain", "N/0", "N/1")
    widths = (9, 9, 9, 12, 10, 10, 8, 6, 6)
    print(" " * 12 + "".join(f" {title:>{width}}" for title, width in zip(columns, widths, strict=True)))
    for kind in ("below level", "typical", "with key"):
        plain, none_seen, one_seen, many_seen = [], [], [], []
        for _ in range(5):  # alternate, so that noise lands on all four
            yibu_middleware.uninstall()
            plain.append(per_record(log, kind, args.records // 5))
            install([])
            none_seen.append(per_record(log, kind, args.records // 5))
            install(keys[:1])
            one_seen.append(per_record(log, kind, args.records // 5))
            install(keys)
            many_seen.append(per_record(log, kind, args.records // 5))
        yibu_middleware.uninstall()
        p, z, o, n = (statistics.median(times) * 1e6 for times in (plain, none_seen, one_seen, many_seen))
        print(
            f"{kind:<12} {p:7.2f}us {z:7.2f}us {o:7.2f}us {n:10.2f}us {z - p:+8.2f}us {n - p:+8.2f}us"
            f" {n / p:8.2f} {n / z:6.2f} {n / o:6.2f}"
        )
    if args.instructions:
        count_instructions(args.keys)


if __name__ == "__main__":
    main()
