"""The logging patch as a hook: keys masked in every log record of the process (``redaction.py``).

It is a hook like the clients' so that it is applied, reported and turned off the same way
(``hooks.logging.enabled``); ``redaction.enabled = false`` turns it off too. The module it
waits for, ``logging``, is always imported already, so it is applied at install.
"""

from __future__ import annotations

from types import ModuleType

from .. import redaction
from ..runtime import current
from .base import Hook


class LoggingHook(Hook):
    name = "logging"
    module = "logging"
    distribution = ""

    def apply(self, module: ModuleType) -> None:
        """(Re)applied with the masking of the runtime in use: its keys and patterns."""
        runtime = current()
        if runtime is not None:
            redaction.install(runtime.redact)

    @property
    def patched(self) -> bool:
        return redaction.installed()

    def unpatch(self) -> None:
        redaction.uninstall()
