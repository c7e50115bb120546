"""CPU to follow one large server-sent event read in 16 KiB chunks, as its size doubles.

The stream watch (``core/sse.py``) and the response reader (``core/genai.py``) see every
chunk of a stream. Linear parsing takes twice the time for twice the size (a ratio near 2);
parsing that rescans what it holds on every chunk takes four times (a ratio near 4): 8 s of
CPU for one 16 MB event before the fix, blocking the event loop. No threshold is asserted:
the ratios are printed, each size against the one before, run side by side.

Usage: python benchmarks/sse_parse.py [--sizes-mb 2 4 8 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

from yibu_middleware.core.genai import ResponseReader
from yibu_middleware.core.sse import StreamWatch

CHUNK = 16 * 1024


def chunks_of(size: int) -> list[bytes]:
    body = b'data: {"choices": [{"index": 0, "delta": {"content": "' + b"a" * size + b'"}}]}\n\n'
    return [body[at : at + CHUNK] for at in range(0, len(body), CHUNK)]


def cpu_seconds(size: int, repeat: int) -> tuple[float, float]:
    """Best of ``repeat`` runs: (stream watch, response reader) CPU seconds for one event of ``size`` bytes."""
    chunks = chunks_of(size)
    watch_best = reader_best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        watch = StreamWatch()
        for chunk in chunks:
            watch.feed(chunk)
        watch_best = min(watch_best, time.process_time() - started)
        started = time.process_time()
        reader = ResponseReader()
        reader.sse = True
        for chunk in chunks:
            reader.chunk(chunk)
        reader_best = min(reader_best, time.process_time() - started)
    return watch_best, reader_best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{'event':>8} {'watch s':>9} {'ratio':>6} {'reader s':>9} {'ratio':>6}")
    before: tuple[float, float] | None = None
    for mb in args.sizes_mb:
        watch, reader = cpu_seconds(mb * 1024 * 1024, args.repeat)
        ratios = ("", "") if before is None else (f"{watch / before[0]:.2f}", f"{reader / before[1]:.2f}")
        print(f"{mb:>6}MB {watch:>9.4f} {ratios[0]:>6} {reader:>9.4f} {ratios[1]:>6}")
        before = (watch, reader)


if __name__ == "__main__":
    main()
