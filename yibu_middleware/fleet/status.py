"""The fleet's live view, read from Redis only: what ``yibu status`` and ``yibu doctor`` print.

It sends nothing to the gateway and changes nothing in Redis: live processes (heartbeats), nodes
out (ejections in force), each limit's use against the limit, and the gateway's holds in force.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .layout import scope_name
from .scripts import WINDOW_MS
from .sync import LIVE_MS

if TYPE_CHECKING:
    from ..settings import Settings
    from .store import Fleet

RATE_SECONDS = 10  # the rate shown: calls admitted over the last this many seconds, per second


def fleet_report(settings: Settings, fleet: Fleet) -> tuple[bool, list[str]]:
    """(Redis answered, the lines to print)."""
    try:
        client = fleet.client()
        now_ms = fleet.server_ms()
    except Exception as exc:
        return False, [f"Redis at {fleet.where}: NO ANSWER within {fleet.timeout:g} s ({type(exc).__name__})"]
    layout = fleet.layout
    lines = [f"Redis at {fleet.where}: answers; namespace {settings.state.namespace!r}, key scope {layout.prefix}"]
    live = client.zrangebyscore(layout.processes, now_ms - LIVE_MS, "+inf")
    lines.append(
        f"  live processes: {len(live)}"
        + (f" ({', '.join(sorted(live)[:8])}{' ...' if len(live) > 8 else ''})" if live else "")
    )
    out = []
    for label, value in sorted(client.hgetall(layout.ejections).items()):
        ms, times, at = ([*value.split("|"), "0", "0", "0"])[:3]
        left = (int(ms) - (now_ms - int(at))) / 1000.0
        if left > 0:
            out.append(f"{label} ({left:.0f} s more, ejection {times})")
    lines.append("  nodes out: " + (", ".join(out) if out else "none"))
    limits = settings.limits
    scopes: list[tuple[str | None, Any]] = [(None, limits), *sorted(limits.per_model.items())]
    shown = False
    for model, spec in scopes:
        if not spec.limited:
            continue
        shown = True
        lines.extend(_scope_lines(client, fleet, model, spec, now_ms))
    if not shown:
        lines.append("  limits: none set (limits.*): nothing is counted in Redis")
    holds = _holds(client, fleet, now_ms)
    lines.append("  gateway holds (429 retry-after) in force: " + (", ".join(holds) if holds else "none"))
    return True, lines


def _scope_lines(client: Any, fleet: Fleet, model: str | None, spec: Any, now_ms: int) -> list[str]:
    state_key, leases_key, queue_key, _polls, _window = fleet.layout.scope_keys(scope_name(model))
    setting = "limits" if model is None else f'limits.per_model["{model}"]'
    state = client.hgetall(state_key)
    lines = [f"  {setting}:"]
    if spec.requests_per_second is not None:
        second = now_ms // 1000
        recent = sum(
            int(state.get(f"n{s % 32}", 0))
            for s in range(second - RATE_SECONDS, second)
            if state.get(f"s{s % 32}") == str(s)
        )
        lines.append(
            f"    requests_per_second: {recent / RATE_SECONDS:.1f} over the last {RATE_SECONDS} s,"
            f" limit {spec.requests_per_second:g}"
        )
    if spec.max_concurrent is not None:
        in_flight = client.zcount(leases_key, now_ms, "+inf")
        lines.append(f"    max_concurrent: {in_flight} in flight, limit {spec.max_concurrent}")
    if spec.tokens_per_minute is not None:
        lines.append(
            f"    tokens_per_minute: {int(state.get('sum', 0))} in the last {WINDOW_MS // 1000} s"
            " (calls in flight counted at their estimate),"
            f" limit {spec.tokens_per_minute}"
        )
    waiting = client.zcard(queue_key)
    if waiting:
        lines.append(f"    waiting in the fleet queue: {waiting}")
    return lines


def _holds(client: Any, fleet: Fleet, now_ms: int) -> list[str]:
    """The 429 holds in force, from the events of the last minutes."""
    cutoff = now_ms - 600_000
    holds: dict[tuple[str, str], float] = {}
    for entry_id, fields in client.xrevrange(fleet.layout.events, min=f"{cutoff}-0", count=1000):
        if fields.get("kind") != "hold":
            continue
        left = (int(fields.get("ms", "0")) - (now_ms - int(entry_id.split("-")[0]))) / 1000.0
        key = (fields.get("model") or "(any model)", fields.get("node") or "(every node)")
        if left > 0 and key not in holds:
            holds[key] = left
    return [f"{model} on {node} ({left:.1f} s more)" for (model, node), left in sorted(holds.items())]


def status(watch: float | None = None) -> int:
    """``yibu status``: the fleet's live view; ``watch``: refresh every so many seconds until Ctrl-C."""
    from ..errors import ConfigError
    from ..settings import gateway_key_of, load_settings
    from .store import Fleet

    try:
        settings = load_settings()
        key = gateway_key_of(settings)
    except ConfigError as exc:
        print(exc)
        return 2
    if not settings.state.active:
        print("Fleet mode is off: state.redis_url (YIBU_STATE__REDIS_URL) is not set, so every limit and all node")
        print("knowledge stay in each process. Set it to a Redis URL shared by the app's processes to turn it on.")
        return 2
    try:
        import redis  # noqa: F401
    except ImportError:
        print("Fleet mode needs the redis package: pip install redis (the package's redis extra)")
        return 2
    fleet = Fleet(settings.state, key)
    fleet.timeout = max(fleet.timeout, 1.0)  # a person is waiting, not a call: give Redis a second
    while True:
        answered, lines = fleet_report(settings, fleet)
        if watch:
            print("\033[2J\033[H", end="")
            print(time.strftime("%H:%M:%S"), "(Ctrl-C to stop)")
        print("\n".join(lines), flush=True)
        if not watch:
            return 0 if answered else 1
        try:
            time.sleep(watch)
        except KeyboardInterrupt:
            return 0
