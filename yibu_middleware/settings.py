"""Settings: what the user configured, where each value came from, and clear errors.

Sources, highest first: arguments to ``install()``, environment variables (``YIBU_``
prefix, ``__`` between nested fields), the TOML file named by ``YIBU_CONFIG``, else
``./yibu.toml``, else ``[tool.yibu]`` in ``./pyproject.toml``; then the defaults.

pydantic-settings does the layering and the environment parsing; this module adds
what it lacks for a library that runs inside someone else's app: every bad value is
reported with the place it came from and the form expected, secrets masked, and the
whole report raised as one :class:`~yibu_middleware.errors.ConfigError`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
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

from .core.redact import mask, redact_text
from .errors import ConfigError

ENV_PREFIX = "YIBU_"
CONFIG_ENV = "YIBU_CONFIG"
DEFAULT_BASE_URL = "https://api.yibuapi.com/v1"

Provider = Literal["openai", "anthropic"]


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


DEFAULT_ROUTES: dict[str, RouteSpec] = {
    "api.openai.com": RouteSpec(provider="openai"),
    "api.anthropic.com": RouteSpec(provider="anthropic"),
}


class RetrySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(3, ge=1, le=10, description="attempts per call, the first included, across all nodes")
    backoff_base: float = Field(
        0.1, gt=0, description="seconds; a retry waits only when every node was tried: full jitter up to base*2^n"
    )
    backoff_max: float = Field(2.0, gt=0, description="seconds; the longest such wait")
    max_retry_after: float = Field(
        20.0, ge=0, description="seconds; a 429 asking to wait longer is handed back to the caller instead"
    )
    budget_ratio: float = Field(
        0.2, ge=0, le=1, description="retries may be at most this share of the requests of the last 10 s"
    )
    budget_floor: int = Field(10, ge=0, description="...or this many retries per 10 s, whichever is more")


class EjectionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    consecutive_failures: int = Field(5, ge=1, description="failures in a row that take a node out")
    base_seconds: float = Field(30.0, gt=0, description="first time out; grows with each ejection (+-20 % jitter)")
    max_seconds: float = Field(300.0, gt=0, description="the longest time out")


class HealthCheckSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    interval: float = Field(
        0.0, ge=0, description="seconds between active checks of ejected nodes (GET <node>/models); 0: off"
    )
    timeout: float = Field(2.0, gt=0, description="seconds a check may take")


class StreamSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    first_token_timeout: float | None = Field(
        None,
        gt=0,
        description="seconds a stream may take to its first content (also the longest silence between"
        " two chunks) before it is retried on another node; unset: no limit",
    )


class HedgeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False,
        description="after the observed p95 time to an answer, send a second attempt to another node;"
        " the first answer wins and the other is cancelled",
    )
    max_share: float = Field(0.05, gt=0, le=0.5, description="hedges stay under this share of requests")
    min_samples: int = Field(20, ge=1, description="answers observed before the first hedge")


class RedactionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="mask keys in every log record of the process; turned off only explicitly")
    extra_headers: list[str] = Field([], description="more header names whose values are secret")
    extra_patterns: list[str] = Field([], description="more regular expressions for secrets")

    @field_validator("extra_patterns")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        import re

        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regular expression ({exc})") from None
        return value


class ModelLimits(BaseModel):
    """Client-side limits of one model (``limits.per_model``), on top of the global ones."""

    model_config = ConfigDict(extra="forbid")

    max_concurrent: int | None = Field(None, ge=1, description="calls in flight at once (a request pool); unset: none")
    requests_per_second: float | None = Field(
        None, gt=0, description="calls started per second, evenly spaced (no burst); unset: no limit"
    )
    tokens_per_minute: int | None = Field(
        None,
        ge=1,
        description="tokens per sliding minute: estimated from the request while it is out, then the"
        " usage the gateway returned; unset: no limit",
    )

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
    per_model: Annotated[dict[str, ModelLimits], NoDecode] = Field(
        {},
        description="limits of one model (as sent, after model_aliases), on top of the global ones:"
        ' "gpt-4o" = {max_concurrent = 2}. Env: JSON object',
    )
    follow_gateway_headers: bool = Field(
        True,
        description="hold back calls as the gateway's x-ratelimit-* / retry-after headers ask (when a limit is set)",
    )
    max_hold_seconds: float = Field(
        60.0,
        gt=0,
        allow_inf_nan=False,
        description="the longest a node's retry-after or x-ratelimit-* reset holds calls back, in seconds;"
        " a node asking for more (days, a date far off) holds this long",
    )

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
    denied_modalities: Annotated[list[Modality], NoDecode] = Field(
        [],
        description="input kinds refused before sending: 'image', 'audio', 'file'. Env: comma-separated or a JSON list",
    )
    image_formats: Annotated[list[str], NoDecode] = Field(
        ["jpg", "png", "webp"], description="image formats accepted (jpeg counts as jpg)"
    )
    audio_formats: Annotated[list[str], NoDecode] = Field(["mp3", "wav"], description="audio formats accepted")
    max_media_bytes: int = Field(
        200 * MB, ge=1, description="largest image, audio or file sent as base64 data, in bytes (decoded)"
    )
    check_media: bool = Field(True, description="check image and audio formats and media sizes")

    @field_validator("allowed_models", "denied_modalities", "image_formats", "audio_formats", mode="before")
    @classmethod
    def _split_list(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                value = _json_value(text, 'a JSON list, e.g. ["gpt-4o*", "claude-*"]')
            else:
                value = [part.strip() for part in text.split(",") if part.strip()]
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


class Settings(BaseSettings):
    """Every setting of yibu-middleware. See the README's configuration reference."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
        validate_default=True,
    )

    enabled: bool = Field(False, description="turn the middleware on at interpreter start (1/true/yes/on)")
    api_key: SecretStr | None = Field(
        None,
        description="the gateway key sent instead of the provider key; unset: the caller's key passes through",
    )
    base_url: str = Field(DEFAULT_BASE_URL, description="the gateway's base URL, used when `nodes` is empty")
    nodes: Annotated[list[str], NoDecode] = Field(
        [],
        description="gateway node base URLs; replace base_url. Env: comma-separated; TOML: a list",
    )
    routes: Annotated[dict[str, RouteSpec], NoDecode] = Field(
        DEFAULT_ROUTES,
        description=(
            "provider hosts that are redirected, merged onto the defaults: host = 'openai' | 'anthropic' |"
            " {provider = ..., strip_prefix = ...} | false (to stop redirecting a default host). Env: JSON object"
        ),
    )
    model_aliases: Annotated[dict[str, str], NoDecode] = Field(
        {},
        description="rewrite `model` in JSON request bodies: old name = new name. Env: JSON object",
    )
    node_weights: Annotated[dict[str, float], NoDecode] = Field(
        {}, description="relative share of traffic per node URL (default 1). Env: JSON object"
    )
    pin: str | None = Field(
        None, description="a node URL that takes all traffic while it is healthy; the others are its fallback"
    )
    retry: RetrySettings = Field(RetrySettings(), description="retries and failover")
    ejection: EjectionSettings = Field(EjectionSettings(), description="passive outlier ejection")
    health_check: HealthCheckSettings = Field(HealthCheckSettings(), description="active health checks")
    stream: StreamSettings = Field(StreamSettings(), description="streamed responses")
    hedge: HedgeSettings = Field(HedgeSettings(), description="hedged requests (off by default)")
    redaction: RedactionSettings = Field(RedactionSettings(), description="masking keys in logs")
    limits: LimitSettings = Field(LimitSettings(), description="client-side limits (off until a limit is set)")
    policy: PolicySettings = Field(PolicySettings(), description="client-side checks before sending")
    log: Literal["off", "warning", "info", "debug"] = Field(
        "off",
        description="print the library's own log lines (one per redirected call at 'info') to stderr;"
        " 'off' leaves it to the app's logging configuration",
    )

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

    @field_validator("enabled", mode="before")
    @classmethod
    def _strip_flag(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("nodes", mode="before")
    @classmethod
    def _split_nodes(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return _json_value(text, "a JSON list of URLs")
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("nodes")
    @classmethod
    def _check_nodes(cls, value: list[str]) -> list[str]:
        urls = [_http_url(url) for url in value]
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
        merged: dict[str, Any] = dict(DEFAULT_ROUTES)
        for host, spec in value.items():
            host = str(host).strip().lower()
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
        return {_http_url(url): weight for url, weight in value.items()}

    @field_validator("pin")
    @classmethod
    def _check_pin(cls, value: str | None) -> str | None:
        return _http_url(value) if value else None

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
            yield name, value


_TABLE_FORMS = {
    "model_aliases": 'a JSON object of old = new model names, e.g. {"gpt-4": "gpt-5.2"}',
    "node_weights": 'a JSON object of node URL = weight, e.g. {"https://a/v1": 2}',
}


def _http_url(value: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http(s) URL such as https://api.yibuapi.com/v1")
    if parts.query or parts.fragment:
        raise ValueError("a node URL takes no query or fragment")
    return value.strip().rstrip("/")


def _json_value(text: str, expected: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno}); expected {expected}") from None


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
        if not path.is_file():
            raise ConfigError(
                f"{CONFIG_ENV}={named}: no such file. Point {CONFIG_ENV} at a TOML settings file, or unset it."
            )
        return SettingsFile(path, None, _read_toml(path))
    own = cwd / "yibu.toml"
    if own.is_file():
        return SettingsFile(own, None, _read_toml(own))
    pyproject = cwd / "pyproject.toml"
    if pyproject.is_file():
        section = _read_toml(pyproject).get("tool", {}).get("yibu")
        if isinstance(section, dict):
            return SettingsFile(pyproject, "tool.yibu", section)
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib  # only when there is a file: start-up is budgeted

    try:
        with path.open("rb") as stream:
            return tomllib.load(stream)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"settings file {path} is not valid TOML: {exc}. Expected lines such as"
            ' nodes = ["https://api.yibuapi.com/v1"]; see the README\'s configuration reference.'
        ) from None
    except OSError as exc:
        raise ConfigError(f"settings file {path} cannot be read: {exc.strerror}") from None


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
    """Build the settings from every source; raise one ConfigError listing all problems."""
    global _active_file
    overrides = dict(overrides or {})
    file = find_settings_file(cwd)
    origins = _origins(overrides, file)
    _active_file = file
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise _config_error(exc, origins, file) from None
    finally:
        _active_file = None
    settings._origins = origins
    settings._file = file
    _check_consistency(settings)
    return settings


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


def unknown_env_names() -> list[str]:
    """``YIBU_*`` variables that match no setting (probably a typo), with a suggestion each."""
    fields = list(Settings.model_fields)
    report = []
    for key, name in sorted(_env_names().items()):
        top = key.split("__", 1)[0]
        if top not in fields:
            import difflib  # rarely needed: kept off the start-up path

            close = difflib.get_close_matches(top, fields, n=1)
            hint = f" (did you mean {ENV_PREFIX}{close[0].upper()}?)" if close else ""
            report.append(f"{name}{hint}")
    return report


def _config_error(exc: ValidationError, origins: Mapping[str, str], file: SettingsFile | None) -> ConfigError:
    lines = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        dotted = ".".join(loc)
        source = _origin_of(loc, origins, file)
        if error["type"] == "extra_forbidden":
            lines.append(f"- unknown setting '{dotted}' (in {source}){_suggest(loc)}")
            continue
        message = error["msg"].removeprefix("Value error, ")
        shown = "" if loc[0] == "api_key" else f" = {_shown(error.get('input'))}"
        expected = _expected(loc)
        lines.append(
            f"- {dotted}{shown} (from {source}): {message}" + (f". [{dotted}: {expected}]" if expected else "")
        )
    return ConfigError(
        "invalid yibu-middleware settings:\n"
        + "\n".join(lines)
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
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return redact_text(text)


def _check_consistency(settings: Settings) -> None:
    """Rules that span several settings: a node must never be a redirected host; a pinned
    or weighted node must be one of the nodes."""
    nodes = settings.gateway_nodes
    for setting, urls in (("pin", [settings.pin] if settings.pin else []), ("node_weights", settings.node_weights)):
        for url in urls:
            if url not in nodes:
                raise ConfigError(
                    f"invalid yibu-middleware settings:\n- {setting} (from {settings.origin(setting)}): {url} is not"
                    f" one of the gateway nodes ({', '.join(nodes)}). Use a URL exactly as listed in nodes."
                )
    for url in settings.gateway_nodes:
        host = (urlsplit(url).hostname or "").lower()
        if host in settings.routes:
            setting = "nodes" if settings.nodes else "base_url"
            raise ConfigError(
                f"invalid yibu-middleware settings:\n- {setting} (from {settings.origin(setting)}): {url} is on"
                f" host {host}, which is itself redirected (routes); requests would loop. Use the gateway's URL."
            )
