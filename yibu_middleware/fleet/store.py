"""One process's link to the fleet state in Redis: clients, scripts, and whether Redis answers.

Every command goes through here, with ``state.timeout`` as its connect and read timeout, and
every failure is caught here: a call never fails because of Redis. The first failure marks the
fleet *down*: one warning is logged (with the URL masked) and the ``yibu.fleet.degraded`` metric
counts it; from then on nothing is sent to Redis on a call's path (each would pay the timeout),
and the background syncer (``sync.py``) asks Redis once a second until it answers, then marks
the fleet *up* and logs that too. Whoever cares (the limiter) is told through ``on_change``.

Sync callers use one redis-py client; each asyncio event loop gets its own asyncio client (their
connections belong to one loop); trio callers use the sync client in a worker thread. A Redis
Cluster is found by asking the first node (``INFO cluster``) and then served by redis-py's
cluster clients; every key of an app shares one hash tag (see ``layout.py``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..core.redact import mask_userinfo
from .layout import Layout, fingerprint
from .scripts import ADMIT, NOW, RELEASE, RENEW

if TYPE_CHECKING:
    from ..settings import StateSettings

log = logging.getLogger("yibu_middleware")

DEGRADED_METRIC = "yibu.fleet.degraded"  # counter: times this process lost Redis and went on alone

Answer = list[Any]


class Fleet:
    """The fleet state as one process sees it. Thread-safe; survives fork through ``after_fork``."""

    def __init__(self, state: StateSettings, gateway_key: bytes | None) -> None:
        assert state.redis_url is not None
        self._url = state.redis_url.get_secret_value()
        self.where = mask_userinfo(self._url)  # for messages: the URL without its password
        self.timeout = state.timeout
        self.lease_ms = int(state.lease_seconds * 1000)
        self.layout = Layout(state.namespace, fingerprint(state.namespace, gateway_key))
        self.process_id = _new_process_id()
        self.up = True  # until a command fails; the syncer brings it back
        self.live_processes = 1  # as last seen in the heartbeats: the share taken while down
        self.on_change: list[Callable[[bool], None]] = []
        self._lock = threading.Lock()
        self._client: Any = None
        self._cluster: bool | None = None
        self._scripts: dict[str, Any] = {}
        self._loop_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, dict[str, Any]]] = (
            weakref.WeakKeyDictionary()
        )

    # --- clients ---------------------------------------------------------------------------------

    def client(self) -> Any:
        """The sync client (made on first use; finds out whether Redis is a cluster)."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._new_sync_client()
                client = self._client
        return client

    def _new_sync_client(self) -> Any:
        import redis

        options = self._options()
        plain = redis.Redis.from_url(self._url, **options)
        if self._cluster is None:
            self._cluster = _is_cluster(plain)
        if not self._cluster:
            return plain
        from redis.cluster import RedisCluster

        plain.close()
        return RedisCluster.from_url(self._url, **options)

    def _options(self) -> dict[str, Any]:
        return {"socket_timeout": self.timeout, "socket_connect_timeout": self.timeout, "decode_responses": True}

    def _script(self, source: str) -> Any:
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.client().register_script(source)
        return script

    def _loop_client(self) -> tuple[Any, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        entry = self._loop_clients.get(loop)
        if entry is None:
            self.client()  # a cluster or not: asked once, by the sync client
            if self._cluster:
                from redis.asyncio.cluster import RedisCluster as AsyncCluster

                client: Any = AsyncCluster.from_url(self._url, **self._options())
            else:
                import redis.asyncio

                client = redis.asyncio.Redis.from_url(self._url, **self._options())
            entry = self._loop_clients[loop] = (client, {})
        return entry

    # --- running scripts and commands, never raising ---------------------------------------------

    def run(self, source: str, keys: Sequence[str], args: Sequence[object]) -> Answer | None:
        """Run a script; None when Redis failed (the fleet is then down) or is down."""
        if not self.up:
            return None
        try:
            answer: Answer = self._script(source)(keys=list(keys), args=list(args))
        except Exception as exc:  # any failure of Redis or of the link: go on alone
            self.went_down(exc)
            return None
        return answer

    async def run_async(self, source: str, keys: Sequence[str], args: Sequence[object]) -> Answer | None:
        if not self.up:
            return None
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # not asyncio (trio): the sync client in a worker thread
            import anyio.to_thread

            return await anyio.to_thread.run_sync(self.run, source, keys, args)
        try:
            client, scripts = self._loop_client()
            script = scripts.get(source)
            if script is None:
                script = scripts[source] = client.register_script(source)
            answer: Answer = await script(keys=list(keys), args=list(args))
        except Exception as exc:
            self.went_down(exc)
            return None
        return answer

    def admit(self, keys: Sequence[str], args: Sequence[object]) -> Answer | None:
        return self.run(ADMIT, keys, args)

    async def admit_async(self, keys: Sequence[str], args: Sequence[object]) -> Answer | None:
        return await self.run_async(ADMIT, keys, args)

    def release(self, keys: Sequence[str], args: Sequence[object]) -> bool:
        """False when Redis did not take it (the caller keeps it for later)."""
        # One script call each, not a pipeline: a cluster's pipeline does not load a script a
        # node lacks (after a restart), where a plain call falls back to sending it whole.
        return self.run(RELEASE, keys, args) is not None

    def renew(self, keys: Sequence[str], args: Sequence[object]) -> None:
        self.run(RENEW, keys, args)

    def server_ms(self) -> int:
        """The Redis server's clock (raises on failure: for the syncer and the status view)."""
        return int(self._script(NOW)(keys=[self.layout.processes], args=[]))

    # --- up and down -----------------------------------------------------------------------------

    def went_down(self, exc: BaseException) -> None:
        with self._lock:
            if not self.up:
                return
            self.up = False
        what = (
            f"did not answer within state.timeout ({self.timeout:g} s)"
            if isinstance(exc, OSError) or any(word in type(exc).__name__ for word in ("Timeout", "Connection"))
            else "failed"
        )
        log.warning(
            "yibu-middleware: Redis at %s %s (%s). Fleet limits and node knowledge are this process's own"
            " until it answers again: each fleet limit is shared out as a 1/%d part (the live processes last seen).",
            self.where,
            what,
            type(exc).__name__,
            self.live_processes,
        )
        log.debug("yibu-middleware: the Redis failure", exc_info=exc)
        _degraded_counter().add(1)
        self._tell(False)

    def came_back(self) -> None:
        with self._lock:
            if self.up:
                return
            self.up = True
        log.warning("yibu-middleware: Redis at %s answers again: limits and node knowledge are shared.", self.where)
        self._tell(True)

    def _tell(self, up: bool) -> None:
        for listener in list(self.on_change):
            try:
                listener(up)
            except Exception:  # pragma: no cover - a listener's bug must not stop the others
                log.exception("yibu-middleware: a fleet listener failed")

    def ping(self) -> bool:
        """Does Redis answer now? (The syncer asks while the fleet is down.)"""
        try:
            return bool(self.client().ping())
        except Exception:
            return False

    def after_fork(self) -> None:
        """A forked child: its own id, no inherited connection or lock."""
        self._lock = threading.Lock()
        self._client = None
        self._scripts = {}
        self._loop_clients = weakref.WeakKeyDictionary()
        self.process_id = _new_process_id()


def _new_process_id() -> str:
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{secrets.token_hex(3)}"


def _is_cluster(client: Any) -> bool:
    try:
        return bool(int(client.info("cluster").get("cluster_enabled", 0)))
    except Exception:  # no answer: a plain client; it fails on its own and the fleet goes down
        return False


_counter: Any = None


def _degraded_counter() -> Any:
    global _counter
    if _counter is None:
        from opentelemetry import metrics

        _counter = metrics.get_meter("yibu_middleware").create_counter(
            DEGRADED_METRIC, unit="{outage}", description="times this process lost Redis and went on alone"
        )
    return _counter
