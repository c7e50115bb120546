"""Optional active health checks (``health_check.interval``; off by default).

Passive ejection takes a failing node out; this checker brings it back as soon as
it answers again, instead of waiting out its ejection time. One daemon thread per
runtime (process-wide, or a composition transport's), started by its first redirected
call, never at import; it ends when that runtime stops (replaced or uninstalled). It is
given the runtime it serves, and imports nothing of it: no import cycle.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger("yibu_middleware")


def new_checker(runtime: Runtime) -> threading.Thread:
    """The checker thread, not yet started: the runtime records it first, since the thread
    ends as soon as it finds it is not the runtime's checker."""
    # Imported here, in the caller's thread: an import still running in the checker thread
    # would leave a half-initialised `httpx` in sys.modules, which the openai SDK inspects.
    import httpx  # noqa: F401

    return threading.Thread(target=_run, args=(runtime,), name="yibu-health-check", daemon=True)


def _run(runtime: Runtime) -> None:
    import httpx  # already imported by start_checker; a node's host is never routed

    settings = runtime.settings.health_check
    headers = {"Authorization": f"Bearer {runtime.gateway_key.decode()}"} if runtime.gateway_key else {}
    with httpx.Client(timeout=settings.timeout, trust_env=False) as client:
        while runtime.checker_is(threading.current_thread()):
            time.sleep(settings.interval)
            for node in runtime.pool.ejected():
                try:
                    status = client.get(f"{node.base_url}/models", headers=headers).status_code
                except httpx.HTTPError:
                    continue
                if status < 500:
                    runtime.pool.reinstate(node)
                    log.info("gateway node %s answers health checks again: reinstated", node.label)
