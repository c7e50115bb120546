"""The hook for requests: ``HTTPAdapter.send`` wrapped in place.

``HTTPAdapter.send`` is where a Session (and ``requests.get``/``post``, which make one)
hands a prepared request to urllib3: below the session's auth, cookies, redirects and
hooks, so one call of the app is one call here, as with httpx's transport. A request
whose host is not routed leaves after its URL is split and looked up. Attempts call the
original method directly with the node's URL, which is not routed either, so a request
is never handled twice, whatever runs on top of requests. A redirect from a node is a
failed attempt: ``Session.send``, above the hook, would follow it with the app's own
headers.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..base import Hook


class RequestsHook(Hook):
    name = "requests"
    module = "requests"
    distribution = "requests"
    minimum = (2, 28)

    def patch(self, module: ModuleType) -> None:
        # Imported here, when requests is: the wrapper brings the adapter and the pipeline.
        from .adapter import Lib
        from .wrapper import send_wrapper

        adapters = importlib.import_module("requests.adapters")  # already imported by requests itself
        lib = Lib(module, importlib.import_module("urllib3"))
        self.wrap(adapters.HTTPAdapter, "send", send_wrapper(lib))
