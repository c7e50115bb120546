"""Where fleet state lives in Redis: key names, and the fingerprint that scopes them. No I/O.

Every key of one app (one namespace, one gateway key) shares one hash tag, ``{<namespace>:<fp>}``,
so on a Redis Cluster they all live in one slot: each server-side script then touches keys of one
node only, which the cluster requires. The price is that one app's fleet state is on one cluster
node; an app's state is small (a few keys per limit scope and per node), so that is no constraint.

The gateway key never appears in a key name: ``fp`` is a keyed BLAKE2b hash of it (the namespace
as the hash key), so two deployments sharing the same key in different namespaces cannot even be
told to be sharing it. A process without a gateway key (``keys.pass_through``) uses ``fp = "shared"``.
"""

from __future__ import annotations

import hashlib

GLOBAL_SCOPE = "global"  # the limits.* scope; a model's scope is "m:<model>"


def fingerprint(namespace: str, gateway_key: bytes | None) -> str:
    if gateway_key is None:
        return "shared"
    return hashlib.blake2b(gateway_key, key=namespace.encode()[:64], digest_size=8).hexdigest()


def scope_name(model: str | None) -> str:
    return GLOBAL_SCOPE if model is None else f"m:{model}"


class Layout:
    """The key names of one app's fleet state."""

    __slots__ = ("prefix",)

    def __init__(self, namespace: str, fp: str) -> None:
        self.prefix = f"{{{namespace}:{fp}}}"  # the hash tag: every key in one cluster slot

    # --- limits: five keys per scope, in the order the scripts take them (see scripts.py) -----
    def scope_keys(self, scope: str) -> list[str]:
        base = f"{self.prefix}:limit:{scope}"
        return [f"{base}:state", f"{base}:leases", f"{base}:queue", f"{base}:polls", f"{base}:window"]

    # --- what the processes tell each other --------------------------------------------------
    @property
    def processes(self) -> str:
        return f"{self.prefix}:processes"  # zset: process id -> last heartbeat (server ms)

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"  # stream: ejections, reinstatements, the gateway's holds

    @property
    def ejections(self) -> str:
        return f"{self.prefix}:ejections"  # hash: node label -> "until_ms|times|origin" (for new processes)

    @property
    def holds(self) -> str:
        return f"{self.prefix}:holds"  # hash: "model|node" -> "until_ms" (retry-after holds in force)

    @property
    def latency(self) -> str:
        return f"{self.prefix}:latency"  # hash: "node|process" -> "estimate_s|server_ms"

    @property
    def load(self) -> str:
        return f"{self.prefix}:load"  # hash: "node|process" -> "in_flight|server_ms" (affinity's bound)

    @property
    def bench(self) -> str:
        return f"{self.prefix}:key-bench"  # hash: key id (a fingerprint) -> "ms|reason|at" (for new processes)

    def spend(self, period: str, start: str) -> str:
        return f"{self.prefix}:spend:{period}:{start}"  # hash: model -> USD spent in that period

    @property
    def budget(self) -> str:
        return f"{self.prefix}:retry-budget"  # hash: "second|req" / "second|ret" -> count

    @property
    def scopes(self) -> str:
        return f"{self.prefix}:scopes"  # hash: scope -> "max_concurrent|requests_per_second|tokens_per_minute"
