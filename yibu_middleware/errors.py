"""Exceptions the library raises on its own account (not the ones it passes through)."""

from __future__ import annotations


class YibuError(Exception):
    """Base class for every error raised by yibu-middleware itself."""


class ConfigError(YibuError):
    """A setting is missing, malformed or contradictory.

    The message names each bad setting, where its value came from (an environment
    variable, a file, or an argument to ``install()``) and the form that is expected.
    Secret values never appear in it.
    """
