"""Cost of masking a log record, against the same logging without the middleware, and with
no provider key seen against 100,000 seen (masking by exact value must not grow with them).

Records go to a handler that formats them into memory (as a file or stream handler
would). Three kinds of record, timed side by side:
  below level: logger.debug(...) with the logger at INFO (target: no added cost);
  typical:     an INFO line with two args, as httpx or an SDK writes (target: well under 20 us added);
  with key:    the same carrying a request's headers with a key in them.
Each is timed in four set-ups, alternating so that noise lands on all: without the
middleware ("plain"), installed with no provider key swapped out yet ("0 keys"), after one
was ("1 key": the words of each line are now looked up), and after --keys distinct provider
keys were swapped out and all are remembered (``redaction.remembered_keys`` raised to hold
them). The ratios: N/0 against no key seen, N/1 against one; N/1 at 1.00 means the number of
keys seen costs nothing. Times are CPU time of this
process (``time.process_time``), so that other work on a shared machine, which takes the CPU
away between records, is not counted as ours.

Usage: python benchmarks/redaction.py [--records 20000] [--keys 100000]
"""

from __future__ import annotations

import argparse
import io
import logging
import statistics
import time

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--keys", type=int, default=100_000)
    args = parser.parse_args()
    log = logging.getLogger("bench")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    log.addHandler(handler)
    # Provider keys of a multi-tenant app, one per user, of no shape the rules know.
    keys = [f"user{number:07d}key0{number * 7919 % 1000003:07d}x" for number in range(args.keys)]
    print(f"{args.records} records per kind and set-up; {args.keys} keys seen; per record:")
    columns = ("plain", "0 keys", "1 key", f"{args.keys} keys", "added (0)", "added (N)", "N/0", "N/1")
    widths = (9, 9, 9, 12, 10, 10, 6, 6)
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
            f" {n / z:6.2f} {n / o:6.2f}"
        )


if __name__ == "__main__":
    main()
