"""Command line: ``python -m yibu_middleware.simulator --node healthy --node slow:latency=0.5 ...``.

Runs a gateway simulator until Ctrl-C / SIGTERM, printing one line per node on stdout and one line per
request on stderr. Keys are shown masked (``key=sk-proj-...a1b2(accepted)``), never whole.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from ..core.redact import mask
from .faults import FAULT_FIELDS, NodeFaults
from .server import _NAME_RE, GatewaySimulator, Record

# Field -> parser of its command-line value. status_body (a JSON object) and status_text are left out: commas would
# clash with the field separator, and tests set them from Python.
_PARSERS: dict[str, Callable[[str], Any]] = {
    "latency": float,
    "latency_jitter": float,
    "error_rate": float,
    "rate_limit_rate": float,
    "retry_after": float,
    "refuse": lambda v: _parse_bool(v),
    "cut_stream_after": int,
    "stream_error_after": int,
    "truncate_stream_after": int,
    "stall_stream_after": int,
    "stall_max": float,
    "status_override": int,
    "seed": int,
    "prompt_cache_size": int,
    "prefill_per_token": float,
}
assert set(_PARSERS) <= set(FAULT_FIELDS)


class SpecError(ValueError):
    """A --node value that cannot be parsed; the message is shown to the user."""


def _parse_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def parse_node_spec(spec: str) -> tuple[str, NodeFaults]:
    """Parse ``name`` or ``name:field=value,field=value,flag`` into a node name and its faults."""
    name, _, rest = spec.partition(":")
    name = name.strip()
    if not name:
        raise SpecError(f"--node {spec!r}: missing node name")
    if not _NAME_RE.match(name):
        raise SpecError(f"--node {spec!r}: invalid node name {name!r} (letters, digits, '_', '.', '-')")
    faults = NodeFaults()
    for item in filter(None, (part.strip() for part in rest.split(","))):
        field, sep, raw = item.partition("=")
        field = field.strip()
        if field not in _PARSERS:
            raise SpecError(f"--node {spec!r}: unknown fault field {field!r}; valid fields: {', '.join(_PARSERS)}")
        if not sep:
            if field != "refuse":
                raise SpecError(f"--node {spec!r}: field {field!r} needs a value ({field}=...)")
            raw = "true"
        try:
            setattr(faults, field, _PARSERS[field](raw.strip()))
        except ValueError as exc:
            raise SpecError(f"--node {spec!r}: bad value for {field!r}: {exc}") from None
    try:
        faults.validate()
    except ValueError as exc:
        raise SpecError(f"--node {spec!r}: {exc}") from None
    return name, faults


def _build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run a simulated yibu relay gateway with several nodes on loopback.",
        epilog=f"Fault fields: {', '.join(_PARSERS)} (refuse may be given bare). "
        "Example: --node healthy --node slow:latency=0.5 --node down:refuse --node flaky:error_rate=0.3",
    )
    parser.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NAME[:FIELD=VALUE,...]",
        help="add a node (repeatable); default: one node named 'default'",
    )
    parser.add_argument(
        "--key",
        action="append",
        default=None,
        metavar="KEY",
        help="accepted gateway key (repeatable); default: accept any key",
    )
    parser.add_argument(
        "--port-base",
        type=int,
        default=0,
        metavar="PORT",
        help="bind the nodes to PORT, PORT+1, ...; default: free ports",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not log requests")
    return parser


def _log_line(sim: GatewaySimulator, record: Record) -> str:
    # The key that arrived, masked (prefix and last four: "sk-proj-...a1b2"), so that one can see which key
    # came (the gateway's, or a provider's that slipped through) without the log ever holding a usable one.
    if record.key is None:
        key = "absent"
    elif sim.accepted_keys is None or record.key in sim.accepted_keys:
        key = f"{mask(record.key)}(accepted)"
    else:
        key = f"{mask(record.key)}(rejected)"
    return (
        f"{record.node} {record.method} {record.path} model={record.model or '-'} status={record.status}"
        f" fault={record.fault or '-'} key={key} {record.elapsed * 1000:.1f}ms"
    )


def main(argv: Sequence[str] | None = None, prog: str = "python -m yibu_middleware.simulator") -> int:
    """Run the simulator; ``prog`` is the name its help and errors give it (``yibu simulate`` from the CLI)."""
    parser = _build_parser(prog)
    args = parser.parse_args(argv)
    specs: list[str] = args.node or ["default"]
    nodes: list[tuple[str, NodeFaults]] = []
    try:
        nodes = [parse_node_spec(spec) for spec in specs]
    except SpecError as exc:
        parser.error(str(exc))
    if len({name for name, _ in nodes}) != len(nodes):
        parser.error("node names must be unique")
    if not 0 <= args.port_base <= 65535 - len(nodes):
        parser.error("--port-base out of range")

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)

    sim = GatewaySimulator(accepted_keys=args.key, host=args.host)
    if not args.quiet:
        sim.on_record = lambda record: print(_log_line(sim, record), file=sys.stderr, flush=True)
    try:
        try:
            for i, (name, faults) in enumerate(nodes):
                sim.add_node(name, faults, port=args.port_base + i if args.port_base else 0)
            sim.start()
        except (OSError, ValueError) as exc:
            print(f"error: cannot start the simulator: {exc}", file=sys.stderr)
            return 1
        width = max(len(node.name) for node in sim.nodes)
        for node in sim.nodes:
            print(f"{node.name:<{width}}  {node.base_url}  {node.faults.describe()}", flush=True)
        keys = "any key" if sim.accepted_keys is None else f"{len(sim.accepted_keys)} key(s)"
        print(f"yibu gateway simulator running ({keys} accepted); Ctrl-C to stop", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
