"""Called at interpreter start by the ``.pth`` line or by ``yibu run``'s sitecustomize.

If the middleware cannot be installed, the process stops here with one clear message:
carrying on would send the app's traffic (and its provider keys) straight to the
provider, which is exactly what the user switched this on to prevent.
"""

from __future__ import annotations

import os
import sys


def start() -> None:
    if _is_our_command_line():
        return  # `yibu doctor` must run, and report, in the very environment that fails to start
    from ..errors import YibuError

    try:
        from ..api import install

        install()
    except YibuError as exc:
        _stop(str(exc))
    except Exception as exc:  # a bug of ours: still never a silent fallback
        _stop(f"yibu-middleware failed to start ({type(exc).__name__}: {exc})")


def _is_our_command_line() -> bool:
    """The ``yibu`` command is not an app: it checks settings itself (and ``yibu run`` execs the app)."""
    argv = getattr(sys, "orig_argv", [])
    script = os.path.basename(sys.argv[0]) if sys.argv else ""
    return script in ("yibu", "yibu.exe") or argv[1:3] == ["-m", "yibu_middleware.cli"]


def _stop(message: str) -> None:
    from ..core.redact import redact_text

    sys.stderr.write(f"{redact_text(message)}\n")
    sys.stderr.flush()
    # SystemExit raised while `site` runs becomes a "Fatal Python error" with a long
    # traceback that buries the message; nothing else has started yet, so leave at once.
    os._exit(2)
