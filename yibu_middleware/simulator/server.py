"""A simulated OpenAI-compatible relay gateway: several nodes on loopback, each with injectable faults.

One asyncio event loop in a daemon thread serves every node. asyncio rather than one thread per
connection because benchmarks open ~1,000 concurrent connections and latency faults would otherwise park
one OS thread per waiting request. HTTP/1.1 is parsed by hand (a small, strict subset: Content-Length and
chunked request bodies, keep-alive, chunked streaming responses) to stay standard-library only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import fnmatch
import http
import itertools
import json
import logging
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from . import responses
from .faults import FAULT_FIELDS, NodeFaults
from .prompt_cache import PromptCache

__all__ = ["GatewaySimulator", "NodeFaults", "Record", "SimNode"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MAX_BODY = 64 * 1024 * 1024
_MAX_HEADERS = 200
_BACKLOG = 1024
_CALL_TIMEOUT = 30.0


@dataclass(frozen=True)
class Record:
    """One request the simulator received, and how it answered it."""

    node: str
    method: str
    path: str
    """Path as received, without the query string, e.g. ``/v1/chat/completions``."""
    query: str
    model: str | None
    """``model`` of the JSON body, if any."""
    key: str | None
    """The credential as received: Bearer token, else ``x-api-key``, else ``api-key``."""
    key_header: str | None
    """Lower-cased name of the header that carried ``key``."""
    headers: dict[str, str]
    """Request headers, names lower-cased; repeated headers joined with ``, ``."""
    body: Any
    """Parsed JSON body, or None (empty or not JSON)."""
    stream: bool
    status: int
    """Status the simulator answered."""
    fault: str | None
    """Fault applied: status_override, error_rate, rate_limit, cut_stream, stall_stream, stream_error,
    truncate_stream, latency, key_refused (a key over its quota or outside its models), model_refused (a model
    not served, or a request over its context window), or None."""
    started: float
    """``time.monotonic()`` when the request line arrived."""
    elapsed: float
    """Seconds from arrival to the end of the response (to the cut, for a cut stream; to the start of the
    stall, for a stalled one)."""
    request_id: str = ""
    """The ``x-request-id`` header value the simulator sent back."""
    connection: int = 0
    """Serial number of the TCP connection it came on (equal numbers = a reused keep-alive connection)."""
    cached_tokens: int = 0
    """Prompt tokens the node read from its prompt cache (reported in the answer's usage)."""


class _BadRequest(Exception):
    """The bytes on the connection are not HTTP we can answer; reply 400 and close."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes
    started: float
    keep_alive: bool
    connection: int = 0


@dataclass
class _Ctx:
    """A parsed request on its way to an answer."""

    node: SimNode
    req: _Request
    reader: asyncio.StreamReader
    """The connection's reader: a stalled stream waits on it for the client to hang up."""
    path: str
    query: str
    anthropic: bool
    key: str | None
    key_header: str | None
    body: Any
    model: str | None
    stream: bool
    request_id: str = field(default_factory=lambda: "req_" + uuid.uuid4().hex)
    cached: int = 0
    """Prompt tokens read from the node's prompt cache (chat, messages and Responses requests)."""
    prompt: Any = None
    """The prompt's messages (for a Responses request, the stored conversation it continues first)."""


class SimNode:
    """One simulated gateway node: its own port, faults and random generator."""

    def __init__(self, sim: GatewaySimulator, name: str, faults: NodeFaults, port: int) -> None:
        self.name = name
        self.faults = faults
        self._sim = sim
        self._port = port
        self._rng = random.Random(faults.seed)
        self.prompt_cache = PromptCache(faults.prompt_cache_size)
        self._server: asyncio.Server | None = None  # set while listening
        self._reserve: socket.socket | None = None  # bound, not listening: set while refusing
        self._conns: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._lock = asyncio.Lock()

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError(f"node {self.name!r} has no port yet: start the simulator first")
        return self._port

    @property
    def origin(self) -> str:
        """``http://host:port`` without ``/v1``: the base URL the anthropic SDK wants."""
        return f"http://{self._sim.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``: the base URL the openai SDK wants."""
        return self.origin + "/v1"

    @property
    def refusing(self) -> bool:
        """True while connections to this node are refused."""
        return self._reserve is not None

    def reseed(self, seed: int | None = None) -> None:
        """Restart the node's random draws (from ``faults.seed`` unless given)."""
        self._rng.seed(self.faults.seed if seed is None else seed)

    def __repr__(self) -> str:
        port = self._port or "?"
        return f"SimNode({self.name!r}, port={port}, faults={self.faults.describe()})"


class GatewaySimulator:
    """An in-process relay gateway with several nodes on loopback, for tests, demos and benchmarks.

    ``accepted_keys=None`` accepts any credential (also none); otherwise requests without one of the
    keys get 401. ``on_record`` is called (in the simulator's thread) with each finished Record.
    """

    def __init__(
        self,
        accepted_keys: Iterable[str] | None = None,
        *,
        host: str = "127.0.0.1",
        on_record: Callable[[Record], None] | None = None,
    ) -> None:
        if isinstance(accepted_keys, str):  # a lone key, not an iterable of one-letter keys
            accepted_keys = (accepted_keys,)
        self.accepted_keys: frozenset[str] | None = None if accepted_keys is None else frozenset(accepted_keys)
        self.host = host
        self.on_record = on_record
        self._nodes: dict[str, SimNode] = {}
        self._records: list[tuple[int, Record]] = []
        self._records_lock = threading.Lock()
        self._seq = itertools.count()
        self._conn_seq = itertools.count(1)
        # Responses the nodes answered, by id: the conversation a later ``previous_response_id``
        # continues. Shared by every node, as a provider's store is behind a gateway.
        self._stored: dict[str, list[Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._state = "new"  # new -> started -> stopped
        # Per-key rules, gateway-wide (a key's account is the gateway's, not a node's): calls a key
        # may still make, and the models it may use (shell patterns). A key not listed: no limit.
        self._key_quotas: dict[str, int] = {}
        self._key_models: dict[str, tuple[str, ...]] = {}
        self._keys_lock = threading.Lock()
        # Per-model rules: models the gateway does not serve, and each model's context window (words).
        self._missing_models: frozenset[str] = frozenset()
        self._model_windows: dict[str, int] = {}
        self._model_statuses: dict[str, int] = {}

    # ---- public API ------------------------------------------------------------------------------------

    def add_node(self, name: str, faults: NodeFaults | None = None, *, port: int = 0) -> SimNode:
        """Add a node; bound at ``start()`` (or at once if already started). Port 0 = a free port."""
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid node name {name!r}: use letters, digits, '_', '.', '-'")
        if name in self._nodes:
            raise ValueError(f"node {name!r} already exists")
        if self._state == "stopped":
            raise RuntimeError("simulator is stopped")
        faults = NodeFaults() if faults is None else faults
        faults.validate()
        node = SimNode(self, name, faults, port)
        self._nodes[name] = node
        if self._state == "started":
            try:
                self._call(self._sync(node))
            except BaseException:
                del self._nodes[name]
                raise
        return node

    def node(self, name: str) -> SimNode:
        try:
            return self._nodes[name]
        except KeyError:
            raise KeyError(f"no node {name!r}; nodes: {', '.join(self._nodes) or '(none)'}") from None

    @property
    def nodes(self) -> list[SimNode]:
        return list(self._nodes.values())

    def set_faults(self, name: str, **changes: Any) -> NodeFaults:
        """Change fields of a node's faults at run time; switching ``refuse`` takes effect before return."""
        node = self.node(name)
        unknown = sorted(set(changes) - set(FAULT_FIELDS))
        if unknown:
            raise TypeError(f"unknown fault field(s) {', '.join(unknown)}; valid: {', '.join(FAULT_FIELDS)}")
        candidate = dataclasses.replace(node.faults, **changes)
        candidate.validate()
        for key, value in changes.items():
            setattr(node.faults, key, value)  # mutate in place: callers may hold the NodeFaults object
        if "seed" in changes:
            node.reseed()
        if self._state == "started" and "refuse" in changes:
            self._call(self._sync(node))
        return node.faults

    def set_key_quota(self, key: str, calls: int | None) -> None:
        """``key`` may make ``calls`` more model calls (any node); then every call it makes gets a
        403 ``insufficient_user_quota`` in new-api's format. None: no limit again."""
        with self._keys_lock:
            if calls is None:
                self._key_quotas.pop(key, None)
            else:
                self._key_quotas[key] = calls

    def key_quota(self, key: str) -> int | None:
        """Calls ``key`` may still make (None: no limit)."""
        return self._key_quotas.get(key)

    def set_key_models(self, key: str, patterns: Iterable[str] | None) -> None:
        """``key`` may use only the models matching ``patterns`` (shell patterns); any other gets a
        403 in new-api's format (no code: "this token has no access to model ..."). None: every model."""
        with self._keys_lock:
            if patterns is None:
                self._key_models.pop(key, None)
            else:
                self._key_models[key] = tuple(patterns)

    def set_missing_models(self, models: Iterable[str]) -> None:
        """The gateway serves none of ``models``: a call to one gets a 404 ``model_not_found``."""
        self._missing_models = frozenset(models)

    def set_model_window(self, model: str, tokens: int | None) -> None:
        """``model``'s context window, in tokens (counted as the words of the messages): a longer
        request gets a 400 ``context_length_exceeded`` (Anthropic: "prompt is too long"). None: none."""
        if tokens is None:
            self._model_windows.pop(model, None)
        else:
            self._model_windows[model] = tokens

    def set_model_status(self, model: str, status: int | None) -> None:
        """Every node answers calls to ``model`` with ``status`` (a 429 or 503: the model is
        overloaded everywhere), in the provider's error format. None: answered again."""
        if status is None:
            self._model_statuses.pop(model, None)
        else:
            self._model_statuses[model] = status

    def _model_refusal(self, ctx: _Ctx) -> tuple[int, dict[str, Any]] | None:
        model = ctx.model
        if model is None:
            return None
        status = self._model_statuses.get(model)
        if status is not None:
            return status, responses.error_body(status, ctx.anthropic)
        if model in self._missing_models:
            message = f"The model `{model}` does not exist or you do not have access to it."
            if ctx.anthropic:
                return 404, {"type": "error", "error": {"type": "not_found_error", "message": f"model: {model}"}}
            return 404, {
                "error": {"message": message, "type": "invalid_request_error", "param": None, "code": "model_not_found"}
            }
        window = self._model_windows.get(model)
        if window is not None and isinstance(ctx.body, dict):
            used = responses.count_words(ctx.body.get("messages"), ctx.body.get("system"))
            if used > window:
                if ctx.anthropic:
                    message = f"prompt is too long: {used} tokens > {window} maximum"
                    return 400, {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
                message = (
                    f"This model's maximum context length is {window} tokens. However, your messages resulted in"
                    f" {used} tokens. Please reduce the length of the messages."
                )
                return 400, {
                    "error": {
                        "message": message,
                        "type": "invalid_request_error",
                        "param": "messages",
                        "code": "context_length_exceeded",
                    }
                }
        return None

    def _key_refusal(self, key: str | None, model: str | None) -> tuple[int, dict[str, Any]] | None:
        """The gateway's answer to a key over its quota or outside its models; None: go on (one
        call of its quota is taken)."""
        if key is None:
            return None
        with self._keys_lock:
            allowed = self._key_models.get(key)
            if allowed is not None and model is not None and not any(fnmatch.fnmatchcase(model, p) for p in allowed):
                return 403, {
                    "error": {
                        "message": f"this token has no access to model {model}",
                        "type": "new_api_error",
                        "param": None,
                        "code": None,
                    }
                }
            left = self._key_quotas.get(key)
            if left is None:
                return None
            if left <= 0:
                return 403, {
                    "error": {
                        "message": "user quota is not enough",
                        "type": "new_api_error",
                        "param": None,
                        "code": "insufficient_user_quota",
                    }
                }
            self._key_quotas[key] = left - 1
            return None

    @property
    def records(self) -> list[Record]:
        """Snapshot of the records, in arrival order."""
        with self._records_lock:
            items = list(self._records)
        items.sort(key=lambda item: item[0])
        return [record for _, record in items]

    def records_for(self, node: str) -> list[Record]:
        return [r for r in self.records if r.node == node]

    def clear(self) -> None:
        with self._records_lock:
            self._records.clear()

    def start(self) -> GatewaySimulator:
        if self._state != "new":
            raise RuntimeError(f"simulator already {self._state}")
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="yibu-gateway-simulator", daemon=True)
        self._thread.start()
        ready.wait()
        self._state = "started"
        try:
            for node in self._nodes.values():
                self._call(self._sync(node))
            self._call(self._start_watcher())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close every socket and join the thread; idempotent."""
        if self._state != "started":
            self._state = "stopped"
            return
        loop, thread = self._loop, self._thread
        assert loop is not None and thread is not None
        if threading.current_thread() is thread:
            raise RuntimeError("GatewaySimulator.stop() cannot be called from the simulator's own thread")
        self._state = "stopped"
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(_CALL_TIMEOUT)
        except Exception:  # still stop the loop; a failed close must not leave the thread running
            log.exception("gateway simulator: error while shutting down")
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_CALL_TIMEOUT)
        if not thread.is_alive():
            loop.close()

    def __enter__(self) -> GatewaySimulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"GatewaySimulator({self._state}, nodes={self.nodes!r})"

    # ---- loop plumbing ---------------------------------------------------------------------------------

    def _call(self, coro: Awaitable[_T]) -> _T | None:
        """Run a coroutine on the simulator loop and wait for it (or just schedule it from inside the loop,
        e.g. an on_record callback calling set_faults, where waiting would deadlock)."""
        loop = self._loop
        assert loop is not None

        async def wrap() -> _T:
            return await coro

        if threading.current_thread() is self._thread:
            loop.create_task(wrap())
            return None
        future: concurrent.futures.Future[_T] = asyncio.run_coroutine_threadsafe(wrap(), loop)
        return future.result(_CALL_TIMEOUT)

    async def _start_watcher(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch_refuse())

    async def _watch_refuse(self) -> None:
        """Notice ``faults.refuse`` assigned directly (not via set_faults) within ~50 ms."""
        while True:
            await asyncio.sleep(0.05)
            for node in list(self._nodes.values()):
                if node.faults.refuse != node.refusing:
                    try:
                        await self._sync(node)
                    except OSError:
                        log.exception("gateway simulator: cannot switch refuse on node %s", node.name)

    def _bind(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # Needed to re-bind the port of a just-closed listener that still has connections/TIME_WAITs.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    async def _sync(self, node: SimNode) -> None:
        """Make the node's sockets match ``faults.refuse``: listening, or bound-but-not-listening.

        A connect to a bound socket that does not listen is refused at once (RST) on Linux, and keeping it
        bound holds the port, so the node comes back on the same port when refuse is switched off.
        """
        async with node._lock:
            if self._state != "started":
                return
            if node.faults.refuse:
                if node._reserve is not None:
                    return
                server, node._server = node._server, None
                if server is not None:
                    server.close()  # closes the listening socket now
                node._reserve = self._bind(node._port)
                node._port = node._reserve.getsockname()[1]
                await self._drop_connections(node)
            else:
                if node._server is not None:
                    return
                sock = node._reserve if node._reserve is not None else self._bind(node._port)
                node._reserve = None
                node._port = sock.getsockname()[1]
                try:
                    node._server = await asyncio.start_server(
                        lambda r, w: self._serve_connection(node, r, w),
                        sock=sock,
                        backlog=_BACKLOG,
                        limit=256 * 1024,
                    )
                except BaseException:
                    sock.close()
                    raise

    async def _drop_connections(self, node: SimNode) -> None:
        me = asyncio.current_task()
        tasks = [t for t in node._conns if t is not me]
        for task in tasks:
            node._conns[task].close()
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def _shutdown(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        for node in self._nodes.values():
            async with node._lock:
                if node._server is not None:
                    node._server.close()
                    node._server = None
                if node._reserve is not None:
                    node._reserve.close()
                    node._reserve = None
                await self._drop_connections(node)

    # ---- HTTP ------------------------------------------------------------------------------------------

    async def _serve_connection(
        self, node: SimNode, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        node._conns[task] = writer
        connection = next(self._conn_seq)
        try:
            while not node.faults.refuse:
                try:
                    req = await _read_request(reader, writer)
                except _BadRequest as exc:
                    await _send_raw_error(writer, exc.status, str(exc))
                    return
                if req is None or node.faults.refuse:
                    return
                req.connection = connection
                if not await self._handle(node, req, reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the client went away; nothing to answer
        except asyncio.CancelledError:
            # Cancelled by refuse/stop. Not re-raised: asyncio.streams (3.11) logs a traceback for a
            # client_connected_cb task that ends cancelled, and nothing awaits this task anyway.
            pass
        except Exception:
            log.exception("gateway simulator: error on node %s", node.name)
        finally:
            node._conns.pop(task, None)
            writer.close()
            if node.faults.refuse and not node.refusing and self._state == "started":
                asyncio.get_running_loop().create_task(self._sync(node))

    async def _handle(
        self, node: SimNode, req: _Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; returns whether the connection stays open."""
        target = req.target
        if target.startswith(("http://", "https://")):  # absolute-form, as sent to proxies
            parts = urlsplit(target)
            path, query = parts.path or "/", parts.query
        else:
            path, _, query = target.partition("?")
        body: Any = None
        body_error = False
        if req.body:
            try:
                body = json.loads(req.body)
            except (UnicodeDecodeError, ValueError):
                body_error = True
        fields = body if isinstance(body, dict) else {}
        model = fields.get("model") if isinstance(fields.get("model"), str) else None
        key, key_header = _credential(req.headers)
        ctx = _Ctx(
            node=node,
            req=req,
            reader=reader,
            path=path,
            query=query,
            anthropic=path == "/v1/messages" or path.startswith("/v1/messages/"),
            key=key,
            key_header=key_header,
            body=body,
            model=model,
            stream=fields.get("stream") is True,
        )
        faults = node.faults
        draw = node._rng.random()  # one draw per request keeps a seeded run reproducible
        fault: str | None = None
        delay = faults.latency
        if faults.latency_jitter > 0:  # a second draw only when asked, so seeded runs without jitter are unchanged
            delay += node._rng.uniform(0.0, faults.latency_jitter)
        if delay > 0:
            fault = "latency"
        if model is not None and path in _CACHED_PATHS and req.method == "POST":
            # The node's prompt cache: a cached prefix is reported in usage and prefilled at no cost.
            node.prompt_cache.size = faults.prompt_cache_size
            if path == "/v1/responses":
                ctx.prompt = responses.responses_prompt(fields, self._stored)
                system = fields.get("instructions")
            else:
                ctx.prompt = fields.get("messages")
                system = fields.get("system") if ctx.anthropic else None
            read = node.prompt_cache.read(model, ctx.prompt, system)
            ctx.cached = read.cached_tokens
            delay += faults.prefill_per_token * (read.prompt_tokens - read.cached_tokens)
        if delay > 0:
            await asyncio.sleep(delay)

        if faults.status_override is not None and faults.status_text is not None:
            text = faults.status_text.encode()
            return await self._send_body(ctx, writer, faults.status_override, text, "text/plain", "status_override")
        if faults.status_override is not None:
            status = faults.status_override
            payload = (
                faults.status_body if faults.status_body is not None else responses.error_body(status, ctx.anthropic)
            )
            return await self._send_json(ctx, writer, status, payload, "status_override")
        if self.accepted_keys is not None and key not in self.accepted_keys:
            message = "Incorrect API key provided." if key else "Missing API key."
            return await self._send_error(ctx, writer, 401, fault, message)
        if draw < faults.error_rate:
            return await self._send_error(ctx, writer, 503, "error_rate")
        if draw < faults.error_rate + faults.rate_limit_rate:
            retry = faults.retry_after
            headers = [("retry-after", f"{retry:g}"), ("retry-after-ms", str(round(retry * 1000)))]
            return await self._send_error(ctx, writer, 429, "rate_limit", headers=headers)

        route = _ROUTES.get(path)
        if route is None and path.startswith("/v1/models/") and path.count("/") == 3:
            route = ("GET", GatewaySimulator._models_get)
        if route is None:
            return await self._send_error(ctx, writer, 404, fault, f"Invalid URL ({req.method} {path})")
        method, handler = route
        if req.method != method:
            message = f"Method {req.method} not allowed on {path}"
            return await self._send_error(ctx, writer, 405, fault, message)
        if method == "POST" and (self._missing_models or self._model_windows or self._model_statuses):
            refused = self._model_refusal(ctx)
            if refused is not None:
                return await self._send_json(ctx, writer, refused[0], refused[1], "model_refused")
        if method == "POST" and (self._key_quotas or self._key_models):
            refusal = self._key_refusal(key, model)
            if refusal is not None:
                return await self._send_json(ctx, writer, refusal[0], refusal[1], "key_refused")
        if method == "POST":
            if body_error or not isinstance(body, dict):
                return await self._send_error(ctx, writer, 400, fault, "We could not parse the JSON body.")
            if model is None and path != "/v1/messages/count_tokens":
                return await self._send_error(ctx, writer, 400, fault, "You must provide a model parameter.")
        return await handler(self, ctx, writer, fault)

    # ---- endpoints -------------------------------------------------------------------------------------

    async def _chat(self, ctx: _Ctx, writer: asyncio.StreamWriter, fault: str | None) -> bool:
        assert ctx.model is not None
        if ctx.stream:
            events = responses.chat_stream_events(ctx.node.name, ctx.model, ctx.body, ctx.cached)
            return await self._send_stream(ctx, writer, events, fault)
        payload = responses.chat_completion(ctx.node.name, ctx.model, ctx.body, ctx.cached)
        return await self._send_json(ctx, writer, 200, payload, fault)

    async def _embeddings(self, ctx: _Ctx, writer: asyncio.StreamWriter, fault: str | None) -> bool:
        assert ctx.model is not None
        payload = responses.embeddings(ctx.model, ctx.body)
        if payload is None:
            return await self._send_error(ctx, writer, 400, fault, "'input' must be a string or a list.")
        return await self._send_json(ctx, writer, 200, payload, fault)

    async def _models(self, ctx: _Ctx, writer: asyncio.StreamWriter, fault: str | None) -> bool:
        return await self._send_json(ctx, writer, 200, responses.models_list(), fault)

    async def _models_get(self, ctx: _Ctx, writer: asyncio.StreamWriter, fault: str | None) -> bool:
        model_id = ctx.path.rsplit("/", 1)[1]
        owner = dict(responses.MODELS).get(model_id)
        if owner is None:
            return await self._send_error(ctx, writer, 404, fault, f"The model '{model_id}' does not exist")
        return await self._send_json(ctx, writer, 200, responses.model_entry(model_id, owner), fault)

    async def _messages(self, ctx: _Ctx, writer: asyncio.StreamWriter, fault: str | None) -> bool:
        assert ctx.model is not None
        if ctx.stream:
            events = responses.anthropic_stream_events(ctx.node.name, ctx.model, ctx.body, ctx.cached)
            return await self._send_stream(ctx, writer, events, fault)
        payload = responses.anthropic_message(ctx.node.name, ctx.model, ctx.body, ctx.cached)
        return await self._send_json(ctx, writer, 200, payload, fault)

    async def _responses(self, ctx: _Ctx, writer: asyncio.StreamWriter, fault: str | None) -> bool:
        assert ctx.model is not None
        if ctx.stream:
            return await self._send_error(ctx, writer, 400, fault, "The simulator answers Responses calls unstreamed.")
        previous = ctx.body.get("previous_response_id")
        if previous is not None and previous not in self._stored:
            return await self._send_error(ctx, writer, 400, fault, f"Previous response with id '{previous}' not found.")
        prompt = ctx.prompt if isinstance(ctx.prompt, list) else []
        payload = responses.response_object(ctx.node.name, ctx.model, ctx.body, prompt, ctx.cached)
        self._stored[payload["id"]] = [*prompt, {"role": "assistant", "content": responses.reply_text(ctx.node.name)}]
        while len(self._stored) > 10_000:
            del self._stored[next(iter(self._stored))]
        return await self._send_json(ctx, writer, 200, payload, fault)

    async def _count_tokens(self, ctx: _Ctx, writer: asyncio.StreamWriter, fault: str | None) -> bool:
        count = responses.count_words(ctx.body.get("messages"), ctx.body.get("system"))
        return await self._send_json(ctx, writer, 200, {"input_tokens": count}, fault)

    # ---- writing ---------------------------------------------------------------------------------------

    def _record(self, ctx: _Ctx, status: int, fault: str | None) -> None:
        """Store the record. Called just before the last bytes go out, so a client that has its answer
        always finds the record already there."""
        req = ctx.req
        record = Record(
            node=ctx.node.name,
            method=req.method,
            path=ctx.path,
            query=ctx.query,
            model=ctx.model,
            key=ctx.key,
            key_header=ctx.key_header,
            headers=req.headers,
            body=ctx.body,
            stream=ctx.stream,
            status=status,
            fault=fault,
            started=req.started,
            elapsed=time.monotonic() - req.started,
            request_id=ctx.request_id,
            connection=req.connection,
            cached_tokens=ctx.cached,
        )
        with self._records_lock:
            self._records.append((next(self._seq), record))
        if self.on_record is not None:
            try:
                self.on_record(record)
            except Exception:
                log.exception("gateway simulator: on_record callback failed")

    def _head(self, ctx: _Ctx, status: int, extra: Sequence[tuple[str, str]]) -> bytes:
        lines = [
            f"HTTP/1.1 {status} {_reason(status)}",
            *(f"{k}: {v}" for k, v in extra),
            f"x-request-id: {ctx.request_id}",
        ]
        if ctx.anthropic:
            lines.append(f"request-id: {ctx.request_id}")
        lines.append(f"x-yibu-sim-node: {ctx.node.name}")
        lines.append("connection: keep-alive" if ctx.req.keep_alive else "connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _send_json(
        self,
        ctx: _Ctx,
        writer: asyncio.StreamWriter,
        status: int,
        payload: Any,
        fault: str | None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> bool:
        return await self._send_body(ctx, writer, status, responses.dumps(payload), "application/json", fault, headers)

    async def _send_body(
        self,
        ctx: _Ctx,
        writer: asyncio.StreamWriter,
        status: int,
        data: bytes,
        content_type: str,
        fault: str | None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> bool:
        head = self._head(ctx, status, [("content-type", content_type), ("content-length", str(len(data))), *headers])
        self._record(ctx, status, fault)
        writer.write(head + data)
        await writer.drain()
        return ctx.req.keep_alive

    async def _send_error(
        self,
        ctx: _Ctx,
        writer: asyncio.StreamWriter,
        status: int,
        fault: str | None,
        message: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> bool:
        payload = responses.error_body(status, ctx.anthropic, message)
        return await self._send_json(ctx, writer, status, payload, fault, headers)

    async def _send_stream(
        self, ctx: _Ctx, writer: asyncio.StreamWriter, events: list[bytes], fault: str | None
    ) -> bool:
        """Send SSE events one write (and flush) each, applying the node's stream fault if one is set.

        ``cut_stream_after`` closes the connection without the terminating chunk (an incomplete body, not a
        clean end). ``stream_error_after``/``truncate_stream_after`` end the body cleanly after an in-band
        error event / without the final event. ``stall_stream_after`` goes silent and waits for the client.
        """
        faults = ctx.node.faults
        mode, count = faults.stream_fault() or ("", 0)
        if mode == "cut_stream_after":
            events = events[:count]
        elif mode:  # never past the final event, so the fault always shows
            events = events[: min(count, len(events) - 1)]
        if mode == "stream_error_after":
            events.append(responses.stream_error_event(ctx.anthropic))
        fault = _STREAM_FAULT_NAMES.get(mode, fault)

        chunked = ctx.req.version == "HTTP/1.1"
        if not chunked:  # HTTP/1.0 has no chunked encoding: the end of the body is the end of the connection
            ctx.req.keep_alive = False
        headers = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache")]
        if chunked:
            headers.append(("transfer-encoding", "chunked"))
        writes = [self._head(ctx, 200, headers)]
        writes += [b"%x\r\n%b\r\n" % (len(event), event) if chunked else event for event in events]
        ends_cleanly = mode not in ("cut_stream_after", "stall_stream_after")
        if ends_cleanly and chunked:
            writes[-1] += b"0\r\n\r\n"
        for i, data in enumerate(writes):
            if i == len(writes) - 1:
                self._record(ctx, 200, fault)
            writer.write(data)
            await writer.drain()
        if mode == "cut_stream_after":
            writer.close()  # FIN after the data already sent; the chunked body is left unfinished
            return False
        if mode == "stall_stream_after":
            await _wait_for_hangup(ctx.reader, faults.stall_max)
            return False  # the caller closes the connection
        return ctx.req.keep_alive


_STREAM_FAULT_NAMES = {
    "cut_stream_after": "cut_stream",
    "stall_stream_after": "stall_stream",
    "stream_error_after": "stream_error",
    "truncate_stream_after": "truncate_stream",
}
_Handler = Callable[[GatewaySimulator, _Ctx, asyncio.StreamWriter, str | None], Awaitable[bool]]
_ROUTES: dict[str, tuple[str, _Handler]] = {
    "/v1/chat/completions": ("POST", GatewaySimulator._chat),
    "/v1/embeddings": ("POST", GatewaySimulator._embeddings),
    "/v1/models": ("GET", GatewaySimulator._models),
    "/v1/messages": ("POST", GatewaySimulator._messages),
    "/v1/messages/count_tokens": ("POST", GatewaySimulator._count_tokens),
    "/v1/responses": ("POST", GatewaySimulator._responses),
}
_CACHED_PATHS = frozenset({"/v1/chat/completions", "/v1/messages", "/v1/responses"})


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _credential(headers: dict[str, str]) -> tuple[str | None, str | None]:
    auth = headers.get("authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip(), "authorization"
    for name in ("x-api-key", "api-key"):
        value = headers.get(name)
        if value:
            return value, name
    return None, None


async def _read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> _Request | None:
    """Read one request; None on a clean EOF between requests."""
    try:
        line = await reader.readline()
        while line in (b"\r\n", b"\n"):  # RFC 9112 lets servers skip empty lines before a request
            line = await reader.readline()
        if not line:
            return None
        started = time.monotonic()
        parts = line.decode("latin-1").rstrip("\r\n").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest("malformed request line")
        method, target, version = parts
        headers: dict[str, str] = {}
        while True:
            raw = await reader.readline()
            if raw in (b"\r\n", b"\n"):
                break
            if not raw:
                raise asyncio.IncompleteReadError(b"", None)
            if len(headers) >= _MAX_HEADERS:
                raise _BadRequest("too many headers", 431)
            name, sep, value = raw.decode("latin-1").partition(":")
            name = name.strip().lower()
            if not sep or not name:
                raise _BadRequest("malformed header line")
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
    except ValueError as exc:  # a line longer than the reader limit
        raise _BadRequest("request line or header too long", 431) from exc

    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise _BadRequest("invalid content-length") from None
        if length < 0 or length > _MAX_BODY:
            raise _BadRequest("invalid content-length", 413 if length > 0 else 400)
        body = await reader.readexactly(length)
    else:
        body = b""
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
    return _Request(method, target, version, headers, body, started, keep_alive)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        size_line = await reader.readline()
        if not size_line:
            raise asyncio.IncompleteReadError(b"", None)
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise _BadRequest("malformed chunk size") from None
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # trailers: ignored
            return b"".join(chunks)
        total += size
        if total > _MAX_BODY:
            raise _BadRequest("request body too large", 413)
        chunks.append(await reader.readexactly(size))
        if (await reader.readexactly(2)) != b"\r\n":
            raise _BadRequest("malformed chunk")


async def _wait_for_hangup(reader: asyncio.StreamReader, timeout: float) -> None:
    """Wait (reading and discarding) until the client closes the connection, at most ``timeout`` seconds.

    Only this connection's task waits, so other requests and nodes are served meanwhile; ``stop()`` and
    ``refuse`` cancel the task like any other connection's."""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass


async def _send_raw_error(writer: asyncio.StreamWriter, status: int, message: str) -> None:
    data = responses.dumps(responses.error_body(status, False, message))
    writer.write(
        f"HTTP/1.1 {status} {_reason(status)}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\nconnection: close\r\n\r\n".encode("latin-1")
        + data
    )
    with contextlib.suppress(ConnectionError):
        await writer.drain()
