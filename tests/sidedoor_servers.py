"""Small hostile servers on loopback for the side-door tests: a node that redirects, a node that
echoes the key it was sent, a server "elsewhere" that records whatever reaches it, and a
forward proxy that records what it is asked to carry.

Each runs in a thread of its own (``http.server`` and ``socketserver``), so sync and async
clients alike can be pointed at them; each records every request it sees, so a test can
assert that nothing (no key, no prompt) reached a host it must not reach.
"""

from __future__ import annotations

import json
import select
import socket
import socketserver
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple


class Seen(NamedTuple):
    """One request as a server received it."""

    method: str
    path: str
    headers: dict[str, str]  # names lowered
    body: bytes

    def text(self) -> str:
        """Everything in it, to search for a key."""
        return f"{self.method} {self.path}\n{self.headers!r}\n{self.body!r}"


# A chat completion and an Anthropic message, as a hostile server would answer to pass for a model.
CHAT_ANSWER = {
    "id": "chatcmpl-elsewhere",
    "object": "chat.completion",
    "created": 0,
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "from elsewhere"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}
MESSAGE_ANSWER = {
    "id": "msg_elsewhere",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [{"type": "text", "text": "from elsewhere"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 1, "output_tokens": 1},
}

Reply = tuple[int, list[tuple[str, str]], bytes]


class Scripted:
    """An HTTP server on 127.0.0.1 whose every answer ``reply(seen)`` makes; records each request."""

    def __init__(self, reply: Callable[[Seen], Reply], tls: ssl.SSLContext | None = None) -> None:
        """``tls``: serve https with this context (see ``self_signed``)."""
        self.seen: list[Seen] = []
        self._scheme = "https" if tls is not None else "http"
        self._reply = reply
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    body = _read_chunked(self.rfile)
                else:
                    body = self.rfile.read(length) if length else b""
                seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                owner.seen.append(seen)
                status, headers, content = owner._reply(seen)
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("content-length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def origin(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.origin + "/v1"

    def __enter__(self) -> Scripted:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _read_chunked(rfile: Any) -> bytes:
    body = b""
    while True:
        size = int(rfile.readline().split(b";")[0], 16)
        if size == 0:
            rfile.readline()
            return body
        body += rfile.read(size)
        rfile.readline()


def self_signed(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context for 127.0.0.1 with a certificate made here, and that certificate's file,
    which a client trusts to verify it (made with the openssl command: no test dependency)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context, cert


def answering() -> Callable[[Seen], Reply]:
    """A node's answer to every request: a chat completion (or a message), "from the gateway"."""

    def reply(seen: Seen) -> Reply:
        answer = json.loads(json.dumps(MESSAGE_ANSWER if "/messages" in seen.path else CHAT_ANSWER))
        if "choices" in answer:
            answer["choices"][0]["message"]["content"] = "from the gateway"
        else:
            answer["content"][0]["text"] = "from the gateway"
        return 200, [("content-type", "application/json")], json.dumps(answer).encode()

    return reply


def elsewhere() -> Scripted:
    """A server that must never be reached: it answers like a model, so that a client that
    followed a redirect to it would hand its answer to the app as the model's reply."""

    def reply(seen: Seen) -> Reply:
        answer = MESSAGE_ANSWER if "/messages" in seen.path else CHAT_ANSWER
        return 200, [("content-type", "application/json")], json.dumps(answer).encode()

    return Scripted(reply)


def redirecting(target: str, status: int = 307) -> Scripted:
    """A node that answers every request with ``status`` and a Location on ``target``'s host."""

    def reply(seen: Seen) -> Reply:
        return status, [("location", target + seen.path), ("content-type", "text/plain")], b""

    return Scripted(reply)


def echoing_401() -> Scripted:
    """A node that refuses the key it was sent and quotes it in full, as some gateways do."""

    def reply(seen: Seen) -> Reply:
        sent = seen.headers.get("authorization") or seen.headers.get("x-api-key") or seen.headers.get("api-key") or ""
        error = {
            "error": {
                "message": f"Incorrect API key provided: {sent}. Check the key {sent!r}.",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        }
        return (
            401,
            [("content-type", "application/json"), ("www-authenticate", f"Bearer {sent}")],
            json.dumps(error).encode(),
        )

    return Scripted(reply)


class RecordingProxy:
    """A forward proxy on 127.0.0.1 that records every byte a client sends it, then carries the
    request on: a CONNECT becomes a tunnel, an absolute-form request is relayed to its host."""

    def __init__(self) -> None:
        self.received: list[bytes] = []  # per connection, everything the client sent us
        self._lock = threading.Lock()
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                owner._relay(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def everything(self) -> bytes:
        with self._lock:
            return b"".join(self.received)

    def _relay(self, client: socket.socket) -> None:
        with self._lock:
            index = len(self.received)
            self.received.append(b"")
        head = b""
        while b"\r\n\r\n" not in head:
            piece = client.recv(65536)
            if not piece:
                return
            head += piece
            self._note(index, piece)
        first = head.split(b"\r\n", 1)[0].decode("latin-1")
        method, target, _ = first.split(" ", 2)
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            upstream = socket.create_connection((host.strip("[]"), int(port)))
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            rest = head.split(b"\r\n\r\n", 1)[1]
        else:
            # http://host:port/path -> /path, sent on to host:port as it came otherwise.
            without_scheme = target.split("://", 1)[1]
            hostport, _, path = without_scheme.partition("/")
            host, _, port = hostport.rpartition(":")
            upstream = socket.create_connection((host.strip("[]"), int(port or 80)))
            rest = head.replace(target.encode("latin-1"), b"/" + path.encode("latin-1"), 1)
        with upstream:
            if rest:
                upstream.sendall(rest)
            self._pipe(index, client, upstream)

    def _pipe(self, index: int, client: socket.socket, upstream: socket.socket) -> None:
        while True:
            ready, _, _ = select.select([client, upstream], [], [], 10)
            if not ready:
                return
            for sock in ready:
                data = sock.recv(65536)
                if not data:
                    return
                if sock is client:
                    self._note(index, data)
                    upstream.sendall(data)
                else:
                    client.sendall(data)

    def _note(self, index: int, data: bytes) -> None:
        with self._lock:
            self.received[index] += data

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def serving(*servers: Any) -> Iterator[None]:
    """Start each server, stop each at the end."""
    started: list[Any] = []
    try:
        for server in servers:
            started.append(server.__enter__())
        yield
    finally:
        for server in reversed(started):
            server.__exit__(None, None, None)
