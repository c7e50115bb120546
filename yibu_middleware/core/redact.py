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
from collections.abc import Callable, Iterable

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
_KEY_SHAPES = r"""
    sk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{20,}
  | sk-ant-(?:api03|admin01)-[A-Za-z0-9_\-]{20,}
  | sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}
  | sk-[A-Za-z0-9_\-]{20,}
  | AIza[0-9A-Za-z_\-]{35}
  | hf_[A-Za-z]{34}
  | (?:gsk_|xai-|pplx-|nvapi-|r8_)[A-Za-z0-9_\-]{16,}
  | eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}
"""
_KEY_WORDS = ("sk-", "aiza", "hf_", "gsk_", "xai-", "pplx-", "nvapi-", "r8_", "eyj")
_SCHEMES = ("bearer", "basic", "token")
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


# A rule: (words, one of which the lower-cased text must hold; pattern; replacement). A rule
# runs only when one of its words occurs: most log lines hold none, and a small pattern
# is much cheaper than one large alternation tried at every position of every line.
Rule = tuple[tuple[str, ...], re.Pattern[str], Callable[[re.Match[str]], str]]


def _header_value(found: re.Match[str]) -> str:
    value = found.group("value")
    # Keep an auth scheme readable: "Bearer sk-...a1b2".
    scheme, _, credential = value.partition(" ")
    if credential and scheme.lower() in ("bearer", "basic", "token"):
        return f"{found.group('name')}{scheme} {mask(credential.strip())}"
    return found.group("name") + mask(value.strip())


def _masked_whole(found: re.Match[str]) -> str:
    return mask(found.group(0))


def _masked_second(found: re.Match[str]) -> str:
    return found.group(1) + mask(found.group(2))


@functools.cache
def _rules(extra_headers: tuple[str, ...] = (), extra_patterns: tuple[str, ...] = ()) -> tuple[Rule, ...]:
    """Compiled on first use (start-up is budgeted), once per set of extra rules."""
    headers = tuple(name.lower() for name in (*SECRET_HEADERS, *extra_headers))
    names = "|".join(re.escape(name) for name in headers)
    query = "|".join(re.escape(name) for name in SECRET_QUERY)
    rules: list[Rule] = [
        # A header value as logs show it: `name: value`, `'name': 'value'`, `"name": "value"`,
        # `(b'name', b'value')`; it runs to the end of the quoted string or of the line.
        (
            headers,
            re.compile(
                rf"(?P<name>(?i:\b(?:{names}))(?:\s*[:=]\s*b?['\"]?|['\"]\s*[:=,]\s*b?['\"]))"
                r"(?P<value>[^'\"\r\n,)}]+)"
            ),
            _header_value,
        ),
        (
            ("sk-", "aiza", "hf_", "gsk_", "xai-", "pplx-", "nvapi-", "r8_", "eyj"),
            re.compile(_KEY_SHAPES, re.VERBOSE),
            _masked_whole,
        ),
        (
            ("bearer", "basic", "token"),
            re.compile(r"(\b(?:Bearer|Basic|Token)\s+)([A-Za-z0-9._~+/=\-]{8,})"),
            _masked_second,
        ),
        (("accountkey=",), re.compile(r"(AccountKey=)([A-Za-z0-9+/=]{20,})"), _masked_second),
        (("@",), re.compile(r"(://[^/\s:@'\"]+:)[^/\s@'\"]+@"), lambda found: found.group(1) + "***@"),
        (tuple(f"{name}=" for name in SECRET_QUERY), re.compile(rf"([?&](?:{query})=)([^&\s'\"#]+)"), _masked_second),
    ]
    rules.extend(((), re.compile(pattern), _masked_whole) for pattern in extra_patterns)
    return tuple(rules)


def redact_text(
    text: str,
    known_secrets: Iterable[str] = (),
    extra_headers: tuple[str, ...] = (),
    extra_patterns: tuple[str, ...] = (),
) -> str:
    """Mask everything that looks like a secret in ``text``, then every known secret value."""
    lowered = text.lower()
    for words, pattern, replace in _rules(extra_headers, extra_patterns):
        if not words or any(word in lowered for word in words):
            text = pattern.sub(replace, text)
    for secret in known_secrets:
        if secret and secret in text:
            text = text.replace(secret, mask(secret))
    return text
