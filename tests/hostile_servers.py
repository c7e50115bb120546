"""Small hostile gateway nodes on loopback, scripted by the test that starts them.

A node whose answers a test writes as a function of the request: absurd rate-limit headers,
error bodies that are deeply nested or gzip bombs, streams that send nothing but keep-alives.
Real HTTP/1.1 over 127.0.0.1 (the standard library's threading server), so every client
library talks to it as it would to a gateway.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType


@dataclass
class Seen:
    """One request the node received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    """What the node answers: a body of bytes (sent with its length), or an iterable of chunks
    (sent chunked, each flushed as it comes; the iterable may be endless)."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | Iterable[bytes] = b""


Script = Callable[[Seen], Reply]


class HostileNode:
    """A loopback HTTP server answering every request with ``script(request)``."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.seen: list[Seen] = []
        self.sent = 0  # body bytes written, over all requests
        node = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                node.seen.append(seen)
                reply = node.script(seen)
                self.send_response(reply.status)
                for name, value in reply.headers:
                    self.send_header(name, value)
                try:
                    if isinstance(reply.body, bytes):
                        self.send_header("Content-Length", str(len(reply.body)))
                        self.end_headers()
                        self.wfile.write(reply.body)
                        node.sent += len(reply.body)
                        return
                    self.send_header("Transfer-Encoding", "chunked")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for chunk in reply.body:
                        if chunk:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                            self.wfile.flush()
                            node.sent += len(chunk)
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on us: what a hostile node wants to see
                self.close_connection = True

            do_GET = _serve
            do_POST = _serve

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="hostile-node", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> HostileNode:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- answers a test can reuse --------------------------------------------------------------------

CHAT_OK = (
    b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}'
)


def ok(headers: Iterable[tuple[str, str]] = ()) -> Reply:
    """A chat completion, with extra headers."""
    return Reply(200, [("Content-Type", "application/json"), *headers], CHAT_OK)


def rate_limited(headers: Iterable[tuple[str, str]]) -> Reply:
    body = b'{"error":{"message":"slow down","type":"rate_limit_error","code":"rate_limited"}}'
    return Reply(429, [("Content-Type", "application/json"), *headers], body)


def keep_alives_forever(size: int = 16 * 1024) -> Iterator[bytes]:
    """An event stream that never reaches content: comment lines and empty events, forever."""
    chunk = b": keep-alive\n\n" * (size // 15) + b"\n\n"
    while True:
        yield chunk
