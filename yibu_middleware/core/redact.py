"""The one place that knows what a secret looks like and how to show it safely.

A masked value keeps enough to tell two keys apart (its prefix and last four
characters, e.g. ``sk-...a1b2``) and never enough to use one.
"""

from __future__ import annotations

import functools
import re

# Key shapes, most specific first. A later issue extends this list (see the shared
# notes on secret formats); every masking path in the library goes through here.
_KEY_SHAPES = r"""
    sk-[A-Za-z0-9_\-]{16,}            # OpenAI, Anthropic, relay-gateway and other sk- keys
    | AIza[0-9A-Za-z_\-]{35}          # Google
    | hf_[A-Za-z]{34}                 # Hugging Face
    | eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+    # JWT
    """
_PREFIX = r"^(sk-ant-|sk-proj-|sk-|AIza|hf_|eyJ)"


# Compiled on first use: most processes never mask anything, and start-up is budgeted.
@functools.cache
def _compiled(pattern: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile(pattern, flags)


def mask(value: str) -> str:
    """Show a secret as ``<known prefix>...<last 4>``; short values as ``***``."""
    if len(value) < 12:
        return "***"
    match = _compiled(_PREFIX).match(value)
    prefix = match.group(1) if match else ""
    return f"{prefix}...{value[-4:]}"


def redact_text(text: str, known_secrets: tuple[str, ...] = ()) -> str:
    """Mask every known secret value and every key-shaped token in ``text``."""
    for secret in known_secrets:
        if secret and secret in text:
            text = text.replace(secret, mask(secret))
    return _compiled(_KEY_SHAPES, re.VERBOSE).sub(lambda found: mask(found.group(0)), text)
