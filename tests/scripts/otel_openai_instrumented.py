"""Run by test_tracing.py in a subprocess: OpenTelemetry's own openai-v2 and httpx
instrumentations and ours, all at once.

The middleware is switched on by YIBU_ENABLED in the environment, as for any app. The
app makes one plain and one streamed chat completion with the openai SDK, then prints
every span that was made and the trace ids it saw, as JSON.
"""

import json

import openai
from opentelemetry import trace
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
OpenAIInstrumentor().instrument()
HTTPXClientInstrumentor().instrument()

client = openai.OpenAI(max_retries=0)
messages = [{"role": "user", "content": "hi"}]
reply = client.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
stream = client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)  # type: ignore[arg-type]
streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
spans = [
    {
        "name": span.name,
        "scope": span.instrumentation_scope.name if span.instrumentation_scope else "",
        "genai": (span.attributes or {}).get("gen_ai.operation.name"),
        "trace_id": format(span.context.trace_id, "032x") if span.context else "",
    }
    for span in exporter.get_finished_spans()
]
print(json.dumps({"reply": reply.choices[0].message.content, "streamed": streamed, "spans": spans}))
