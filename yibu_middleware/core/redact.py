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
  whatever their shape, as whole words only (``KnownValues``).
"""

from __future__ import annotations

import functools
import itertools
import re
import re._constants as sre_constants  # type: ignore[import-not-found]  # the parser re itself uses
import re._parser as sre_parse  # type: ignore[import-not-found]
import threading
from collections.abc import Callable, Collection, Iterable
from operator import contains
from typing import Any

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


def mask_credential(value: str) -> str:
    """A secret header's whole value masked, its auth scheme kept readable: "Bearer sk-...a1b2"."""
    scheme, _, credential = value.partition(" ")
    if credential and scheme.lower() in _SCHEMES:
        return f"{scheme} {mask(credential.strip())}"
    return mask(value.strip())


def _header_value(found: re.Match[str]) -> str:
    return found.group("name") + mask_credential(found.group("value"))


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
        (tuple(f"{name}=" for name in SECRET_QUERY), re.compile(rf"([?&](?i:{query})=)([^&\s'\"#]+)"), _masked_second),
    ]
    rules.extend(((), re.compile(pattern), _masked_whole) for pattern in extra_patterns)
    return tuple(rules)


def redact_text(
    text: str,
    known_values: KnownValues | Iterable[str] = (),
    extra_headers: tuple[str, ...] = (),
    extra_patterns: tuple[str, ...] = (),
) -> str:
    """Mask every known secret value in ``text``, then everything that looks like a secret.

    Known values go first, so that no rule can cut a known key in two before it is found."""
    if not isinstance(known_values, KnownValues):
        values = KnownValues()
        for value in known_values:
            values.add(value, pinned=True, any_shape=True)
        known_values = values
    text = known_values.mask_in(text)
    lowered = text.lower()
    # Most lines hold no trigger word at all: one test of the fewest words that cover every
    # rule's words ends them here. map() over repeat() tests the words in C, with no frame each.
    triggered = any(map(contains, itertools.repeat(lowered), _triggers(extra_headers, extra_patterns)))
    if not triggered and not extra_patterns:
        return text
    for words, pattern, replace in _rules(extra_headers, extra_patterns):
        if not words or (triggered and any(map(contains, itertools.repeat(lowered), words))):
            text = pattern.sub(replace, text)
    return text


@functools.cache
def _triggers(extra_headers: tuple[str, ...] = (), extra_patterns: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Every rule's trigger words, less each word that holds another ("authorization" is in
    "proxy-authorization", "token" in "x-amz-security-token" and "access_token="): a line
    holds one of these exactly when it holds one of all the words (18 tests instead of 30 for
    the built-in rules)."""
    words = {word for rule_words, _, _ in _rules(extra_headers, extra_patterns) for word in rule_words}
    return tuple(sorted(word for word in words if not any(other != word and other in word for other in words)))


# A token holding "@": everything up to its last "@" after "://" (or from its start) is a
# user and password, however odd (a password may hold "/" or "@", and a value shown in an
# error may be cut short).
_AT_TOKEN = re.compile(r"[^\s'\"]*@[^\s'\"]*")


def _mask_token(found: re.Match[str]) -> str:
    token = found.group()
    start = token.find("://") + 3 if "://" in token else 0
    return token[:start] + "***" + token[token.rindex("@") :]


def mask_userinfo(text: str) -> str:
    """``https://user:password@host`` as ``https://***@host``, in any text.

    Stricter than the log-line rule above, which masks only a ``user:password@`` it can
    delimit and so leaves e-mail addresses in log lines readable: this is for text known to
    show URLs (settings values and errors, ``yibu doctor``), where any "@" ends a userinfo."""
    return _AT_TOKEN.sub(_mask_token, text) if "@" in text else text


# --- masking by exact value ---------------------------------------------------------------------

# Shorter values are placeholders ("t" in anthropic's tests, "EMPTY", "test", "sk-xxx"), not
# credentials: real keys are 32+ random characters, and masking a short string would hide
# it in every ordinary word that holds it. Eight is the length of the shortest random
# token worth hiding that is still unlikely to be a word of a log line.
MIN_EXACT_LENGTH = 8
# A value is found as a whole word: a run of these characters that is not part of a longer
# run (a key inside "x<key>y" is another word). "-" joins words, as in "sk-proj-...", but
# neither starts nor ends one, so "-<key>" and "<key>-1" still find "<key>".
_WORD_CHARS = "A-Za-z0-9_"
_WORD = re.compile(rf"[{_WORD_CHARS}][{_WORD_CHARS}-]{{{MIN_EXACT_LENGTH - 2},}}[{_WORD_CHARS}]")
# The same words, found only where one can start: after a character that joins no word (the
# text is given a space in front, for a word at its start) and any "-". _WORD alone is tried
# at every character of every shorter word, which costs a typical line a quarter more.
_WORD_AFTER_SEPARATOR = re.compile(rf"[^{_WORD_CHARS}-]-*+({_WORD.pattern})")
# Provider keys with other characters cannot be looked up by word: each is searched for on
# its own, so only the most recent few are kept (keys of the usual shapes never land here).
ODD_CAPACITY = 32


class KnownValues:
    """Secrets masked by exact value, whatever their shape: the gateway key (pinned) and
    the provider keys swapped out at run time (the most recent ``capacity`` of them).

    The cost of a record does not grow with the number of keys: the text's words of eight
    or more characters are found by one scan, then looked up in a dict. Memory is bounded:
    past ``capacity`` the key least recently used by a call is forgotten (it is still
    masked wherever its shape or place gives it away). Safe to read from any thread while
    another adds: a lookup is one dict operation."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._words: dict[str, None] = {}  # oldest first
        self._odd: dict[str, re.Pattern[str]] = {}  # oldest first
        # Pinned values are few (the gateway key): each is searched for on its own, which
        # costs a line with no remembered key almost nothing.
        self._pinned: dict[str, re.Pattern[str]] = {}
        # The pinned and odd values with their patterns, as one tuple that a line reads with
        # no lock and no copy (replaced whole, under the lock, when either changes).
        self._searched: tuple[tuple[str, re.Pattern[str]], ...] = ()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """The number of values remembered, less the pinned ones (which are never forgotten)."""
        return len(self._words) + len(self._odd)

    def add(self, value: str, *, pinned: bool = False, any_shape: bool = False) -> None:
        """Mask ``value`` from now on, or mark it the most recently used. A value shorter
        than ``MIN_EXACT_LENGTH`` is ignored, as (unless ``any_shape``, for a value known to
        be a secret such as the gateway key) is one with no digit: a generated key has
        digits, while "password" or "changeme" are words that ordinary lines hold too."""
        if len(value) < MIN_EXACT_LENGTH or not (any_shape or any(char.isdigit() for char in value)):
            return
        is_word = _WORD.fullmatch(value) is not None
        with self._lock:
            if pinned:
                self._pinned[value] = _exact(value)
            elif value in self._pinned:
                return
            elif is_word:
                self._words.pop(value, None)
                self._words[value] = None
                if len(self._words) > self.capacity:
                    del self._words[next(iter(self._words))]
                return
            else:
                known = self._odd.pop(value, None)
                self._odd[value] = known if known is not None else _exact(value)
                if len(self._odd) > min(ODD_CAPACITY, self.capacity):
                    del self._odd[next(iter(self._odd))]
            self._searched = (*self._pinned.items(), *self._odd.items())

    def remember(self, values: Collection[str]) -> None:
        for value in values:
            self.add(value)

    def mask_in(self, text: str) -> str:
        words = self._words
        if words:
            found = _WORD_AFTER_SEPARATOR.findall(" " + text)
            if found and not words.keys().isdisjoint(found):
                text = _WORD.sub(self._masked_word, text)
        for value, pattern in self._searched:
            if value in text:
                text = pattern.sub(mask(value), text)
        return text

    def _masked_word(self, found: re.Match[str]) -> str:
        word = found.group()
        return mask(word) if word in self._words else word

    def after_fork(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it at fork


def _exact(value: str) -> re.Pattern[str]:
    """``value`` as a whole word: not inside a longer run of word characters."""
    return re.compile(rf"(?<![{_WORD_CHARS}]){re.escape(value)}(?![{_WORD_CHARS}])")


# --- extra patterns that can backtrack without end -------------------------------------------------

_REPEATS = (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT)


def backtracking_risk(pattern: str) -> str | None:
    """Why ``pattern`` can take exponential time on a log line (Python's ``re`` backtracks),
    or None. Found: a quantified group holding a part that itself repeats a variable number
    of times (``(a+)+``, ``(\\w+\\s?)*``), unless each round starts or ends with a character
    that part cannot match (``(?:-[a-z]+)*`` is safe); and a quantified group of alternatives
    that can start alike (``(a|aa)+``); and two long repeats in a row that can match the same
    characters (``\\w+\\w+x``, ``.*.*=``: cubic on a line where they fail). Atomic groups and
    possessive quantifiers never backtrack and are accepted. Not found: quadratic forms such
    as a search for ``.*x`` (a fifth of a second on a 16 KiB line)."""
    return _risk_in(sre_parse.parse(pattern))


def _risk_in(items: Any) -> str | None:
    for (first_op, first), (second_op, second) in itertools.pairwise(items):
        if (
            first_op in _REPEATS
            and second_op in _REPEATS
            and _long(first)
            and _long(second)
            and any(_can_match(first[2], char) and _can_match(second[2], char) for char in range(128))
        ):
            return "two repeats in a row can match the same characters, so a line can be split in countless ways"
    for op, av in items:
        if op in _REPEATS:
            low, high, body = av
            if high != low and high > 1:
                inner = _variable_repeats(body)
                if inner and not _delimited(body, inner):
                    return "a quantified group holds a part that repeats too, so a line can be split in countless ways"
                if _overlapping_branches(body):
                    return "a quantified group of alternatives that can match the same text"
            found = _risk_in(body)
        elif op is sre_constants.SUBPATTERN:
            found = _risk_in(av[-1])
        elif op is sre_constants.BRANCH:
            found = next((risk for branch in av[1] if (risk := _risk_in(branch))), None)
        elif op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT):
            found = _risk_in(av[1])
        else:  # characters, anchors; atomic groups and possessive repeats do not backtrack
            found = None
        if found:
            return found
    return None


def _long(repeat: Any) -> bool:
    """A repeat of a variable count that can run long (``+``, ``*``, ``{2,}``)."""
    low, high, _ = repeat
    return bool(high != low and high > 100)


def _variable_repeats(items: Any) -> list[Any]:
    """The repeats of a variable count inside ``items`` (optional parts and alternatives too)."""
    found: list[Any] = []
    for op, av in items:
        if op in _REPEATS:
            if av[0] != av[1]:
                found.append(av[2])
            found.extend(_variable_repeats(av[2]))
        elif op is sre_constants.SUBPATTERN:
            found.extend(_variable_repeats(av[-1]))
        elif op is sre_constants.BRANCH:
            for branch in av[1]:
                found.extend(_variable_repeats(branch))
    return found


def _unwrapped(items: Any) -> list[Any]:
    """``items`` without the groups that only wrap them: ``((ab)*c)`` is ``(ab)*c``."""
    parts = list(items)
    while len(parts) == 1 and parts[0][0] is sre_constants.SUBPATTERN:
        parts = list(parts[0][1][-1])
    return parts


def _delimited(body: Any, inner: list[Any]) -> bool:
    """Each round of ``body`` starts or ends with a fixed character none of ``inner`` can match."""
    parts = _unwrapped(body)
    for edge in (parts[:1], parts[-1:]):
        if edge and edge[0][0] is sre_constants.LITERAL:
            char = edge[0][1]
            if not any(_can_match(part, char) for part in inner):
                return True
    return False


def _can_match(items: Any, char: int) -> bool:
    """Whether any character of ``items`` can be ``char`` (True when unsure)."""
    for op, av in items:
        if op is sre_constants.LITERAL:
            if av == char:
                return True
        elif op is sre_constants.IN:
            if _in_set(av, char):
                return True
        elif op in _REPEATS:
            if _can_match(av[2], char):
                return True
        elif op is sre_constants.SUBPATTERN:
            if _can_match(av[-1], char):
                return True
        elif op is sre_constants.BRANCH:
            if any(_can_match(branch, char) for branch in av[1]):
                return True
        elif op in (sre_constants.AT, sre_constants.ASSERT, sre_constants.ASSERT_NOT):
            continue
        else:  # any character, a negated literal, a group reference: assume it can
            return True
    return False


_CATEGORIES: dict[Any, Callable[[str], bool]] = {
    sre_constants.CATEGORY_DIGIT: str.isdigit,
    sre_constants.CATEGORY_NOT_DIGIT: lambda char: not char.isdigit(),
    sre_constants.CATEGORY_WORD: lambda char: char.isalnum() or char == "_",
    sre_constants.CATEGORY_NOT_WORD: lambda char: not (char.isalnum() or char == "_"),
    sre_constants.CATEGORY_SPACE: str.isspace,
    sre_constants.CATEGORY_NOT_SPACE: lambda char: not char.isspace(),
}


def _in_set(entries: Any, char: int) -> bool:
    matched, negated = False, False
    for op, av in entries:
        if op is sre_constants.NEGATE:
            negated = True
        elif op is sre_constants.LITERAL:
            matched = matched or av == char
        elif op is sre_constants.RANGE:
            matched = matched or av[0] <= char <= av[1]
        elif op is sre_constants.CATEGORY:
            test = _CATEGORIES.get(av)
            matched = matched or test is None or test(chr(char))
        else:
            return True
    return matched != negated


def _overlapping_branches(body: Any) -> bool:
    """A group of alternatives in ``body`` where two can start with the same character, or
    one can match nothing."""
    for op, av in body:
        if op is sre_constants.SUBPATTERN:
            if _overlapping_branches(av[-1]):
                return True
        elif op is sre_constants.BRANCH:
            firsts = [_first_chars(branch) for branch in av[1]]
            if any(first is None for first in firsts):
                return True
            seen: set[int] = set()
            for first in firsts:
                assert first is not None
                if seen & first:
                    return True
                seen |= first
        elif op is sre_constants.IN:
            continue  # a set is one character whichever entry matches: no ambiguity
    return False


def _first_chars(branch: Any) -> set[int] | None:
    """The literal characters ``branch`` can start with; None when it could start with any
    of many (a set, a category) or match nothing."""
    parts = list(branch)
    if not parts:
        return None
    op, av = parts[0]
    if op is sre_constants.LITERAL:
        return {av}
    if op is sre_constants.SUBPATTERN:
        return _first_chars(av[-1])
    if op in _REPEATS and av[0] >= 1:
        return _first_chars(av[2])
    if op is sre_constants.BRANCH:
        chars: set[int] = set()
        for inner in av[1]:
            first = _first_chars(inner)
            if first is None:
                return None
            chars |= first
        return chars
    return None
