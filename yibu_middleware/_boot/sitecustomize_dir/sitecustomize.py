"""Put first on PYTHONPATH by ``yibu run``: runs the app's own sitecustomize, then starts us.

This folder holds nothing else, so putting it on the path hides no module of the
app's. The folder stays on PYTHONPATH so that subprocesses the app starts are
routed too; installing twice in one process is a no-op.
"""

import importlib.util
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))


def _run_users_sitecustomize() -> None:
    # Look for another sitecustomize on the path without this folder, and run it as
    # the real `sitecustomize` module would have been run.
    path = [entry for entry in sys.path if os.path.abspath(entry or ".") != _here]
    for entry in path:
        candidate = os.path.join(entry or ".", "sitecustomize.py")
        if os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("sitecustomize", candidate)
            if spec is not None and spec.loader is not None:
                module = importlib.util.module_from_spec(spec)
                sys.modules["sitecustomize"] = module
                spec.loader.exec_module(module)
            return


_run_users_sitecustomize()
os.environ.setdefault("YIBU_ENABLED", "1")

from yibu_middleware._boot.startup import start  # noqa: E402

start()
