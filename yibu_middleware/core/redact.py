"""The one place that knows what a secret looks like and how to show it safely.

A masked value keeps enough to tell two keys apart (its known prefix and last four
characters, e.g. ``sk-proj-...a1b2``) and never enough to use one.

What is found, in any text (shared notes, "Secrets to redact"):
- values after a secret header name (``authorization: ...``, ``"x-api-key": "..."``, ...);
- ``user:password@`` in URLs, and secret query parameters (``key``, ``api_key``, ``token``...);
- keys by shape, most specific first: OpenAI project/service/admin and legacy keys,
  Anthropic keys, relay-gateway ``sk-`` keys with no provider marker, other ``sk-`` keys,
  Google, Hugging Face, Groq, xAI, Perplexity, NVIDIA, Replicate, JWTs, ``Bearer``/``Basic``/
  ``Token`` values, Azure ``AccountKey=``;
- exact values handed in (the gateway key, and provider keys swapped out at run time),
  whatever their shape.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

SECRET_HEADERS = (
    "authorization",
    "proxy-authorization",
    "api-key",
    "x-api-key",
    "x-goog-api-key",
    "cookie",
    "set-cookie",
    "x-portkey-api-key",
    "helicone-auth",
    "cf-aig-authorization",
    "x-amz-security-token",
)
SECRET_QUERY = ("key", "api_key", "api-key", "access_token", "token")

# Key shapes, most specific first; each keeps its prefix visible when masked.
_SHAPES = r"""
    (?P<key>
        sk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{20,}
      | sk-ant-(?:api03|admin01)-[A-Za-z0-9_\-]{20,}
      | sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}
      | sk-[A-Za-z0-9_\-]{20,}
      | AIza[0-9A-Za-z_\-]{35}
      | hf_[A-Za-z]{34}
      | (?:gsk_|xai-|pplx-|nvapi-|r8_)[A-Za-z0-9_\-]{16,}
      | eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}
    )
  | (?P<scheme>\b(?:Bearer|Basic|Token)\s+)(?P<credential>[A-Za-z0-9._~+/=\-]{8,})
  | (?P<azure>AccountKey=)(?P<azure_key>[A-Za-z0-9+/=]{20,})
  | (?P<userinfo>://[^/\s:@'"]+:)(?P<password>[^/\s@'"]+)@
  | (?P<query>[?&](?:"""
_PREFIXES = (
    "sk-proj-",
    "sk-svcacct-",
    "sk-admin-",
    "sk-ant-api03-",
    "sk-ant-admin01-",
    "sk-",
    "AIza",
    "hf_",
    "gsk_",
    "xai-",
    "pplx-",
    "nvapi-",
    "r8_",
    "eyJ",
)


def mask(value: str) -> str:
    """Show a secret as ``<known prefix>...<last 4>``; short values as ``***``."""
    if len(value) < 12:
        return "***"
    prefix = next((known for known in _PREFIXES if value.startswith(known)), "")
    return f"{prefix}...{value[-4:]}"


@functools.cache
def _pattern(extra_headers: tuple[str, ...] = (), extra_patterns: tuple[str, ...] = ()) -> re.Pattern[str]:
    """Compiled on first use (start-up is budgeted) and once per set of extra rules."""
    names = "|".join(re.escape(name) for name in (*SECRET_HEADERS, *extra_headers))
    query = "|".join(re.escape(name) for name in SECRET_QUERY)
    # A header value as it appears in logs: `name: value`, `'name': 'value'`, `"name": "value"`,
    # `(b'name', b'value')`; the value runs to the end of the quoted string or the line.
    header = (
        rf"(?P<header>(?i:\b(?:{names}))(?:\s*[:=]\s*b?['\"]?|['\"]\s*[:=,]\s*b?['\"]))"
        r"(?P<header_value>[^'\"\r\n,)}]+)"
    )
    extra = "".join(f"|(?P<extra{index}>{pattern})" for index, pattern in enumerate(extra_patterns))
    source = rf"{header}|{_SHAPES}{query})=)(?P<query_value>[^&\s'\"#]+){extra}"
    return re.compile(source, re.VERBOSE)


def _replace(found: re.Match[str]) -> str:
    groups = found.groupdict()
    if groups["header"] is not None:
        value = groups["header_value"]
        # Keep an auth scheme readable: "Bearer sk-...a1b2".
        scheme, _, credential = value.partition(" ")
        if credential and scheme.lower() in ("bearer", "basic", "token"):
            return f"{groups['header']}{scheme} {mask(credential.strip())}"
        return groups["header"] + mask(value.strip())
    if groups["key"] is not None:
        return mask(groups["key"])
    if groups["credential"] is not None:
        return groups["scheme"] + mask(groups["credential"])
    if groups["azure_key"] is not None:
        return groups["azure"] + mask(groups["azure_key"])
    if groups["password"] is not None:
        return groups["userinfo"] + "***@"
    if groups["query_value"] is not None:
        return groups["query"] + mask(groups["query_value"])
    return mask(found.group(0))


def redact_text(
    text: str,
    known_secrets: Iterable[str] = (),
    extra_headers: tuple[str, ...] = (),
    extra_patterns: tuple[str, ...] = (),
) -> str:
    """Mask everything that looks like a secret in ``text``, then every known secret value."""
    text = _pattern(extra_headers, extra_patterns).sub(_replace, text)
    for secret in known_secrets:
        if secret and secret in text:
            text = text.replace(secret, mask(secret))
    return text
