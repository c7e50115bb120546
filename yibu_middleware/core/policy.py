"""Client-side policy: the gateway's feature permissions, checked before anything is sent.

Pure checks on plain data; no I/O. A request that breaks a rule never reaches the gateway:
``check`` returns a :class:`Violation` and the adapter answers with an error in the
provider's format (``core/error_bodies.error_body``, ``x-should-retry: false``), so the SDK raises
its usual typed exception (400 ``BadRequestError`` for a bad input, 403
``PermissionDeniedError`` for a denied model or modality).

Rules, each named by its setting:
- ``policy.allowed_models``: the model as sent (after aliasing) must match one entry, exactly
  or as a shell pattern (``gpt-4o*``); empty: any model;
- ``policy.denied_modalities``: no image, audio or file input parts;
- ``policy.image_formats`` / ``policy.audio_formats`` / ``policy.max_media_bytes`` (with
  ``policy.check_media``): the gateway's media rules.

Only what can be known client-side is checked. Base64 data carries its media type (a
``data:`` URL, Anthropic's ``media_type``, OpenAI's ``input_audio.format``) and its size
(computed from the string's length; nothing is decoded). A URL is judged by its file
extension only: an unknown or missing extension passes, and its size is never fetched. A
``file_id`` (an upload already at the provider) passes the format and size checks.

Parse once: a body is parsed only when it may hold media (a byte scan for the part markers,
``needs_document``) and a media rule is on; :class:`ParsedBody` keeps the parsed document so
that aliasing (``core/request.py``) reuses it instead of parsing again. A body with no media
and no rule set costs one attribute check.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator
from fnmatch import fnmatchcase
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

MB = 1024 * 1024

# File extensions and media subtypes, to the format names the settings use.
FORMATS = {
    "jpg": "jpg",
    "jpeg": "jpg",
    "pjpeg": "jpg",
    "png": "png",
    "x-png": "png",
    "webp": "webp",
    "gif": "gif",
    "bmp": "bmp",
    "tif": "tiff",
    "tiff": "tiff",
    "heic": "heic",
    "heif": "heif",
    "avif": "avif",
    "svg": "svg",
    "svg+xml": "svg",
    "mp3": "mp3",
    "mpeg": "mp3",
    "mpga": "mp3",
    "wav": "wav",
    "wave": "wav",
    "x-wav": "wav",
    "vnd.wave": "wav",
    "ogg": "ogg",
    "oga": "ogg",
    "flac": "flac",
    "x-flac": "flac",
    "m4a": "m4a",
    "x-m4a": "m4a",
    "aac": "aac",
    "webm": "webm",
    "opus": "opus",
}

# JSON string tokens that only occur (unescaped) in a body that may carry a media part.
_MARKERS = re.compile(rb'"(?:image_url|input_image|input_audio|input_file|image|file|document)"')


def normalize_format(name: str) -> str:
    """'JPEG', '.jpeg', 'image/jpeg' -> 'jpg'; an unknown name comes back lower-cased."""
    name = name.strip().lower().lstrip(".")
    name = name.rsplit("/", 1)[-1].split(";", 1)[0]
    return FORMATS.get(name, name)


class PolicyConfig(Protocol):
    """What the rules are made of: ``settings.PolicySettings`` (kept apart so core imports no settings)."""

    @property
    def allowed_models(self) -> list[str]: ...
    @property
    def denied_modalities(self) -> Collection[str]: ...
    @property
    def image_formats(self) -> list[str]: ...
    @property
    def audio_formats(self) -> list[str]: ...
    @property
    def max_media_bytes(self) -> int: ...
    @property
    def check_media(self) -> bool: ...


class Rules:
    """The policy settings made ready for every call: built once per process."""

    __slots__ = (
        "active",
        "allowed",
        "allowed_exact",
        "allowed_patterns",
        "audio_formats",
        "check_media",
        "denied",
        "image_formats",
        "max_media_bytes",
        "media",
    )

    def __init__(
        self,
        allowed_models: Collection[str] = (),
        denied_modalities: Collection[str] = (),
        image_formats: Collection[str] = ("jpg", "png", "webp"),
        audio_formats: Collection[str] = ("mp3", "wav"),
        max_media_bytes: int = 200 * MB,
        check_media: bool = True,
    ) -> None:
        self.allowed = tuple(allowed_models)
        self.allowed_exact = frozenset(name for name in self.allowed if not _is_pattern(name))
        self.allowed_patterns = tuple(name for name in self.allowed if _is_pattern(name))
        self.denied = frozenset(denied_modalities)
        self.image_formats = frozenset(normalize_format(name) for name in image_formats)
        self.audio_formats = frozenset(normalize_format(name) for name in audio_formats)
        self.max_media_bytes = max_media_bytes
        self.check_media = check_media
        self.media = bool(self.denied) or check_media  # a rule that looks inside the body
        self.active = bool(self.allowed) or self.media  # callers skip check() when False

    @classmethod
    def from_settings(cls, policy: PolicyConfig) -> Rules:
        return cls(
            policy.allowed_models,
            policy.denied_modalities,
            policy.image_formats,
            policy.audio_formats,
            policy.max_media_bytes,
            policy.check_media,
        )

    def model_allowed(self, model: str) -> bool:
        if not self.allowed or model in self.allowed_exact:
            return True
        return any(fnmatchcase(model, pattern) for pattern in self.allowed_patterns)


def _is_pattern(name: str) -> bool:
    return any(char in name for char in "*?[")


class Violation(NamedTuple):
    """A rule the request breaks: what the adapter answers instead of sending it."""

    status: int  # 400: a bad input; 403: a model or modality not permitted
    code: str  # the error code in an OpenAI-format body
    rule: str  # e.g. "allowed models"
    setting: str  # e.g. "policy.allowed_models"
    message: str  # names the rule, the setting and what was sent; never media data or a key


# --- the body, parsed at most once ------------------------------------------------------------------

_UNPARSED: Any = object()


class ParsedBody:
    """A request body and, once asked for, its parsed JSON document: shared by policy and aliasing.

    ``document()`` parses on first use and returns the same object after (None when the body
    is not a JSON object). Aliasing may change ``document()["model"]`` in place and re-encode;
    policy only reads the message parts, so either may go first.
    """

    __slots__ = ("_document", "raw")

    def __init__(self, raw: bytes | None) -> None:
        self.raw = raw
        self._document: Any = _UNPARSED

    @property
    def parsed(self) -> bool:
        return self._document is not _UNPARSED

    def document(self) -> dict[str, Any] | None:
        if self._document is _UNPARSED:
            document = None
            raw = self.raw
            if raw and raw.lstrip()[:1] == b"{":
                try:
                    document = json.loads(raw)
                except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
                    document = None
            self._document = document if isinstance(document, dict) else None
        result: dict[str, Any] | None = self._document
        return result


def needs_document(body: bytes | None, rules: Rules) -> bool:
    """Whether ``check`` will parse this body: a media rule is on and the body may carry media."""
    if not rules.media or not body:
        return False
    # Every marker holds one of these words: a plain text chat, the usual body, is let go
    # after four substring scans, before the pattern runs.
    if not (b"image" in body or b"file" in body or b"audio" in body or b"document" in body):
        return False
    return _MARKERS.search(body) is not None


# --- the check ---------------------------------------------------------------------------------------


def check(
    provider: str,
    path: str,
    body: bytes | ParsedBody | None,
    model_as_sent: str | None,
    rules: Rules,
    body_unread: bool = False,
) -> Violation | None:
    """The first rule the request breaks, or None. ``body`` may be a ParsedBody to share its parse.
    ``body_unread``: the client streams the body (a file, a generator, a form it had not read),
    so it cannot be looked into; under an allow-list such a request's model cannot be checked.

    ``provider`` ("openai" or "anthropic") and ``path`` only shape the message; the part
    shapes of both APIs (chat, Responses, messages) are recognised wherever they occur.
    """
    if not rules.active:
        return None
    parsed = body if isinstance(body, ParsedBody) else ParsedBody(body)
    if rules.allowed:
        if model_as_sent is not None:
            if not rules.model_allowed(model_as_sent):
                return _model_denied(model_as_sent, rules)
        elif body_unread:
            return _model_unreadable(
                "the body is streamed by the client, a file or generator it has not read", rules, path
            )
        else:
            violation = _check_modelless(parsed, rules, path)
            if violation is not None:
                return violation
    if not rules.media:
        return None
    if not parsed.parsed and not needs_document(parsed.raw, rules):
        return None
    document = parsed.document()
    if document is None:
        return None
    for part in media_parts(document):
        violation = _check_part(part, rules, provider, path)
        if violation is not None:
            return violation
    return None


def _check_modelless(parsed: ParsedBody, rules: Rules, path: str) -> Violation | None:
    """A JSON body with no readable top-level model, under an allow-list: refused when it has a
    model we cannot read (not a string, or a body that is not valid JSON); an Anthropic message
    batch is checked request by request. A body that is not JSON (none, or a multipart form)
    is not looked into."""
    raw = parsed.raw
    if not raw or raw.lstrip()[:1] != b"{":
        return None
    document = parsed.document()
    if document is None:
        return _model_unreadable("the body is not valid JSON (or is nested too deeply to read)", rules, path)
    if "model" in document:
        return _model_unreadable(f"its model is {_kind(document['model'])}, not a name", rules, path)
    requests = document.get("requests")
    if isinstance(requests, list):  # Anthropic message batches: each request names its model
        for index, request in enumerate(requests):
            params = request.get("params") if isinstance(request, dict) else None
            model = params.get("model") if isinstance(params, dict) else None
            if not isinstance(model, str):
                what = f"requests[{index}].params.model is {_kind(model)}, not a name"
                return _model_unreadable(what, rules, path)
            if not rules.model_allowed(model):
                return _model_denied(model, rules)
    return None


def _kind(value: Any) -> str:
    return "missing" if value is None else f"a JSON {type(value).__name__.replace('dict', 'object')}"


def _model_unreadable(what: str, rules: Rules, path: str) -> Violation:
    allowed = ", ".join(repr(name) for name in rules.allowed)
    return Violation(
        403,
        "model_unreadable",
        "allowed models",
        "policy.allowed_models",
        f"yibu-middleware policy: the model of this request could not be read ({what}), so it cannot be"
        f" checked against the allowed models (rule: allowed models; setting: policy.allowed_models ="
        f" [{allowed}]). Sent: a request to {path}. Send the model as a string in the body's top-level"
        ' "model" field. (Checked client-side; nothing was sent to the gateway.)',
    )


def _model_denied(model: str, rules: Rules) -> Violation:
    allowed = ", ".join(repr(name) for name in rules.allowed)
    return Violation(
        403,
        "model_not_allowed",
        "allowed models",
        "policy.allowed_models",
        f"yibu-middleware policy: model {model!r} is not allowed (rule: allowed models; setting:"
        f" policy.allowed_models = [{allowed}]). Sent: a request for model {model!r} (as sent, after"
        " model_aliases). Use an allowed model, or add this one (or a pattern such as 'gpt-4o*') to"
        " policy.allowed_models. (Checked client-side; nothing was sent to the gateway.)",
    )


# --- media parts --------------------------------------------------------------------------------------


class MediaPart(NamedTuple):
    """One image, audio or file input, described without its data."""

    modality: str  # "image", "audio" or "file"
    shape: str  # the part's type as sent: "image_url", "input_audio", "image", "document", ...
    where: str  # its place in the body: "messages[0].content[1]"
    url: str | None  # a remote URL (http/https), when given by URL
    data_length: int | None  # characters of inline data (base64: without its '=' padding)
    base64: bool  # the inline data is base64 (else plain or percent-encoded)
    media_type: str | None  # as declared: "image/png", "wav", or None

    @property
    def format(self) -> str | None:
        """The format name ('jpg', 'mp3'), from the declared type or the URL's extension."""
        if self.media_type:
            return normalize_format(self.media_type)
        if self.url:
            extension = _extension(self.url)
            return FORMATS.get(extension) if extension else None  # an unknown extension says nothing
        return None

    @property
    def size(self) -> int | None:
        """Decoded bytes of inline data; None for a URL or a file id (unknown here)."""
        if self.data_length is None:
            return None
        if not self.base64:
            return self.data_length
        return self.data_length * 3 // 4  # exact: data_length excludes the '=' padding

    def describe(self) -> str:
        """What was sent, for messages: never the data, never a URL's query or path."""
        kind = f"{'an' if self.modality[0] in 'aeiou' else 'a'} {self.modality} part of type {self.shape!r}"
        details = []
        if self.media_type:
            details.append(self.media_type)
        if self.url is not None:
            # Only the scheme and a known extension: a URL's path and query may hold a signature.
            extension = _extension(self.url)
            shown = f" ending in .{extension}" if extension in FORMATS else ""
            details.append(f"an {urlsplit(self.url).scheme or 'other'} URL{shown}")
        elif self.data_length is not None:
            size = self.size or 0
            details.append(f"{'base64' if self.base64 else 'inline'} data of {_size(size)}")
        else:
            details.append("a file id")
        return f"{kind} at {self.where} ({', '.join(details)})"


def _extension(url: str) -> str | None:
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[1].lower() if "." in name else None


def _size(count: int) -> str:
    return f"{count / MB:.1f} MB ({count:,} bytes)" if count >= MB else f"{count:,} bytes"


def media_parts(document: dict[str, Any]) -> Iterator[MediaPart]:
    """Every media part of a chat, Responses or Anthropic messages body, tool results included."""
    for key in ("messages", "input"):
        value = document.get(key)
        if isinstance(value, list):
            yield from _walk(value, key, 0)


_NESTED = ("content", "output")  # where parts hold parts: messages, Anthropic tool_result, Responses outputs
_MAX_DEPTH = 8


def _walk(items: list[Any], where: str, depth: int) -> Iterator[MediaPart]:
    if depth > _MAX_DEPTH:
        return
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        here = f"{where}[{index}]"
        part = _media(item, here)
        if part is not None:
            yield part
            continue
        for key in _NESTED:
            inner = item.get(key)
            if isinstance(inner, list):
                yield from _walk(inner, f"{here}.{key}", depth + 1)


def _media(part: dict[str, Any], where: str) -> MediaPart | None:
    kind = part.get("type")
    if kind == "image_url":  # OpenAI chat: {"image_url": {"url": ...}} (or the URL itself)
        value = part.get("image_url")
        url = value.get("url") if isinstance(value, dict) else value
        return _from_url("image", kind, where, url)
    if kind == "input_image":  # OpenAI Responses: {"image_url": "...", "file_id": ...}
        return _from_url("image", kind, where, part.get("image_url"))
    if kind == "input_audio":  # OpenAI chat and Responses: {"input_audio": {"data", "format"}}
        audio = part.get("input_audio")
        audio = audio if isinstance(audio, dict) else part
        return _inline("audio", kind, where, audio.get("data"), _text(audio.get("format")))
    if kind == "file":  # OpenAI chat: {"file": {"file_data", "file_id", "filename"}}
        file = part.get("file")
        file = file if isinstance(file, dict) else {}
        return _from_data_or_id("file", kind, where, file.get("file_data"), None)
    if kind == "input_file":  # OpenAI Responses: {"file_data" | "file_url" | "file_id", "filename"}
        if isinstance(part.get("file_url"), str):
            return _from_url("file", kind, where, part["file_url"])
        return _from_data_or_id("file", kind, where, part.get("file_data"), None)
    if kind in ("image", "document"):  # Anthropic: {"source": {"type": "base64" | "url" | "file" | ...}}
        modality = "image" if kind == "image" else "file"
        source = part.get("source")
        source = source if isinstance(source, dict) else {}
        source_kind = source.get("type")
        if source_kind == "url":
            return _from_url(modality, kind, where, source.get("url"))
        if source_kind == "base64":
            return _inline(modality, kind, where, source.get("data"), _text(source.get("media_type")))
        if source_kind == "text":
            return _inline(modality, kind, where, source.get("data"), _text(source.get("media_type")), base64=False)
        return MediaPart(modality, kind, where, None, None, False, None)  # a file id, or content blocks
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _from_url(modality: str, shape: str, where: str, url: Any) -> MediaPart:
    if isinstance(url, str) and url.startswith("data:"):
        return _data_url(modality, shape, where, url)
    remote = url if isinstance(url, str) else None
    return MediaPart(modality, shape, where, remote, None, False, None)


def _from_data_or_id(modality: str, shape: str, where: str, data: Any, media_type: str | None) -> MediaPart:
    if isinstance(data, str):
        return _inline(modality, shape, where, data, media_type)
    return MediaPart(modality, shape, where, None, None, False, media_type)  # a file id


def _inline(
    modality: str, shape: str, where: str, data: Any, media_type: str | None, *, base64: bool = True
) -> MediaPart:
    if isinstance(data, str) and data.startswith("data:"):
        return _data_url(modality, shape, where, data)
    length = len(data) if isinstance(data, str) else None
    if length is not None and base64:
        length -= _padding(data)
    return MediaPart(modality, shape, where, None, length, base64, media_type)


def _data_url(modality: str, shape: str, where: str, url: str) -> MediaPart:
    """``data:[<media type>][;base64],<data>``: the header is read, the data only measured."""
    comma = url.find(",", 0, 256)
    if comma < 0:
        return MediaPart(modality, shape, where, None, len(url), False, None)
    header = url[5:comma]
    base64 = header.endswith(";base64")
    media_type = header.split(";", 1)[0] or None
    length = len(url) - comma - 1
    if base64:
        length -= _padding(url)
    return MediaPart(modality, shape, where, None, length, base64, media_type)


def _padding(data: str) -> int:
    return 2 if data.endswith("==") else 1 if data.endswith("=") else 0


def _check_part(part: MediaPart, rules: Rules, provider: str, path: str) -> Violation | None:
    modality = part.modality
    if modality in rules.denied:
        denied = ", ".join(repr(name) for name in sorted(rules.denied))
        return Violation(
            403,
            "modality_not_allowed",
            "denied modalities",
            "policy.denied_modalities",
            f"yibu-middleware policy: {modality} input is not allowed (rule: denied modalities; setting:"
            f" policy.denied_modalities = [{denied}]). Sent: {part.describe()}, in a request to {path}."
            f" Remove the {modality} part, or take {modality!r} out of policy.denied_modalities."
            " (Checked client-side; nothing was sent to the gateway.)",
        )
    if not rules.check_media:
        return None
    allowed = {"image": rules.image_formats, "audio": rules.audio_formats}.get(modality)
    found = part.format
    if allowed is not None and found is not None and found not in allowed:
        setting = f"policy.{modality}_formats"
        names = ", ".join(sorted(allowed))
        return Violation(
            400,
            "unsupported_media_format",
            "media formats",
            setting,
            f"yibu-middleware policy: {modality} format {found!r} is not accepted by the gateway (rule: media"
            f" formats; setting: {setting} = [{names}]). Sent: {part.describe()}, in a request to {path}."
            f" Convert it to one of {names}, or add {found!r} to {setting}."
            " (Checked client-side; nothing was sent to the gateway.)",
        )
    size = part.size
    if size is not None and size > rules.max_media_bytes:
        return Violation(
            400,
            "media_too_large",
            "media size",
            "policy.max_media_bytes",
            f"yibu-middleware policy: the {modality} is {_size(size)}, over the limit of"
            f" {_size(rules.max_media_bytes)} (rule: media size; setting: policy.max_media_bytes ="
            f" {rules.max_media_bytes}). Sent: {part.describe()}, in a request to {path}. Send a smaller"
            " file, a URL, or raise policy.max_media_bytes. (Checked client-side; nothing was sent to the gateway.)",
        )
    return None


# --- refusals from the gateway -------------------------------------------------------------------------

_REFUSALS = {
    "insufficient_user_quota": (
        "the gateway key's quota is used up (insufficient_user_quota). Top up the account or use a key"
        " with quota left; retrying cannot help."
    ),
    "pre_consume_token_quota_failed": (
        "the gateway key's quota cannot cover this request (pre_consume_token_quota_failed). Top up the"
        " key or use one with quota left; retrying with the same key cannot help."
    ),
    "insufficient_quota": (
        "the account has no quota left (insufficient_quota), at the gateway or at the provider behind it."
        " Top up or raise the quota; retrying cannot help."
    ),
    "access_denied": (
        "the gateway denied access (access_denied), usually because this machine's IP address is not"
        " among the key's allowed IPs. Add the address to the key's IP allow-list at the gateway, or"
        " call from an allowed address."
    ),
    "key_model_access_denied": (
        "this key may not use the requested model (key_model_access_denied). Allow the model for the"
        " key at the gateway, or call a model the key allows (policy.allowed_models can catch this"
        " before sending)."
    ),
    "budget_exceeded": (
        "the key's budget is spent (budget_exceeded). Raise the budget at the gateway or wait for it"
        " to reset; retrying cannot help."
    ),
    "model_not_found": (
        "the gateway has no channel serving this model (model_not_found). Check the model name"
        " (model_aliases can map it to one the gateway serves) or enable a channel for it."
    ),
    "invalid_api_key": (
        "the gateway does not accept the key (invalid_api_key). Check YIBU_API_KEY (or the app's key,"
        " when no gateway key is set)."
    ),
}


def describe_gateway_refusal(status: int, code: str | None) -> str | None:
    """A clear message for a quota or permission refusal by the gateway; None for any other answer.

    For the span attribute and the log line of a call the gateway refused (never retried:
    these codes are ``retry.FINAL_CODES``). A 403 with no known code is read as a permission
    refusal (one-api/new-api answer "model not allowed for this key" that way).
    """
    if code and code in _REFUSALS:
        return f"refused by the gateway ({status}): {_REFUSALS[code]}"
    if status == 403:
        return (
            "refused by the gateway (403): the key is not permitted this request, most often a model"
            " not allowed for the key or an IP address not allowed. Check the key's model and IP"
            " permissions at the gateway (policy.allowed_models can catch a model before sending)."
        )
    return None
