"""Run by test_tracing.py in a subprocess: OpenTelemetry's own httpx instrumentation and ours together.

The middleware is switched on by YIBU_ENABLED in the environment, as for any app; this
script prints the status of one call and every span that was made, as JSON.
"""

import json
import os

import httpx
from opentelemetry import trace
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
HTTPXClientInstrumentor().instrument()

with httpx.Client() as client:
    response = client.post(
        "https://api.openai.com/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {os.environ['OPENAI_API_KEY']}"},
    )
spans = [
    [span.name, (span.attributes or {}).get("gen_ai.operation.name"), span.instrumentation_scope.name]
    for span in exporter.get_finished_spans()
]
print(json.dumps({"status": response.status_code, "spans": spans}))
