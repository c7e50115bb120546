"""Cost of masking a log record, against the same logging without the middleware.

Records go to a handler that formats them into memory (as a file or stream handler
would). Three kinds of record, timed side by side:
  below level: logger.debug(...) with the logger at INFO (target: no added cost);
  typical:     an INFO line with two args, as httpx or an SDK writes (target: well under 20 us added);
  with key:    the same carrying a request's headers with a key in them.

Usage: python benchmarks/redaction.py [--records 20000]
"""

from __future__ import annotations

import argparse
import io
import logging
import statistics
import time

import yibu_middleware

HEADERS = {"authorization": "Bearer sk-proj-" + "a" * 48, "content-type": "application/json"}


def per_record(log: logging.Logger, kind: str, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        if kind == "below level":
            log.debug("HTTP Request: %s %s", "POST", "https://api.openai.com/v1/chat/completions")
        elif kind == "typical":
            log.info('HTTP Request: %s %s "%s"', "POST", "https://api.openai.com/v1/chat/completions", "200 OK")
        else:
            log.info("Request options: %s", {"method": "post", "headers": HEADERS, "url": "/chat/completions"})
    return (time.perf_counter() - started) / count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20000)
    args = parser.parse_args()
    log = logging.getLogger("bench")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    log.addHandler(handler)
    settings = {"nodes": ["http://127.0.0.1:9/v1"], "api_key": "sk-bench-gateway-0000000000000000"}
    for kind in ("below level", "typical", "with key"):
        plain, masked = [], []
        for _ in range(5):  # alternate, so that noise lands on both
            yibu_middleware.uninstall()
            plain.append(per_record(log, kind, args.records // 5))
            yibu_middleware.install(settings)
            masked.append(per_record(log, kind, args.records // 5))
        yibu_middleware.uninstall()
        p, m = statistics.median(plain) * 1e6, statistics.median(masked) * 1e6
        print(f"{kind:<12} plain {p:6.2f} us  masked {m:6.2f} us  {m - p:+6.2f} us per record  x{m / p:.2f}")


if __name__ == "__main__":
    main()
