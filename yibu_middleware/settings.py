"""Settings: what the user configured, where each value came from, and clear errors.

Sources, highest first: arguments to ``install()``, environment variables (``YIBU_``
prefix, ``__`` between nested fields), the TOML file named by ``YIBU_CONFIG``, else
``./yibu.toml``, else ``[tool.yibu]`` in ``./pyproject.toml``; then the defaults.

pydantic-settings does the layering and the environment parsing; this module adds
what it lacks for a library that runs inside someone else's app: every bad value is
reported with the place it came from and the form expected, secrets masked, and the
whole report raised as one :class:`~yibu_middleware.errors.ConfigError`.

Each field says what it is twice, on purpose: ``description=`` is the short form an error
message quotes after a bad value (``[retry.max_attempts: attempts per call, ...]``), and the
docstring under the field is its entry in the README's configuration reference, which
``scripts/config-reference`` renders from this module (with the environment variable, type
and default read from the field) and the tests check. A new setting needs both.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from .core.redact import mask, mask_userinfo, redact_text
from .errors import ConfigError

if TYPE_CHECKING:
    from .core.keys import GatewayKey

ENV_PREFIX = "YIBU_"
CONFIG_ENV = "YIBU_CONFIG"
"""Path of the TOML settings file to read."""
DEFAULT_BASE_URL = "https://api.yibuapi.com/v1"

Provider = Literal["openai", "anthropic"]
FallbackTrigger = Literal["model_refused", "exhausted", "context_length", "content_policy"]

# Settings whose values are keys: never quoted in an error, shown only masked.
SECRET_FIELDS = frozenset({"api_key", "api_keys", "keys_by_model"})

# The words a switch accepts. YIBU_ENABLED is read by the one-line .pth file too, which
# hands every value outside FALSE_WORDS to start-up, where anything else is an error:
# a typo must neither switch routing off unnoticed nor be guessed at.
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")

# Settings are a few levels deep at most; deeper JSON or TOML is an error, never a RecursionError.
MAX_NESTING = 16


def _switch_word(value: Any) -> Any:
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise ValueError("expected 1/true/yes/on to switch it on, or 0/false/no/off (or empty) to switch it off")
    return value


# A bool that takes only the words above (pydantic alone would also take 'y', 't', 'f', 'n').
Switch = Annotated[bool, BeforeValidator(_switch_word)]


class RouteSpec(BaseModel):
    """How requests to one provider host are redirected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: Provider = Field(
        "openai",
        description="wire format of the host's API: 'openai' (also for OpenAI-compatible hosts) or 'anthropic'",
    )
    strip_prefix: str = Field(
        "/v1",
        description="path prefix removed before the rest is joined onto the node URL, e.g. '/v1' or '/openai/v1'",
    )
    paths: tuple[str, ...] = Field(
        (),
        description="more paths routed, besides the provider's model API: gateway-side paths (after"
        " strip_prefix), each a prefix, e.g. ['/rerank', '/beta']; ['/'] routes every path of the host",
    )

    @field_validator("paths", mode="before")
    @classmethod
    def _check_paths(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        for path in value if isinstance(value, list | tuple) else ():
            if not isinstance(path, str) or not path.startswith("/") or any(c in path for c in "?#") or "//" in path:
                raise ValueError(f"{path!r} is not a path; expected a path such as '/rerank' (or '/' for every path)")
        return value


DEFAULT_ROUTES: dict[str, RouteSpec] = {
    "api.openai.com": RouteSpec(provider="openai"),
    "api.anthropic.com": RouteSpec(provider="anthropic"),
}


class RetrySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_attempts: int = Field(3, ge=1, le=10, description="attempts per call, the first included, across all nodes")
    """Attempts per call, the first included, across all nodes."""
    backoff_base: float = Field(
        0.1, gt=0, description="seconds; a retry waits only when every node was tried: full jitter up to base*2^n"
    )
    """Seconds. A retry waits only when every node was already tried: full jitter up to `backoff_base * 2^n`."""
    backoff_max: float = Field(2.0, gt=0, description="seconds; the longest such wait")
    """Seconds: the longest such wait."""
    max_retry_after: float = Field(
        20.0, ge=0, description="seconds; a 429 asking to wait longer is handed back to the caller instead"
    )
    """Seconds. A 429 whose `retry-after` asks for longer is handed back to the caller rather than waited out."""
    budget_ratio: float = Field(
        0.2, ge=0, le=1, description="retries may be at most this share of the requests of the last 10 s"
    )
    """Retries may be at most this share of the process's requests over the last 10 s..."""
    budget_floor: int = Field(10, ge=0, description="...or this many retries per 10 s, whichever is more")
    """...or this many per 10 s, whichever is more. Refused connections cost no budget."""


class EjectionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    consecutive_failures: int = Field(5, ge=1, description="failures in a row that take a node out")
    """Failures in a row that take a node out of rotation."""
    base_seconds: float = Field(30.0, gt=0, description="first time out; grows with each ejection (+-20 % jitter)")
    """First time out; `base_seconds x times ejected`, +-20 % jitter. Then one trial request decides."""
    max_seconds: float = Field(300.0, gt=0, description="the longest time out")
    """The longest time out, before the +-20 % jitter."""


class HealthCheckSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    interval: float = Field(
        0.0, ge=0, description="seconds between active checks of ejected nodes (GET <node>/models); 0: off"
    )
    """Seconds between active checks (`GET <node>/models`) of ejected nodes, which are let back as soon as they
    answer; `0`: off. One daemon thread, started by the first redirected call."""
    timeout: float = Field(2.0, gt=0, description="seconds a check may take")
    """Seconds a check may take."""


class StreamSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    first_token_timeout: float | None = Field(
        None,
        gt=0,
        description="seconds a stream may take to its first content (also the longest silence between"
        " two chunks) before it is retried on another node; unset: no limit",
    )
    """Seconds a stream may take to its first content before the attempt is dropped and retried on another node. It
    is applied as the read timeout of streaming attempts, so it also bounds the silence between two chunks."""


class HedgeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(
        False,
        description="after the observed p95 time to an answer, send a second attempt to another node;"
        " the first answer wins and the other is cancelled",
    )
    """Hedged requests: when the first attempt has not answered after the observed p95 time to an answer, a second
    goes to another node; the first answer wins, the other is cancelled."""
    max_share: float = Field(0.05, gt=0, le=0.5, description="hedges stay under this share of requests")
    """Hedges stay under this share of requests over the last 10 s, or one per 10 s, whichever is more."""
    min_samples: int = Field(20, ge=1, description="answers observed before the first hedge")
    """Answers observed before the first hedge."""


class AffinitySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: Switch = Field(
        True,
        description="send a conversation's calls to the node that already holds its prefix (chat, Responses"
        " and Anthropic messages calls), by consistent hashing with bounded loads",
    )
    """Context affinity for chat, Responses and Anthropic messages calls: a conversation's first attempts go to the
    node that already holds its prompt prefix in cache (see "Context affinity"). The key is the request's
    `prompt_cache_key`, else `user`, else `metadata.user_id`, else a Responses `conversation`, else a hash of the
    model and the conversation's first messages; it is mapped to a node by consistent hashing with bounded loads.
    Retries and hedges still go to other nodes. `false`: every call is spread by latency alone."""
    load_factor: float = Field(
        1.25,
        ge=1.0,
        le=10.0,
        description="a node takes at most this many times the mean in-flight load before its"
        " conversations spill to the next node on the ring",
    )
    """A node takes at most this many times its share of the calls in flight (the call being placed counted)
    before a conversation that maps to it goes to the next node on the ring ("Consistent Hashing with Bounded
    Loads"): lower spreads load more evenly, higher keeps conversations together more often."""
    slow_factor: float = Field(
        3.0,
        gt=1.0,
        description="a node whose latency estimate is over this many times the median node's (and 100 ms"
        " more) is passed over",
    )
    """A node whose latency estimate (the peak-EWMA of "Choosing a node") is over this many times the median
    node's, and at least 100 ms over it, is passed over for the next node on the ring until it is fast again."""
    set_prompt_cache_key: Switch = Field(
        False,
        description="add prompt_cache_key, from the affinity key, to OpenAI chat and Responses requests that have none",
    )
    """Add `prompt_cache_key` (`yibu-` and 16 hex digits of the affinity key's hash, never the prompt or the user
    id in clear) to OpenAI chat and Responses requests that have none, so the gateway's upstream keeps the prefix
    in one cache too. A body that has one is never changed."""


class RedactionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="mask keys in every log record of the process; turned off only explicitly")
    """Mask keys in every log record of the process (see "Keys never in logs"). Off only when set explicitly to a
    false value (`false`, `0`, `no`, `off`)."""
    extra_headers: list[str] = Field([], description="more header names whose values are secret")
    """More header names whose values are secret."""
    extra_patterns: list[str] = Field([], description="more regular expressions for secrets")
    r"""More regular expressions for secrets. Checked at start: a pattern that does not compile, or that can
    backtrack catastrophically (a repeat inside a repeat such as `(a+)+` or `(\w+\s?)*`, overlapping
    alternatives under one, such as `(a|aa)+`, or two long repeats in a row over the same characters, such as
    `\w+\w+x`), is a settings error naming it; make the inner part atomic (`(?>a+)+`) or possessive (`(a++)+`),
    or drop the nesting. A merely quadratic pattern (a search for `.*x`) is not refused: about 0.2 s on a 16 KiB
    line that holds no `x`."""
    remembered_keys: int = Field(
        10_000,
        ge=100,
        description="provider keys swapped out that are masked by exact value: the most recently used ones",
    )
    """Provider keys swapped out that are masked by exact value: the most recently used ones."""

    @field_validator("extra_patterns")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        """Each pattern runs on every log line, so one that compiles but can backtrack without
        end (one warning() once took 7 s) is refused here, not found out in production."""
        import re

        from .core.redact import backtracking_risk

        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regular expression ({exc})") from None
            risk = backtracking_risk(pattern)
            if risk:
                raise ValueError(
                    f"{pattern!r} can backtrack catastrophically ({risk}): one log line could take seconds."
                    " Rewrite it without a repeat inside a repeat (e.g. '(a+)+' as 'a+'), or make the inner"
                    " part atomic ('(?>a+)+') or possessive ('(a++)+')"
                )
        return value


class KeySettings(BaseModel):
    """Which key is sent to the gateway, and how a pool of keys is used."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    pass_through: Switch = Field(
        False,
        description="run without a gateway key (api_key unset): each caller's own key is sent to the gateway"
        " unchanged, for apps already given gateway keys. Without it, no api_key is a settings error",
    )
    """Start without `api_key`: each caller's own key is sent to the gateway unchanged, for apps already given
    gateway keys. Ignored when `api_key` is set."""
    bench_seconds: float = Field(
        60.0,
        gt=0,
        description="seconds a key the gateway refused for quota (or rejected with a 401) is left out of its pool",
    )
    """Seconds a pooled key is left out after the gateway refused it for quota (`insufficient_user_quota`,
    `pre_consume_token_quota_failed`, `insufficient_quota`) or rejected it (401); the call that met the refusal
    is retried at once with the next key. Then the key is tried again. With a single key nothing is benched."""


class ModelPrice(BaseModel):
    """A model's price at the gateway, USD per million tokens (``prices``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    input_per_mtok: float = Field(ge=0, description="USD per million input tokens")
    cached_input_per_mtok: float | None = Field(
        None, ge=0, description="USD per million input tokens read from a cache; unset: the input price"
    )
    output_per_mtok: float = Field(ge=0, description="USD per million output tokens")


Period = Literal["hour", "day", "month"]


class SpendSettings(BaseModel):
    """Spend tracking: on when a price, a budget, the ledger or ``track`` is set."""

    model_config = ConfigDict(extra="forbid")

    track: Switch = Field(
        False, description="price every call from its usage (span attribute and metric) even with no budget set"
    )
    """Price every call from its reported usage, for the span attribute and the metric (see "Spend and budgets"),
    even with no price, budget or ledger set (any of those turns it on too). Off: calls are not read for their
    usage on this account."""
    ledger: Switch = Field(
        False, description="keep a local SQLite ledger of every call's model, tokens and cost, for `yibu spend`"
    )
    """Keep a local SQLite ledger of every call's model, tokens and cost (`ledger_path`), read by `yibu spend`, and
    read at start so that budgets count what the process spent before a restart."""
    ledger_path: Path | None = Field(
        None, description="the ledger file; unset: spend.sqlite3 in the user's cache folder"
    )
    """The ledger file; unset: `$XDG_CACHE_HOME/yibu-middleware/spend.sqlite3` (`~/.cache/...` when unset;
    `%LOCALAPPDATA%` on Windows, `~/Library/Caches` on macOS)."""


class ModelLimits(BaseModel):
    """Client-side limits of one model (``limits.per_model``), on top of the global ones."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_concurrent: int | None = Field(None, ge=1, description="calls in flight at once (a request pool); unset: none")
    """Calls in flight to the gateway at once (a request pool), for the whole process here and for one model under
    `per_model`; a call holds its slot until its response or stream ends."""
    requests_per_second: float | None = Field(
        None, gt=0, description="calls started per second, evenly spaced (no burst); unset: no limit"
    )
    """Calls started per second, evenly spaced with no initial burst."""
    tokens_per_minute: int | None = Field(
        None,
        ge=1,
        description="tokens per sliding minute: estimated from the request while it is out, then the"
        " usage the gateway returned; unset: no limit",
    )
    """Tokens per sliding minute: a call reserves an estimate (request bytes / 4, each inline media payload over
    6,400 bytes counted as 1,600 tokens, + `max_tokens`, `max_completion_tokens` or `max_output_tokens`) while
    it runs; then the usage the gateway returned (JSON or stream) counts for 60 s from its end."""

    @property
    def limited(self) -> bool:
        return not (self.max_concurrent is None and self.requests_per_second is None and self.tokens_per_minute is None)


class LimitSettings(ModelLimits):
    """Client-side limits: the process's own (these fields) and each model's (``per_model``)."""

    queue_timeout: float = Field(
        30.0,
        ge=0,
        description="seconds a call may wait its turn; then it fails with a 429 the SDK does not retry",
    )
    """Seconds a call may wait its turn (first come, first served; sync and async callers share one queue). Then it
    fails with a 429 in the provider's format and `x-should-retry: false` (the SDK's `RateLimitError`), naming
    the limit that held it."""
    per_model: Annotated[dict[str, ModelLimits], NoDecode] = Field(
        {},
        description="limits of one model (as sent, after model_aliases), on top of the global ones:"
        ' "gpt-4o" = {max_concurrent = 2}. Env: JSON object',
    )
    """The same three limits for one model (as sent, after `model_aliases`), on top of the global ones:
    `[limits.per_model."gpt-4o"]` with `max_concurrent = 2`."""
    follow_gateway_headers: bool = Field(
        True,
        description="hold back calls as the gateway's x-ratelimit-* / retry-after headers ask (when a limit is set)",
    )
    """While a limit is set, hold back new calls as the gateway's answers ask: `retry-after-ms` / `retry-after` on
    a 429 (1 s when a 429 gives no hint, as new-api's do not), and the `x-ratelimit-remaining-*` /
    `anthropic-ratelimit-*-remaining` budgets until their reset, for the model of the answer and the node that
    sent it (see "Client-side limits and policy")."""
    max_hold_seconds: float = Field(
        60.0,
        gt=0,
        allow_inf_nan=False,
        description="the longest a node's retry-after or x-ratelimit-* reset holds calls back, in seconds;"
        " a node asking for more (days, a date far off) holds this long",
    )
    """The longest one answer's `retry-after` or `x-ratelimit-reset-*` holds calls back; a node asking for more
    (days, or a date far off) holds this long."""

    @field_validator("per_model", mode="before")
    @classmethod
    def _parse_per_model(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = _json_value(value, 'a JSON object of model = limits, e.g. {"gpt-4o": {"max_concurrent": 2}}')
        if isinstance(value, Mapping) and any(not str(model).strip() for model in value):
            raise ValueError("a model name in per_model is empty")
        return value

    @property
    def active(self) -> bool:
        """Any limit set, globally or for a model: without one there is no limiter and no cost."""
        return self.limited or any(model.limited for model in self.per_model.values())


MB = 1024 * 1024
Modality = Literal["image", "audio", "file"]
IMAGE_FORMATS = ("jpg", "png", "webp", "gif", "bmp", "tiff", "heic", "heif", "avif", "svg")
AUDIO_FORMATS = ("mp3", "wav", "ogg", "flac", "m4a", "aac", "webm", "opus")


class PolicySettings(BaseModel):
    """Client-side checks of the gateway's feature permissions, made before anything is sent."""

    model_config = ConfigDict(extra="forbid")

    allowed_models: Annotated[list[str], NoDecode] = Field(
        [],
        description="models (as sent, after model_aliases) that may be called; shell patterns such as"
        " 'gpt-4o*' allowed; empty: all. Env: comma-separated or a JSON list",
    )
    """Models that may be called, as sent after `model_aliases`; empty: all. Shell patterns such as `gpt-4o*`. The
    model is the JSON body's top-level `"model"` field (never one nested in a tool call, `metadata` or a
    schema), of any length; each request of an Anthropic message batch is checked. Any other model gets a 403
    (`PermissionDeniedError`) and nothing is sent; so does a body whose model cannot be read (not a string, not
    valid JSON, or a body the client streams from a generator or file: code `model_unreadable`). An upload's
    multipart form is read for its `model` field. A body with no model (`GET /models`, most file calls, a
    Responses call whose stored `prompt` names the model) passes."""
    denied_modalities: Annotated[list[Modality], NoDecode] = Field(
        [],
        description="input kinds refused before sending: 'image', 'audio', 'file'. Env: comma-separated or a JSON list",
    )
    """`image`, `audio`, `file`: input parts of these kinds (OpenAI chat and Responses, Anthropic messages, tool
    results included) get a 403 before sending."""
    image_formats: Annotated[list[str], NoDecode] = Field(
        ["jpg", "png", "webp"], description="image formats accepted (jpeg counts as jpg)"
    )
    """Image formats accepted (`jpeg` counts as `jpg`), read from base64 data's media type or a URL's extension;
    any other gets a 400 (`BadRequestError`). A URL with no known extension passes."""
    audio_formats: Annotated[list[str], NoDecode] = Field(["mp3", "wav"], description="audio formats accepted")
    """Audio formats accepted."""
    max_media_bytes: int = Field(
        200 * MB, ge=1, description="largest image, audio or file sent as base64 data, in bytes (decoded)"
    )
    """Largest image, audio or file sent inline, in bytes (the default is 200 MiB): base64 size after decoding,
    computed from its length; nothing is decoded. Larger gets a 400. URLs are not fetched, so their size is not
    checked."""
    check_media: bool = Field(True, description="check image and audio formats and media sizes")
    """Check media formats and sizes; `false` leaves only the model and modality rules."""

    @field_validator("allowed_models", "denied_modalities", "image_formats", "audio_formats", mode="before")
    @classmethod
    def _split_list(cls, value: Any, info: ValidationInfo) -> Any:
        value = _list_value(value, 'a JSON list, e.g. ["gpt-4o*", "claude-*"]')
        if info.field_name == "denied_modalities" and isinstance(value, list):
            value = [item.strip().lower() if isinstance(item, str) else item for item in value]
        return value

    @field_validator("image_formats", "audio_formats")
    @classmethod
    def _known_formats(cls, value: list[str], info: ValidationInfo) -> list[str]:
        from .core.policy import normalize_format

        known = IMAGE_FORMATS if info.field_name == "image_formats" else AUDIO_FORMATS
        out = []
        for item in value:
            name = normalize_format(item)
            if name not in known:
                raise ValueError(f"{item!r} is not a format known here; expected some of {', '.join(known)}")
            out.append(name)
        return out

    @property
    def active(self) -> bool:
        """Some check would run: without one a request is not even scanned."""
        return bool(self.allowed_models or self.denied_modalities or self.check_media)


class EgressSettings(BaseModel):
    """The egress guard: no connection to an LLM provider's host except through the gateway."""

    model_config = ConfigDict(extra="forbid")

    block_unrouted_providers: bool = Field(
        False,
        description="refuse any connection from this process to a known LLM provider host (or a routed"
        " host) that does not go through the gateway: a raw socket, a websocket, an unhooked client, an"
        " unrouted path; with a PermissionError naming the host, and a warning logged",
    )
    """The egress guard (see "Egress guard"): refuse any connection from this process to a known LLM provider host,
    a routed host or an `extra_hosts` host that does not go through the gateway, with a `PermissionError` naming
    the host and this setting, and log it."""
    extra_hosts: Annotated[list[str], NoDecode] = Field(
        [],
        description="more host names the guard refuses, besides the known providers and the routed hosts."
        " Env: comma-separated or a JSON list",
    )
    """More host names the guard refuses."""

    @field_validator("extra_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        return _list_value(value, 'a JSON list of host names, e.g. ["api.example.ai"]')

    @field_validator("extra_hosts")
    @classmethod
    def _check_hosts(cls, value: list[str]) -> list[str]:
        from .core.routes import parse_route_key

        hosts = []
        for item in value:
            host, port = parse_route_key(item)
            if port is not None:
                raise ValueError(f"{item!r}: give a host name without a port, e.g. {host!r}")
            hosts.append(host)
        return hosts


class StateSettings(BaseModel):
    """Fleet mode: limits, holds and node knowledge shared through Redis by every process of an app."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    redis_url: SecretStr | None = Field(
        None,
        description="Redis (or Valkey, or a Redis Cluster node) that every process of the app shares:"
        " redis://, rediss:// (TLS) or unix://. Unset: every limit and all node knowledge stay in the"
        " process. Needs the redis extra",
    )
    """Turns fleet mode on (see "Fleet mode"): `redis://host:6379/0`, `rediss://` for TLS, `unix:///path`; a
    Redis Cluster is found on its own. Every process with the same URL and `namespace` shares the limits, the
    gateway's holds, node ejections, latency estimates and the retry budget. A secret (it may hold a password):
    masked in every log line and in `yibu doctor`. Needs the `redis` extra (`pip install '/path/to/checkout[redis]'`,
    or `pip install redis`)."""
    namespace: str = Field(
        "yibu",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="prefix of every Redis key, so that several apps or environments can share one Redis",
    )
    """The prefix of every key we write in Redis: apps or environments with different namespaces never see each
    other's state. Within a namespace, each gateway key has its own state (keyed by a fingerprint, never the key)."""
    timeout: float = Field(
        0.05,
        gt=0,
        le=5,
        description="seconds any Redis command may take before the process goes on alone (degraded mode)",
    )
    """The longest a call waits on Redis (connect or answer). Past it, the process goes on with its local limits
    and knowledge (degraded mode: one warning, not one per call) until Redis answers again."""
    lease_seconds: float = Field(
        30.0,
        ge=1,
        le=600,
        description="a concurrency slot held by a process that stopped renewing it (it died) comes back"
        " after this long",
    )
    """Concurrency slots are leases a live process renews; a process that dies holding one loses it after this
    long, so no slot is lost to a crash."""

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        """Only Redis URLs; the message never repeats the URL (it may hold a password)."""
        if value is None or not value.get_secret_value().strip():
            return None
        scheme = value.get_secret_value().strip().partition("://")[0].lower()
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"starts with {scheme[:12]!r}: give a redis://, rediss:// (TLS) or unix:// URL,"
                " e.g. redis://localhost:6379/0"
            )
        return SecretStr(value.get_secret_value().strip())

    @property
    def active(self) -> bool:
        return self.redis_url is not None


class HookSwitch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: Switch = Field(True, description="false: this hook is not applied")
    """`false`: not applied, so that library's requests are not routed: they go where the app sends them."""


def _hook(what: str) -> Any:
    return Field(HookSwitch(), description=what)


class HookSettings(BaseModel):
    """Each hook on or off on its own (all on by default), as a tracer's per-integration switches.
    A client library whose hook is off is not routed: its requests go where the app sends them,
    and ``yibu doctor`` says so."""

    model_config = ConfigDict(extra="forbid")

    httpx: HookSwitch = _hook("httpx's transports (HTTPTransport, AsyncHTTPTransport)")
    """The hook on httpx's transports (`HTTPTransport`, `AsyncHTTPTransport`)."""
    httpx2: HookSwitch = _hook("httpx2's transports: the openai (3+) and anthropic (2+) SDKs' default client")
    """The hook on httpx2's transports: the openai (3+) and anthropic (2+) SDKs' default client."""
    openai_aiohttp: HookSwitch = _hook("the openai SDK's aiohttp transport (DefaultAioHttpClient)")
    """The hook on the openai SDK's aiohttp transport (`DefaultAioHttpClient`)."""
    anthropic_aiohttp: HookSwitch = _hook("the anthropic SDK's aiohttp transport (DefaultAioHttpClient)")
    """The hook on the anthropic SDK's aiohttp transport (`DefaultAioHttpClient`)."""
    requests: HookSwitch = _hook("requests (HTTPAdapter.send)")
    """The hook on requests (`HTTPAdapter.send`)."""
    aiohttp: HookSwitch = _hook("aiohttp (ClientSession)")
    """The hook on aiohttp (`ClientSession`)."""
    logging: HookSwitch = _hook("the logging patch that masks keys in every log record (as redaction.enabled)")
    """The logging patch that masks keys in every log record; `redaction.enabled = false` turns it off too."""


class Settings(BaseSettings):
    """Every setting of yibu-middleware. See the README's configuration reference."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
        validate_default=True,
        allow_inf_nan=False,
    )

    enabled: Switch = Field(
        False, description="turn the middleware on at interpreter start: 1/true/yes/on, or 0/false/no/off"
    )
    """Turn the middleware on at interpreter start: `1`/`true`/`yes`/`on`; `0`/`false`/`no`/`off` or empty: off;
    any other word is a settings error. Only the environment variable is read at start; the file cannot switch
    it on."""
    api_key: SecretStr | None = Field(
        None,
        description="the gateway key sent instead of the provider key; required unless keys.pass_through is set",
    )
    """The gateway key, sent instead of the provider key in `Authorization: Bearer`, `x-api-key` and `api-key`.
    Required: unset or empty, the middleware does not start unless `keys.pass_through` is set. Surrounding
    whitespace is dropped; other spaces, control and non-ASCII characters are an error. A secret: shown only
    masked (`sk-...a1b2`)."""
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        [],
        description="more gateway keys, spread over with api_key: comma-separated or a JSON list; an item"
        ' may be "key weight" or {"key": ..., "weight": 2}',
    )
    """More gateway keys, used with `api_key` as one pool: calls are spread over them by weight (smooth weighted
    round robin), and a key the gateway refuses for quota or rejects is benched for `keys.bench_seconds` while
    the call is retried at once with the next key (see "Gateway key pools"). Env: comma-separated or a JSON list;
    an item is a key, `"key weight"` or `{"key": "sk-...", "weight": 2}` (default weight 1). Secrets: shown
    only masked."""
    api_key_file: Path | None = Field(
        None, description="a file holding the gateway key (a mounted secret), re-read when it changes"
    )
    """A file holding the gateway key, such as a Kubernetes or Vault mounted secret; read at start and again
    within a second of any change (a rotated secret takes effect without a restart; a call in flight keeps the key
    it was sent with). Its keys join the pool of `api_key` and `api_keys`. A file that cannot be read, or holds no
    key, is a settings error at start; later, the keys last read stay in use and a warning says why."""
    api_keys_file: Path | None = Field(
        None, description="a file of gateway keys, one a line ('key' or 'key weight'), re-read when it changes"
    )
    """A file of gateway keys, one a line (`key` or `key weight`; blank lines and `#` comments skipped), read and
    re-read as `api_key_file` is, its keys joining the same pool."""
    keys_by_model: Annotated[dict[str, list[SecretStr]], NoDecode] = Field(
        {},
        description="keys per model, for gateways that grant models per key: model pattern = list of keys."
        " Env: JSON object",
    )
    """Keys per model, for gateways that grant models per key: `{"claude-*" = ["sk-...", "sk-..."]}` (TOML) or
    a JSON object, model shell patterns (as sent, after `model_aliases`) to key lists, first match wins. A model
    no pattern matches uses the pool of `api_key`, `api_keys` and the files. Secrets: shown only masked."""
    keys: KeySettings = Field(KeySettings(), description="which key is sent to the gateway")
    # Before the URLs: their validators read it.
    allow_insecure_nodes: Switch = Field(
        False,
        description="allow http:// node URLs on hosts other than this machine (the gateway key then travels in"
        " clear text)",
    )
    """Allow `http://` node URLs on hosts other than this machine. Without it such a URL is a settings error, since
    the gateway key would travel in clear text; `http://` to `localhost`, `127.0.0.0/8` or `[::1]` is always
    allowed."""
    base_url: str = Field(DEFAULT_BASE_URL, description="the gateway's base URL, used when `nodes` is empty")
    """The gateway's base URL, used when `nodes` is empty."""
    nodes: Annotated[list[str], NoDecode] = Field(
        [],
        description="gateway node base URLs; replace base_url. Env: comma-separated; TOML: a list",
    )
    """Several gateway node base URLs; when set they replace `base_url`. TOML: `nodes = ["https://a/v1",
    "https://b/v1"]`. Requests are spread over them by observed latency and load (see "Choosing a node"); a node
    that refuses the connection is skipped at once. A node URL (here, in `base_url`, `pin` and `node_weights`)
    takes no `user:password@` (put the key in `YIBU_API_KEY`; the error shows the URL masked), no query, and
    only ports 1-65535 and valid host names (IDNA hosts in their `xn--` form)."""
    routes: Annotated[dict[str, RouteSpec], NoDecode] = Field(
        DEFAULT_ROUTES,
        description=(
            "provider hosts that are redirected, merged onto the defaults: host = 'openai' | 'anthropic' |"
            " {provider = ..., strip_prefix = ...} | false (to stop redirecting a default host). Env: JSON object"
        ),
    )
    """Which provider hosts are redirected, merged onto the defaults. A key is a host (matched on any port) or
    `host:port` (that port only; `[::1]:8000` for IPv6); hosts compare as DNS compares them (case, a trailing
    dot, IDNA), and a key with a scheme or path (`https://api.x.com/v1`) is a settings error. A value is
    `"openai"` (also for any OpenAI-compatible API), `"anthropic"`, a table `{provider = "openai", strip_prefix
    = "/openai/v1", paths = ["/rerank"]}`, or `false` to stop redirecting a default host. `strip_prefix`
    (default `/v1`) is removed from the path before the rest is joined onto the node URL. Only the provider's
    model API paths are redirected (see "Which requests are routed"); `paths` adds more, as prefixes of the path
    after `strip_prefix` (`["/"]`: every path)."""
    model_aliases: Annotated[dict[str, str], NoDecode] = Field(
        {},
        description="rewrite `model` in JSON request bodies: old name = new name. Env: JSON object",
    )
    """Rewrite `model` in JSON request bodies: `[model_aliases]` with `"gpt-4" = "gpt-5.2"` moves an app from an
    old model to a new one without a code change."""
    fallbacks: Annotated[dict[str, list[str]], NoDecode] = Field(
        {},
        description="models to try, in order, when a call's model is refused or exhausted: model pattern ="
        ' list of models, e.g. {"gpt-5.2": ["gpt-5.1", "gpt-4.1"]}. Env: JSON object',
    )
    """Models to try, in order, when a call's model is refused or exhausted (see "Model fallbacks"):
    `{"gpt-5.2" = ["gpt-5.1", "gpt-4.1"]}` in TOML, a JSON object in the environment. Keys are the model as
    sent (after `model_aliases`), shell patterns allowed (`"gpt-5*"`), first match wins. The fallback is the same
    request with only `model` changed, within the call's deadline and retry budget."""
    context_fallbacks: Annotated[dict[str, list[str]], NoDecode] = Field(
        {},
        description="models with a larger context window to try when a request does not fit: model pattern ="
        " list of models. Env: JSON object",
    )
    """Models to try when a request does not fit the model's context window (`context_length_exceeded` and the
    gateways' equivalents), in the form of `fallbacks`. Only these: a model from `fallbacks` may well be
    smaller."""
    fallback_on: Annotated[list[FallbackTrigger], NoDecode] = Field(
        ["model_refused", "exhausted", "context_length"],
        description="what makes a call fall back: 'model_refused', 'exhausted', 'context_length',"
        " 'content_policy'. Env: comma-separated or a JSON list",
    )
    """What makes a call fall back: `model_refused` (the model is unknown, `model_not_found`, or not allowed for
    the key, a 403), `exhausted` (every node tried failed with a 429, a 5xx or no answer, within the deadline),
    `context_length` (only to `context_fallbacks`), `content_policy` (a content filter's refusal; off unless
    listed). Never any other 400, 401 or 422."""
    prices: Annotated[dict[str, ModelPrice], NoDecode] = Field(
        {},
        description='prices per model (pattern), USD per million tokens: {"gpt-5.2": {"input_per_mtok": 1.25,'
        ' "output_per_mtok": 10}}. Env: JSON object',
    )
    """The gateway's own prices, USD per million tokens, by model as sent (shell patterns allowed, first match),
    over `genai-prices`' data: `{"gpt-5.2": {"input_per_mtok": 1.25, "cached_input_per_mtok": 0.125,
    "output_per_mtok": 10.0}}`. Setting one turns spend tracking on."""
    budgets: Annotated[dict[Period, float], NoDecode] = Field(
        {}, description='USD per calendar period (UTC): {"day": 20, "month": 400}; periods hour, day, month'
    )
    """Spend budgets in USD per calendar period in UTC, `{"day": 20, "month": 400}` (periods `hour`, `day`,
    `month`). Once a period's spend reaches one, calls are answered before sending with a 429 in the provider's
    format, `x-should-retry: false`, naming the budget and when it resets."""
    budgets_per_model: Annotated[dict[str, dict[Period, float]], NoDecode] = Field(
        {}, description='budgets of one model (pattern): {"gpt-5*": {"day": 5}}. Env: JSON object'
    )
    """The same per model, by shell pattern (first match; the spend of every model it matches counts):
    `{"gpt-5*": {"day": 5}}`."""
    spend: SpendSettings = Field(SpendSettings(), description="spend tracking and its local ledger")
    node_weights: Annotated[dict[str, float], NoDecode] = Field(
        {}, description="relative share of traffic per node URL (default 1). Env: JSON object"
    )
    """Relative share of traffic per node URL, e.g. `{"https://hk.gw.example/v1" = 2}` in TOML; a node not listed
    weighs `1`."""
    pin: str | None = Field(
        None, description="a node URL that takes all traffic while it is healthy; the others are its fallback"
    )
    """A node URL (one of `nodes`) that takes all traffic while it is healthy; the others are only its fallback
    (the gateway's "manual node switch")."""
    retry: RetrySettings = Field(RetrySettings(), description="retries and failover")
    ejection: EjectionSettings = Field(EjectionSettings(), description="passive outlier ejection")
    health_check: HealthCheckSettings = Field(HealthCheckSettings(), description="active health checks")
    stream: StreamSettings = Field(StreamSettings(), description="streamed responses")
    hedge: HedgeSettings = Field(HedgeSettings(), description="hedged requests (off by default)")
    affinity: AffinitySettings = Field(
        AffinitySettings(), description="context affinity: a conversation's calls to the node holding its prefix"
    )
    redaction: RedactionSettings = Field(RedactionSettings(), description="masking keys in logs")
    limits: LimitSettings = Field(LimitSettings(), description="client-side limits (off until a limit is set)")
    policy: PolicySettings = Field(PolicySettings(), description="client-side checks before sending")
    hooks: HookSettings = Field(HookSettings(), description="each client-library hook, and the logging patch")
    state: StateSettings = Field(
        StateSettings(), description="fleet mode: state shared through Redis by every process (off until redis_url)"
    )
    egress: EgressSettings = Field(
        EgressSettings(), description="the egress guard: refuse provider traffic that bypasses the gateway"
    )
    log: Literal["off", "warning", "info", "debug"] = Field(
        "off",
        description="print the library's own log lines (one per redirected call at 'info') to stderr;"
        " 'off' leaves it to the app's logging configuration",
    )
    """`info` prints one line per redirected call to stderr (`debug`, `warning` also accepted), once: when the
    app's own handlers already write the library's records to stderr (e.g. `logging.basicConfig`), they print it
    and the library's handler stands aside. The `yibu_middleware` logger still propagates, so the app's other
    handlers (a file) get the lines too. `off` leaves that logger to the app's own logging configuration."""

    # Plain defaults, not default_factory=list/dict: pydantic copies mutable defaults
    # anyway, and inspecting a builtin factory's signature costs ~5 ms at start-up.
    _origins: dict[str, str] = PrivateAttr({})
    _file: SettingsFile | None = PrivateAttr(None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlFileSource(settings_cls, _active_file))

    @field_validator("api_key", mode="before")
    @classmethod
    def _clean_key(cls, value: Any) -> Any:
        """Whitespace around a key (a mounted secret's newline) is dropped; anything else that
        cannot go into a header is refused, naming the character but never the key."""
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if not isinstance(value, str):
            return value
        value = value.strip()
        if not value:
            return None  # empty is unset: refused later unless keys.pass_through is set
        for position, char in enumerate(value, 1):
            if not "!" <= char <= "~":
                kind = "a space" if char.isspace() else "a control" if char.isascii() else "a non-ASCII"
                raise ValueError(
                    f"the key holds {kind} character (U+{ord(char):04X}) at position {position}; a key is"
                    " printable ASCII with no spaces. Copy it again from the gateway's console"
                )
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        """A comma-separated or JSON list; an item ``"key weight"`` or ``{"key": ..., "weight": ...}``,
        each checked as a key (the error names the item's place, never the key)."""
        return _key_lines(value, "api_keys")

    @field_validator("keys_by_model", mode="before")
    @classmethod
    def _parse_keys_by_model(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = _json_value(value, 'a JSON object of model pattern = list of keys, e.g. {"claude-*": ["sk-..."]}')
        if not isinstance(value, Mapping):
            raise ValueError("expected a table of model pattern = list of keys")
        out = {}
        for pattern, keys in value.items():
            if not str(pattern).strip():
                raise ValueError("a model pattern in keys_by_model is empty")
            lines = _key_lines(keys, f"keys_by_model[{pattern!r}]")
            if not lines:
                raise ValueError(f"keys_by_model[{pattern!r}] holds no key")
            out[str(pattern)] = lines
        return out

    @field_validator("api_key_file", "api_keys_file")
    @classmethod
    def _check_key_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        from .keyfiles import read_key_file

        read_key_file(value.expanduser(), str(info.field_name))  # ValueError when unreadable or empty
        return value.expanduser()

    @field_validator("fallbacks", "context_fallbacks", mode="before")
    @classmethod
    def _parse_fallbacks(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = _json_value(value, 'a JSON object of model pattern = list of models, e.g. {"gpt-5.2": ["gpt-5.1"]}')
        if isinstance(value, Mapping):
            value = {key: _list_value(models, "a JSON list of models") for key, models in value.items()}
            for key, models in value.items():
                if not str(key).strip():
                    raise ValueError("a model pattern is empty")
                if isinstance(models, list) and (not models or any(not str(m).strip() for m in models)):
                    raise ValueError(f"{key!r}: expected a list of model names, none empty")
        return value

    @field_validator("prices", "budgets", "budgets_per_model", mode="before")
    @classmethod
    def _parse_spend_tables(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            value = _json_value(value, _TABLE_FORMS[str(info.field_name)])
        return value

    @field_validator("budgets")
    @classmethod
    def _positive_budgets(cls, value: dict[str, float]) -> dict[str, float]:
        if any(not limit > 0 for limit in value.values()):
            raise ValueError("a budget must be a number of USD greater than 0")
        return value

    @field_validator("budgets_per_model")
    @classmethod
    def _positive_model_budgets(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for pattern, limits in value.items():
            if not pattern.strip():
                raise ValueError("a model pattern in budgets_per_model is empty")
            if any(not limit > 0 for limit in limits.values()):
                raise ValueError(f"{pattern!r}: a budget must be a number of USD greater than 0")
        return value

    @property
    def spend_active(self) -> bool:
        """Calls are priced: a price, a budget, the ledger or spend.track is set."""
        spend = self.spend
        return bool(self.prices or self.budgets or self.budgets_per_model or spend.track or spend.ledger)

    @field_validator("fallback_on", mode="before")
    @classmethod
    def _split_triggers(cls, value: Any) -> Any:
        return _list_value(value, 'a JSON list, e.g. ["model_refused", "exhausted"]')

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str, info: ValidationInfo) -> str:
        return _node_url(value, info.data.get("allow_insecure_nodes", False))

    @field_validator("nodes", mode="before")
    @classmethod
    def _split_nodes(cls, value: Any) -> Any:
        return _list_value(value, "a JSON list of URLs")

    @field_validator("nodes")
    @classmethod
    def _check_nodes(cls, value: list[str], info: ValidationInfo) -> list[str]:
        urls = [_node_url(url, info.data.get("allow_insecure_nodes", False)) for url in value]
        if len(set(urls)) != len(urls):
            raise ValueError("the same node URL is listed twice")
        return urls

    @field_validator("routes", mode="before")
    @classmethod
    def _merge_routes(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = _json_value(value, 'a JSON object, e.g. {"api.deepseek.com": "openai"}')
        if not isinstance(value, Mapping):
            raise ValueError("expected a table of host = provider")
        from .core.routes import parse_route_key, route_key

        merged: dict[str, Any] = dict(DEFAULT_ROUTES)
        for key, spec in value.items():
            # Keys are kept as DNS compares hosts (case, trailing dot, IDNA): one spelling each.
            host = route_key(*parse_route_key(key))
            if spec is False:
                merged.pop(host, None)
            elif isinstance(spec, str):
                merged[host] = {"provider": spec}
            else:
                merged[host] = spec
        return merged

    @field_validator("node_weights")
    @classmethod
    def _check_weights(cls, value: dict[str, float]) -> dict[str, float]:
        if any(weight <= 0 for weight in value.values()):
            raise ValueError("weights must be greater than 0")
        # Insecure or not was decided for the node itself; each weighted URL must be one of them.
        return {_node_url(url, allow_insecure=True): weight for url, weight in value.items()}

    @field_validator("pin")
    @classmethod
    def _check_pin(cls, value: str | None) -> str | None:
        return _node_url(value, allow_insecure=True) if value else None

    @field_validator("model_aliases", "node_weights", mode="before")
    @classmethod
    def _parse_tables(cls, value: Any, info: ValidationInfo) -> Any:
        """Tables come from the environment as JSON objects."""
        if isinstance(value, str):
            return _json_value(value, _TABLE_FORMS[str(info.field_name)])
        return value

    @property
    def gateway_nodes(self) -> list[str]:
        """The node base URLs in use: ``nodes`` when set, else ``base_url`` alone."""
        return list(self.nodes) or [self.base_url]

    def origin(self, field: str) -> str:
        """Where a setting's value came from, for ``yibu doctor`` and errors; ``group.name`` for nested ones."""
        if "." in field:
            top = self._origins.get(field.split(".")[0], "default")
            if top == "install() argument":
                return top
            return _origin_of(field.split("."), self._origins, self._file, nested_default="default")
        return self._origins.get(field, "default")

    def __repr_args__(self) -> Any:
        # The gateway key is shown masked, never in full, whatever repr() is used for.
        for name, value in super().__repr_args__():
            if name == "api_key" and value is not None:
                value = mask(value.get_secret_value())
            elif name == "api_keys":
                value = [_masked_key_line(item) for item in value]
            elif name == "keys_by_model":
                value = {pattern: [_masked_key_line(item) for item in items] for pattern, items in value.items()}
            yield name, value


def _masked_key_line(line: SecretStr) -> str:
    """A ``"key weight"`` list item with its key masked."""
    key, _, weight = line.get_secret_value().partition(" ")
    return mask(key) + (f" {weight}" if weight else "")


def _key_lines(value: Any, setting: str) -> Any:
    """Keys as a list of ``"key"`` / ``"key weight"`` strings, each checked (``core.keys.parse_key_line``)."""
    from .core.keys import parse_key_line

    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, str):
        value = _list_value(value, 'a JSON list of keys, e.g. ["sk-...", {"key": "sk-...", "weight": 2}]')
    if not isinstance(value, list | tuple):
        raise ValueError("expected a list of keys")
    lines = []
    for index, item in enumerate(value):
        where = f"{setting}[{index}]"
        if isinstance(item, SecretStr):
            item = item.get_secret_value()
        if isinstance(item, Mapping):
            unknown = set(item) - {"key", "weight"}
            if unknown or not isinstance(item.get("key"), str):
                raise ValueError(f'{where}: expected {{"key": "sk-...", "weight": 2}} (weight optional)')
            weight = item.get("weight", 1)
            if isinstance(weight, bool) or not isinstance(weight, int | float):
                raise ValueError(f"{where}: the weight must be a number greater than 0")
            item = f"{item['key'].strip()} {weight}"
        if not isinstance(item, str):
            raise ValueError(f"{where}: expected a key (a string)")
        if parse_key_line(item, where) is not None:  # ValueError naming the place on a malformed key
            lines.append(item.strip())
    return lines


_TABLE_FORMS = {
    "prices": 'a JSON object of model = price, e.g. {"gpt-5.2": {"input_per_mtok": 1.25, "output_per_mtok": 10}}',
    "budgets": 'a JSON object of period = USD, e.g. {"day": 20, "month": 400}',
    "budgets_per_model": 'a JSON object of model pattern = budgets, e.g. {"gpt-5*": {"day": 5}}',
    "model_aliases": 'a JSON object of old = new model names, e.g. {"gpt-4": "gpt-5.2"}',
    "node_weights": 'a JSON object of node URL = weight, e.g. {"https://a/v1": 2}',
}


_EXPECTED_URL = "expected an http(s) URL such as https://api.yibuapi.com/v1"
_HOST_CHARS = re.compile(r"[a-z0-9_.-]+")


def _node_url(value: str, allow_insecure: bool) -> str:
    """A gateway node's base URL, checked so that every one accepted can be sent to as is."""
    url = value.strip()
    if any(not "!" <= char <= "~" for char in url):
        raise ValueError(f"{_EXPECTED_URL}, with no spaces, control or non-ASCII characters (IDNA hosts as xn--)")
    if "@" in url:
        # The sender would drop it (the key travels in its own header): say so rather than ignore it.
        raise ValueError(
            "a node URL takes no user name or password before its host; put the gateway key in YIBU_API_KEY"
            " (api_key) instead, and it is sent in the Authorization header"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # a bad port or IPv6 literal
        detail = "the port must be a number from 1 to 65535" if "port" in str(exc).lower() else str(exc)
        raise ValueError(f"{_EXPECTED_URL} ({detail})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(_EXPECTED_URL)
    if port == 0:
        raise ValueError(f"{_EXPECTED_URL} (the port must be a number from 1 to 65535)")
    host = parts.hostname.rstrip(".")
    if ":" not in host:  # a name or IPv4 address (an IPv6 literal was checked by urlsplit)
        try:
            ascii_host = host.encode("idna").decode("ascii")  # empty or over-long labels fail here
        except UnicodeError:
            ascii_host = ""
        if not _HOST_CHARS.fullmatch(ascii_host):
            raise ValueError(f"{_EXPECTED_URL} ({parts.hostname!r} is not a valid host name)")
    if parts.query or parts.fragment:
        raise ValueError("a node URL takes no query or fragment")
    if parts.scheme == "http" and not allow_insecure and not _is_loopback(host):
        raise ValueError(
            f"http:// to {host}, which is not this machine, would send the gateway key in clear text; use"
            " https://, or allow it explicitly with allow_insecure_nodes = true (YIBU_ALLOW_INSECURE_NODES=1)"
        )
    return url.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    import ipaddress  # only for an http:// node: start-up is budgeted

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _list_value(value: Any, expected: str) -> Any:
    """A list setting as the environment gives it: comma-separated, or a JSON list (``expected``
    names the JSON form for the error). Anything else (a TOML list) is left to validation."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        return _json_value(text, expected)
    return [part.strip() for part in text.split(",") if part.strip()]


def _json_value(text: str, expected: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno}); expected {expected}") from None
    except RecursionError:
        value = None
        nested_too_deeply = True
    else:
        nested_too_deeply = _too_deep(value)
    if nested_too_deeply:
        raise ValueError(f"JSON nested more than {MAX_NESTING} levels deep; expected {expected}")
    return value


def _too_deep(value: Any, limit: int = MAX_NESTING) -> bool:
    """Whether lists and tables nest deeper than ``limit`` (walked without recursion)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


# --- the settings file -------------------------------------------------------------------------


class SettingsFile(NamedTuple):
    path: Path
    section: str | None  # "tool.yibu" for pyproject.toml, None for a whole yibu.toml
    data: dict[str, Any]

    @property
    def label(self) -> str:
        return f"file {self.path} [{self.section}]" if self.section else f"file {self.path}"


def find_settings_file(cwd: Path | None = None) -> SettingsFile | None:
    """Locate and parse the settings file; ``None`` when there is none."""
    cwd = cwd or Path.cwd()
    named = os.environ.get(CONFIG_ENV)
    if named:
        path = Path(named).expanduser()
        if path.is_dir():
            raise _settings_error([f"- {CONFIG_ENV}={named} is a folder, not a file. Point it at a TOML file."])
        if path.exists() and not path.is_file():
            raise _settings_error([f"- {CONFIG_ENV}={named} is not a regular file. Point it at a TOML file."])
        if not path.is_file():
            raise _settings_error(
                [f"- {CONFIG_ENV}={named}: no such file. Point {CONFIG_ENV} at a TOML settings file, or unset it."]
            )
        return SettingsFile(path, None, _read_toml(path))
    own = cwd / "yibu.toml"
    if own.is_file() or own.is_symlink():  # a link to a missing mounted file is an error, not "no file"
        return SettingsFile(own, None, _read_toml(own))
    pyproject = cwd / "pyproject.toml"
    if pyproject.is_file():
        tool = _read_toml(pyproject).get("tool", {})
        section = tool.get("yibu") if isinstance(tool, dict) else None
        if isinstance(section, dict):
            return SettingsFile(pyproject, "tool.yibu", section)
        if section is not None:
            raise _settings_error(
                [f"- settings file {pyproject}: tool.yibu must be a table ([tool.yibu] and settings under it)."]
            )
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib  # only when there is a file: start-up is budgeted

    problem = ""
    try:
        with path.open("rb") as stream:
            data = tomllib.load(stream)
    except tomllib.TOMLDecodeError as exc:
        problem = (
            f"is not valid TOML: {exc}. Expected lines such as"
            ' nodes = ["https://api.yibuapi.com/v1"]; see the README\'s configuration reference.'
        )
    except UnicodeDecodeError as exc:
        problem = f"is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); save it as UTF-8."
    except RecursionError:
        problem = f"is nested more than {MAX_NESTING} levels deep."
    except OSError as exc:
        problem = f"cannot be read: {exc.strerror or exc}."
    else:
        if not _too_deep(data):
            return data
        problem = f"is nested more than {MAX_NESTING} levels deep."
    raise _settings_error([f"- settings file {path} {problem}"])


# The file found by load_settings() for the Settings() call in progress; pydantic-settings
# builds sources from the class, so the file travels to _TomlFileSource through here.
_active_file: SettingsFile | None = None


class _TomlFileSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], file: SettingsFile | None) -> None:
        super().__init__(settings_cls)
        self._data = dict(file.data) if file else {}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


# --- loading -------------------------------------------------------------------------------------


def load_settings(overrides: Mapping[str, Any] | None = None, cwd: Path | None = None) -> Settings:
    """Build the settings from every source; raise one ConfigError listing all problems.

    A missing gateway key is not one of them (``yibu doctor`` still shows such settings):
    :func:`gateway_key_of` refuses it when the middleware is about to start.
    """
    global _active_file
    overrides = dict(overrides or {})
    file = find_settings_file(cwd)
    origins = _origins(overrides, file)
    problems = _misspelt_env_names()
    # A JSON value nested deep enough to overflow the parser is reported before pydantic-settings
    # parses it (its own json.loads would raise RecursionError).
    unparsable = _env_nested_too_deeply()
    problems += unparsable
    settings: Settings | None = None
    if not unparsable:
        _active_file = file
        try:
            settings = Settings(**overrides)
        except ValidationError as exc:
            problems += _error_lines(exc, origins, file)
        except SettingsError as exc:  # a section given whole from the environment, as JSON that is not
            problems.append(_section_json_line(exc, origins))
        finally:
            _active_file = None
    if settings is None or problems:
        raise _settings_error(problems)
    settings._origins = origins
    settings._file = file
    problems = _consistency_problems(settings)
    if problems:
        raise _settings_error(problems)
    return settings


def gateway_key_of(settings: Settings) -> bytes | None:
    """The key sent to the gateway; None only when ``keys.pass_through`` asks for callers' keys.

    Without a key and without that explicit choice the middleware does not start (fail closed):
    the app's own provider keys would otherwise go to the gateway, a third party.
    """
    if settings.api_key is not None:
        return settings.api_key.get_secret_value().encode("ascii")  # ASCII: checked at load
    pooled = default_keys_of(settings)
    if pooled:
        return pooled[0].value
    if settings.keys_by_model:
        raise _settings_error(
            [
                "- keys_by_model is set, but no key is left for the models it does not match: set api_key,"
                " api_keys, api_key_file or api_keys_file too (the default pool)."
            ]
        )
    if settings.keys.pass_through:
        return None
    origin = settings.origin("api_key")
    state = "is not set" if origin == "default" else f"is empty (from {origin})"
    raise _settings_error(
        [
            f"- api_key {state}: there is no gateway key, so the app's own provider keys would be sent to the"
            " gateway. Set YIBU_API_KEY to the gateway key, or, if the app's own keys are gateway keys already,"
            " set keys.pass_through = true (YIBU_KEYS__PASS_THROUGH=1)."
        ]
    )


def default_keys_of(settings: Settings, with_files: bool = True) -> list[GatewayKey]:
    """The default pool as configured: ``api_key``, ``api_keys``, then (``with_files``) the key
    files' keys as they read now (``keyfiles.py`` re-reads them when they change)."""
    from .core.keys import make_key, parse_key_line
    from .keyfiles import read_key_file

    keys = []
    if settings.api_key is not None:
        keys.append(make_key(settings.api_key.get_secret_value(), 1.0, "api_key"))
    for index, secret in enumerate(settings.api_keys):
        key = parse_key_line(secret.get_secret_value(), f"api_keys[{index}]")
        if key is not None:
            keys.append(key)
    for field in ("api_key_file", "api_keys_file") if with_files else ():
        path = getattr(settings, field)
        if path is not None:
            keys.extend(read_key_file(path, field))
    return _unique(keys)


def model_keys(settings: Settings) -> dict[str, list[GatewayKey]]:
    """``keys_by_model`` as pools: pattern -> its keys."""
    from .core.keys import parse_key_line

    pools = {}
    for pattern, secrets in settings.keys_by_model.items():
        keys = [
            parse_key_line(secret.get_secret_value(), f"keys_by_model[{pattern!r}][{index}]")
            for index, secret in enumerate(secrets)
        ]
        pools[pattern] = _unique([key for key in keys if key is not None])
    return pools


def _unique(keys: list[GatewayKey]) -> list[GatewayKey]:
    """A key listed twice is one key (the first place it is listed, its weight)."""
    seen: set[bytes] = set()
    out = []
    for key in keys:
        if key.value not in seen:
            seen.add(key.value)
            out.append(key)
    return out


def _env_names() -> dict[str, str]:
    """Our environment variables, by lower-cased name without the prefix."""
    return {
        name[len(ENV_PREFIX) :].lower(): name
        for name in os.environ
        if name.upper().startswith(ENV_PREFIX) and name.upper() != CONFIG_ENV
    }


def _origins(overrides: Mapping[str, Any], file: SettingsFile | None) -> dict[str, str]:
    env = _env_names()
    origins: dict[str, str] = {}
    for field in Settings.model_fields:
        if field in overrides:
            origins[field] = "install() argument"
        elif field in env:
            origins[field] = f"env {env[field]}"
        elif nested := sorted(name for key, name in env.items() if key.startswith(field + "__")):
            origins[field] = "env " + ", ".join(nested)
        elif file is not None and field in file.data:
            origins[field] = file.label
    if file is not None:
        for unknown in set(file.data) - set(Settings.model_fields):
            origins[unknown] = file.label
    return origins


# How alike (difflib's ratio) an unknown YIBU_* name must be to a setting's to count as its
# misspelling: YIBU_API_KYE (0.86), YIBU_NODE (0.89), YIBU_LIMIT (0.91) are; YIBU_REGION
# (0.67 to 'redaction') is not.
MISSPELLING_CUTOFF = 0.75


def _unknown_env() -> tuple[list[str], list[str]]:
    """``YIBU_*`` variables that match no setting: (close to one, with a suggestion; far off)."""
    fields = list(Settings.model_fields)
    close, far = [], []
    for key, name in sorted(_env_names().items()):
        top = key.split("__", 1)[0]
        if top not in fields:
            import difflib  # rarely needed: kept off the start-up path

            matches = difflib.get_close_matches(top, fields, n=2, cutoff=MISSPELLING_CUTOFF)
            if matches:
                suggestion = " or ".join(ENV_PREFIX + match.upper() for match in matches)
                close.append(f"{name} (did you mean {suggestion}?)")
            else:
                far.append(name)
    return close, far


def _misspelt_env_names() -> list[str]:
    return [f"- {name}: no such setting; it would be ignored. Rename it, or unset it." for name in _unknown_env()[0]]


def unknown_env_names() -> list[str]:
    """``YIBU_*`` variables unlike any setting, to warn about; raises ConfigError when one is a
    close misspelling of a setting (``YIBU_API_KYE``), which must not be ignored."""
    close, far = _unknown_env()
    if close:
        raise _settings_error(_misspelt_env_names())
    return far


def _env_nested_too_deeply() -> list[str]:
    problems = []
    for name, value in os.environ.items():
        if name.upper().startswith(ENV_PREFIX) and value.lstrip()[:1] in ("[", "{"):
            try:
                too_deep = _too_deep(json.loads(value))
            except RecursionError:
                too_deep = True
            except ValueError:
                continue  # not JSON at all: the setting's own check says so
            if too_deep:
                setting = name[len(ENV_PREFIX) :].lower().replace("__", ".")
                problems.append(f"- {setting} (from env {name}): JSON nested more than {MAX_NESTING} levels deep.")
    return problems


def _section_json_line(exc: SettingsError, origins: Mapping[str, str]) -> str:
    """pydantic-settings parses a section (or a list in one) given in the environment as JSON."""
    found = re.search(r'field "(\w+)"', str(exc))
    field = found.group(1) if found else "settings"
    name = ENV_PREFIX + field.upper()
    return (
        f"- {field} (from {origins.get(field, 'env ' + name)}): not valid JSON; expected a JSON object of the"
        f" section's fields (or a JSON list for a list), or each field by itself as {name}__<FIELD>"
    )


def _error_lines(exc: ValidationError, origins: Mapping[str, str], file: SettingsFile | None) -> list[str]:
    lines = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]] or ["settings"]
        dotted = ".".join(loc)
        source = _origin_of(loc, origins, file)
        if error["type"] == "extra_forbidden":
            lines.append(f"- unknown setting '{dotted}' (in {source}){_suggest(loc)}")
            continue
        # Masked before it may be cut short, so that no part of a secret survives the cut.
        message = mask_userinfo(redact_text(error["msg"].removeprefix("Value error, ")))
        if len(message) > 300:  # some messages quote the value: keep the report readable
            message = message[:297] + "..."
        shown = "" if loc[0] in SECRET_FIELDS else f" = {_shown(error.get('input'))}"
        expected = _expected(loc)
        lines.append(
            f"- {dotted}{shown} (from {source}): {message}" + (f". [{dotted}: {expected}]" if expected else "")
        )
    return lines


def _settings_error(lines: list[str]) -> ConfigError:
    """One error for every problem found; secrets (keys, a URL's user:password) masked."""
    text = "\n".join(lines)
    return ConfigError(
        "invalid yibu-middleware settings:\n"
        + mask_userinfo(redact_text(text))
        + "\nFix the setting(s) above (see the README's configuration reference),"
        " or unset YIBU_ENABLED to run the app without the middleware."
    )


def _origin_of(
    loc: list[str], origins: Mapping[str, str], file: SettingsFile | None, nested_default: str | None = None
) -> str:
    """The most specific source of one (possibly nested) setting."""
    env_name = ENV_PREFIX + "__".join(loc).upper()
    if len(loc) > 1 and env_name in {name.upper() for name in os.environ}:
        return f"env {env_name}"
    if file is not None and len(loc) > 1:
        node: Any = file.data
        for part in loc:
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            return file.label
    if nested_default is not None and len(loc) > 1:
        return nested_default
    return origins.get(loc[0], "default") if loc else "default"


def _suggest(loc: list[str]) -> str:
    import difflib

    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)
    return f"; did you mean '{close[0]}'?" if close else f"; known settings: {', '.join(model.model_fields)}"


def _expected(loc: list[str]) -> str:
    model: type[BaseModel] = Settings
    info: FieldInfo | None = None
    for part in loc:
        fields = model.model_fields
        if part not in fields:
            break
        info = fields[part]
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            model = info.annotation
    return info.description or "" if info else ""


def _shown(value: Any) -> str:
    import reprlib  # only on an error

    shape = reprlib.Repr()
    shape.maxlevel, shape.maxstring, shape.maxother = 3, 1000, 1000
    # Masked before it is cut short, so that no part of a secret survives the cut.
    text = mask_userinfo(redact_text(shape.repr(value)))
    return text if len(text) <= 80 else text[:77] + "..."


def _consistency_problems(settings: Settings) -> list[str]:
    """Rules that span several settings: a node must never be a redirected host; a pinned
    or weighted node must be one of the nodes."""
    problems = []
    nodes = settings.gateway_nodes
    for setting, urls in (("pin", [settings.pin] if settings.pin else []), ("node_weights", settings.node_weights)):
        for url in urls:
            if url not in nodes:
                problems.append(
                    f"- {setting} (from {settings.origin(setting)}): {url} is not one of the gateway nodes"
                    f" ({', '.join(nodes)}). Use a URL exactly as listed in nodes."
                )
    from .core.routes import DEFAULT_PORTS, canonical_host, route_key

    for url in settings.gateway_nodes:
        parts = urlsplit(url)
        host = canonical_host(parts.hostname or "")
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
        if route_key(host, None) in settings.routes or route_key(host, port) in settings.routes:
            setting = "nodes" if settings.nodes else "base_url"
            problems.append(
                f"- {setting} (from {settings.origin(setting)}): {url} is on host {host}, which is itself"
                " redirected (routes); requests would loop. Use the gateway's URL."
            )
    return problems
