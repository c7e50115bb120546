"""The ``yibu`` command: run an app with the middleware on, check a set-up, show a demo."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

from . import __version__
from .errors import ConfigError

BOOT_DIR = Path(__file__).parent / "_boot" / "sitecustomize_dir"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        # `yibu` alone: the help, on stdout (so `yibu | less` shows it), with argparse's exit status
        # for a usage error: a script running `yibu "$command"` with an empty $command must not pass.
        parser.print_help()
        return 2
    if args.command == "simulate":
        from .simulator.__main__ import main as simulate

        return simulate(rest, prog=f"{parser.prog} simulate")
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "run":
        return run_command(args.argv)
    if args.command == "doctor":
        from .doctor import doctor as run_doctor

        return run_doctor(timeout=args.timeout)
    if args.command == "status":
        from .fleet.status import status

        return status(watch=args.watch)
    if args.command == "spend":
        return spend_command(args.ledger)
    from .demo import demo as run_demo

    return run_demo(args.app)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yibu", description="Send unmodified OpenAI/Anthropic apps through the yibu relay gateway."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    about = "run a command with the middleware on: yibu run -- python app.py"
    run = commands.add_parser("run", help=about, description=about)
    run.add_argument("argv", nargs=argparse.REMAINDER, help="the command and its arguments, after --")
    about = "show settings, hooked client libraries and node health"
    doctor = commands.add_parser("doctor", help=about, description=about)
    doctor.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for each node (default 3)")
    about = "fleet mode: the live view shared through Redis (processes, nodes out, limits in use, holds)"
    status = commands.add_parser("status", help=about, description=about)
    status.add_argument(
        "--watch", type=float, nargs="?", const=2.0, default=None, metavar="SECONDS", help="refresh (every 2 s)"
    )
    about = "print spend by model for this hour, day and month, from the local ledger (spend.ledger)"
    spend = commands.add_parser("spend", help=about, description=about)
    spend.add_argument(
        "--ledger", type=Path, help="the ledger file (default: spend.ledger_path, or the cache folder's)"
    )
    about = "run an example app against a local three-node gateway simulator"
    demo = commands.add_parser("demo", help=about, description=about)
    demo.add_argument("--app", default="openai_async_app", help="example app from integrations/ (default %(default)s)")
    # The simulator parses its own arguments (see simulator/__main__.py), under the name "yibu simulate".
    commands.add_parser("simulate", help="run the gateway simulator (see: yibu simulate --help)", add_help=False)
    return parser


class Total:
    """One model's calls, tokens and cost in a period (``yibu spend``)."""

    def __init__(self) -> None:
        self.calls = self.tokens_in = self.tokens_out = 0
        self.cost: Decimal | None = None  # None while no call of the model had a price

    def add(self, tokens_in: int, tokens_out: int, cost: Decimal | None) -> None:
        self.calls += 1
        self.tokens_in += tokens_in
        self.tokens_out += tokens_out
        if cost is not None:
            self.cost = cost if self.cost is None else self.cost + cost


def spend_command(ledger: Path | None) -> int:
    """``yibu spend``: the ledger's spend by model, per current hour, day and month (UTC)."""
    from .core.spend import PERIODS, period_start, utc_now
    from .settings import load_settings
    from .spend import Ledger, ledger_path_of

    if ledger is None:
        try:
            ledger = ledger_path_of(load_settings())
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
    if not ledger.is_file():
        print(
            f"yibu spend: no ledger at {ledger}. Spend is written there only with spend.ledger = true"
            " (YIBU_SPEND__LEDGER=1) in the app's settings.",
            file=sys.stderr,
        )
        return 1
    now = utc_now()
    rows = list(Ledger(ledger).since(period_start("month", now)))
    print(f"Spend from {ledger} (UTC; USD priced from reported usage; tokens for models with no price)")
    for period in PERIODS:
        start = period_start(period, now)
        totals: dict[str, Total] = {}
        for at, model, tokens_in, _, tokens_out, cost in rows:
            if at >= start:
                totals.setdefault(model, Total()).add(tokens_in, tokens_out, cost)
        print(f"\n  this {period} (from {start.strftime('%Y-%m-%d %H:%M')})")
        if not totals:
            print("    no calls")
        for model, total in sorted(totals.items()):
            usd = "no price" if total.cost is None else f"{total.cost:.6f} USD"
            print(f"    {model:<32} {total.calls:>7} calls {total.tokens_in:>11} in {total.tokens_out:>10} out  {usd}")
    return 0


def run_command(argv: list[str]) -> int:
    """Exec ``argv`` with our sitecustomize first on PYTHONPATH and YIBU_ENABLED=1."""
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("yibu run: no command given. Usage: yibu run -- python app.py [args...]", file=sys.stderr)
        return 2
    from .settings import gateway_key_of, load_settings

    try:
        gateway_key_of(load_settings())  # bad settings are reported here, before the app starts
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    env = dict(os.environ)
    env["YIBU_ENABLED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BOOT_DIR), env.get("PYTHONPATH")]))
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        print(f"yibu run: cannot run {argv[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127
    return 0  # not reached: exec replaces this process


if __name__ == "__main__":
    raise SystemExit(main())
