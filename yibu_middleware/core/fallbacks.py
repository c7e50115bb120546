"""Model fallbacks: when a call's model is refused or exhausted, which model to try next.

Plain code with no I/O. A call's last answer (the one its plan would hand back) is read for
a *trigger*; each trigger is switched on or off by ``fallback_on``:

- ``model_refused``: the gateway does not know the model, or the key may not use it
  (``model_not_found`` on any status, ``key_model_access_denied``, a 404 naming a model, a
  403 that is neither a quota nor an IP refusal);
- ``exhausted``: every node was tried and each failed with a 429, a 5xx or no answer,
  while the call's deadline still runs;
- ``context_length``: the request does not fit the model's context window; only to a model
  listed for it in ``context_fallbacks`` (a model from ``fallbacks`` may well be smaller);
- ``content_policy``: the provider's content filter refused the request (off by default:
  another model answering what one refused is the user's decision).

Never on any other 400, 401 or 422: the request itself is wrong, and another model would
refuse it too. The list of fallbacks is the one for the call's first model (as sent, after
``model_aliases``), walked in order, skipping a model already tried and one the policy's
``allowed_models`` forbids.
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Callable, Collection, Mapping, Sequence

from .error_bodies import parse_json
from .keys import QUOTA_CODES


class Trigger(enum.Enum):
    MODEL_REFUSED = "model_refused"
    EXHAUSTED = "exhausted"
    CONTEXT_LENGTH = "context_length"
    CONTENT_POLICY = "content_policy"


DEFAULT_TRIGGERS = (Trigger.MODEL_REFUSED, Trigger.EXHAUSTED, Trigger.CONTEXT_LENGTH)

_MODEL_CODES = frozenset({"model_not_found", "key_model_access_denied", "model_not_allowed"})
_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
# How gateways and providers say it without a code (OpenAI, Anthropic, vLLM, new-api relays).
_CONTEXT_WORDS = (
    "maximum context length",
    "context length",
    "context window",
    "prompt is too long",
    "input is too long",
    "too many tokens",
)
_CONTENT_CODES = frozenset({"content_policy_violation", "content_filter", "content_filtered"})
_CONTENT_WORDS = ("content management policy", "content policy", "safety system", "content filter")


def _error_fields(body: bytes | None) -> tuple[str, str]:
    """(code or type, message) of an error body, lower-cased; empty when there is none."""
    if not body or body.lstrip()[:1] != b"{":
        return "", ""
    document = parse_json(body)
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict):
        return "", ""
    code = error.get("code")
    if not isinstance(code, str) or not code:
        code = error.get("type") if isinstance(error.get("type"), str) else ""
    message = error.get("message")
    return str(code).lower(), (message if isinstance(message, str) else "").lower()


def trigger_of(status: int, body: bytes | None, exhausted: bool) -> Trigger | None:
    """What a call's final answer says, for a fallback: ``status`` 0 with ``exhausted`` when no
    node answered at all. ``exhausted``: the plan ran out of nodes or attempts on 429s, 5xx or
    failed connections (not on the deadline, and not on a refusal)."""
    if exhausted:
        return Trigger.EXHAUSTED
    if status < 400:
        return None
    code, message = _error_fields(body)
    if code in _MODEL_CODES:
        return Trigger.MODEL_REFUSED
    if status == 404 and "model" in message:
        return Trigger.MODEL_REFUSED
    if status == 403 and code not in QUOTA_CODES and code != "access_denied":
        return Trigger.MODEL_REFUSED
    if status in (400, 413) and (code in _CONTEXT_CODES or any(words in message for words in _CONTEXT_WORDS)):
        return Trigger.CONTEXT_LENGTH
    if status == 400 and (code in _CONTENT_CODES or any(words in message for words in _CONTENT_WORDS)):
        return Trigger.CONTENT_POLICY
    return None


class Fallbacks:
    """The process's fallback rules (``fallbacks``, ``context_fallbacks``, ``fallback_on``)."""

    __slots__ = ("_allowed", "_context", "_general", "triggers")

    def __init__(
        self,
        general: Mapping[str, Sequence[str]],
        context: Mapping[str, Sequence[str]],
        triggers: Collection[Trigger],
        allowed: Callable[[str], bool] = lambda model: True,
    ) -> None:
        """``allowed``: the policy's model rule (``Rules.model_allowed``): a fallback it forbids
        is not made."""
        self._general = tuple((pattern, tuple(models)) for pattern, models in general.items())
        self._context = tuple((pattern, tuple(models)) for pattern, models in context.items())
        self.triggers = frozenset(triggers)
        self._allowed = allowed

    def covers(self, model: str | None) -> bool:
        """Whether a call to ``model`` has any fallback at all (else nothing is looked at)."""
        if model is None:
            return False
        return any(fnmatch.fnmatchcase(model, p) for p, _ in (*self._general, *self._context))

    def next_model(self, first: str, tried: Collection[str], trigger: Trigger) -> str | None:
        """The model to try after ``trigger`` for a call whose first model was ``first``."""
        if trigger not in self.triggers:
            return None
        table = self._context if trigger is Trigger.CONTEXT_LENGTH else self._general
        for pattern, models in table:
            if fnmatch.fnmatchcase(first, pattern):
                for model in models:
                    if model not in tried and self._allowed(model):
                        return model
                return None
        return None
