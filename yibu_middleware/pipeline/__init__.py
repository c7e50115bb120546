"""One call, whatever client library sent it: its state and verdicts (``call.py``), the one driver
of its attempts (``_async/driver.py``, and the sync one generated from it), and what an
adapter supplies (``adapter.py``). See docs/architecture.md for a request's journey."""
