"""Per-call overhead: an openai SDK call through the middleware against the same call made directly.

The gateway simulator runs in a separate process (so it does not share our GIL).
Blocks of sequential chat completions alternate between:
  direct:  OpenAI(base_url=<node>), middleware not installed;
  through: OpenAI() to api.openai.com, middleware installed and redirecting to the node;
so that machine noise lands on both alike. Target: through <= 1.10 x direct.

With --tracing, an OpenTelemetry SDK tracer provider (spans processed, not exported)
is active for both sides: the target is then at most +100 us per call. Without it, no
OpenTelemetry module is imported at all, so tracing costs nothing.

Usage: python benchmarks/overhead.py [--calls 2000] [--rounds 5] [--tracing]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import openai

import yibu_middleware

KEY = "sk-bench-gateway-key-000000000000"


def start_simulator() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "yibu_middleware.simulator", "--node", "bench", "-q"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    url = next(part for part in line.split() if part.startswith("http://"))
    return process, url


def timed_calls(client: openai.OpenAI, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000, help="calls per side in all")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tracing", action="store_true", help="with an OpenTelemetry SDK tracer provider")
    args = parser.parse_args()
    if args.tracing:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

        class Discard(SpanExporter):
            """Every span is processed and exported, to nowhere: an in-memory exporter would
            keep thousands of spans alive and slow every call down with garbage collection."""

            def export(self, spans: object) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(Discard()))
        trace.set_tracer_provider(provider)
    per_block = max(args.calls // args.rounds, 1)
    process, node_url = start_simulator()
    try:
        direct_client = openai.OpenAI(base_url=node_url, api_key=KEY, max_retries=0)
        through_client = openai.OpenAI(api_key="sk-proj-provider-key-not-real-000000", max_retries=0)
        settings = {"nodes": [node_url], "api_key": KEY}
        yibu_middleware.install(settings)
        timed_calls(through_client, 50)  # warm both paths and their connections
        yibu_middleware.uninstall()
        timed_calls(direct_client, 50)
        direct: list[float] = []
        through: list[float] = []
        for _ in range(args.rounds):
            direct += timed_calls(direct_client, per_block)
            yibu_middleware.install(settings)
            through += timed_calls(through_client, per_block)
            yibu_middleware.uninstall()
    finally:
        process.terminate()
        process.wait()
    target = "+100 us with tracing" if args.tracing else "x1.10"
    for name, pick in (("median", statistics.median), ("mean", statistics.fmean)):
        d, t = pick(direct) * 1e6, pick(through) * 1e6
        print(f"{name:<6} direct {d:8.0f} us  through {t:8.0f} us  {t - d:+6.0f} us  x{t / d:.3f}  (target {target})")


if __name__ == "__main__":
    main()
