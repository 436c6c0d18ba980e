"""Model profiles: the schema of ``model_profiles.yaml`` and its loader.

``load_profiles(path)`` reads, validates and resolves the whole file into a
:class:`ProfileSet`, or raises :class:`ProfileError` whose messages name the key path and
the bad value (``models.r1.defaults.temperature: must be >= 0, got -1``), never a traceback.
The resolved :class:`Profile` objects are frozen and cheap to read on the request path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .control_spec import ReasoningControl, ReasoningControlSpec
from .errors import ProfileError
from .fields import DEFAULT_DENIED_FIELDS, DEFAULT_POLICY, GATEWAY_OWNED_FIELDS, FieldPolicy
from .profile_yaml import load_yaml, read_bounded_text, read_profile_text
from .ratestore import redact
from .routing import RoutingSpec
from .values import json_value_problem

log = logging.getLogger("gateway.profiles")

__all__ = ["ProfileSet", "load_profiles", "parse_profiles", "read_profile_text"]

#: a backend's name: shown in ``x-gateway-backend``, metric labels and logs
BACKEND_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: an environment variable's name
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
#: a request field's name (field policy lists)
FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
#: an HTTP header's name (RFC 9110 token)
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
INT64 = (-(2**63), 2**63 - 1)
#: largest ``auth.keys_file`` (about 200,000 keys)
MAX_KEYS_FILE_BYTES = 16 * 1024 * 1024


def _off_or_at_least(low: float) -> Callable[[float], float]:
    def check(v: float) -> float:
        if 0 < v < low:
            raise ValueError(f"must be 0 (off) or >= {low:g}, got {v:g}")
        return v

    return check


def _off_or_schema(low: float) -> dict[str, Any]:
    return {"not": {"exclusiveMinimum": 0, "exclusiveMaximum": low}}


#: seconds between active health probes: 0 (off) or 0.5..3600 (a tiny interval burns a core)
ProbeInterval = Annotated[
    float,
    Field(ge=0, le=3600, json_schema_extra=_off_or_schema(0.5)),
    AfterValidator(_off_or_at_least(0.5)),
]
#: seconds of silence before an SSE comment is sent on an open stream: 0 (off) or 0.1..3600
Heartbeat = Annotated[
    float,
    Field(ge=0, le=3600, json_schema_extra=_off_or_schema(0.1)),
    AfterValidator(_off_or_at_least(0.1)),
]
#: a timeout in seconds: 1 ms .. 1 day (a huge one overflows the event loop's timers)
Seconds = Annotated[float, Field(ge=0.001, le=86400)]


class _Strict(BaseModel):
    # NaN and infinity are never meant: inf seconds overflow the event loop's timers
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TimeoutsSpec(_Strict):
    """Seconds. ``first_token``: request sent -> first event; ``idle``: between events."""

    connect: float = Field(default=5, ge=0.001, le=300)
    first_token: Seconds = 60
    idle: Seconds = 15
    total: Seconds = 600
    #: seconds of nothing forwarded on an open stream before an SSE comment is sent (keeps
    #: client read timeouts and proxies from cutting a model that thinks in silence); 0: off
    heartbeat: Heartbeat = 10


class HealthSpec(_Strict):
    """Backend health: active probes of ``GET /health`` and passive ejection."""

    #: seconds between probes: 0 turns active checks off, otherwise at least 0.5
    interval: ProbeInterval = 5
    timeout: float = Field(default=2, ge=0.01, le=60)
    #: connect errors / 5xx / first-token timeouts in a row before a backend is ejected
    eject_after: int = Field(default=3, ge=1, le=1000)
    #: seconds an ejected backend stays out before it is probed again
    cooloff: float = Field(default=10, ge=0, le=86400)


class AuthSpec(_Strict):
    #: sha256 digests of client keys, one per line, optionally "<digest> model-a,model-b";
    #: relative to the profile file's directory
    keys_file: str | None = Field(default=None, min_length=1, max_length=4096)


class LimitsSpec(_Strict):
    """Front-door limits (in-flight and memory-backed rate counters are per replica)."""

    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, le=1024**3)
    #: seconds a client may take to send its request body (408 after it)
    body_timeout: float = Field(default=30, ge=0.01, le=3600)
    max_messages: int = Field(default=2048, ge=1, le=1_000_000)
    #: characters over all message contents (chat) or the prompt (completions)
    max_prompt_chars: int = Field(default=4_000_000, ge=1, le=1_000_000_000)
    #: requests in flight per replica (a thinking stream can last minutes: thousands is
    #: normal); each holds two file descriptors (see the start-up capacity check)
    max_in_flight: int = Field(default=8192, ge=1, le=1_000_000)
    key_max_in_flight: int = Field(default=8192, ge=1, le=1_000_000)
    #: requests per key (per client address without keys), e.g. "600/minute"
    key_rate: str | None = Field(default=None, max_length=256)
    #: a backend's non-stream answer larger than this is refused (502)
    max_upstream_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, le=1024**3)
    #: failed authentications per client address before it gets 429 (brute-force guard)
    auth_failure_rate: str | None = Field(default="30/minute", max_length=256)
    #: ``limits`` storage: memory:// (per replica) or redis://host:6379 (shared; needs the
    #: ``redis`` extra)
    rate_storage: str = Field(default="memory://", max_length=4096)

    @field_validator("key_rate", "auth_failure_rate")
    @classmethod
    def _rate(cls, v: str | None) -> str | None:
        if v is not None:
            from limits import parse

            try:
                parse(v)
            except ValueError:
                raise ValueError(f"not a rate like '600/minute': {v!r}") from None
        return v

    @field_validator("rate_storage")
    @classmethod
    def _storage(cls, v: str) -> str:
        from .ratestore import storage_problem

        problem = storage_problem(v)
        if problem:
            raise ValueError(problem)
        return v


class TimeoutOverrides(_Strict):
    connect: float | None = Field(default=None, ge=0.001, le=300)
    first_token: Seconds | None = None
    idle: Seconds | None = None
    total: Seconds | None = None
    heartbeat: Heartbeat | None = None


class BackendSpec(_Strict):
    url: str = Field(max_length=2048)
    #: shown in ``x-gateway-backend``, metric labels and logs; default ``b<index>``
    name: str | None = Field(
        default=None, json_schema_extra={"pattern": f"^{BACKEND_NAME.pattern}$"}
    )
    #: share of traffic relative to the model's other backends
    weight: int = Field(default=1, ge=1, le=100)
    #: name of an environment variable holding this backend's API key (sent as Bearer)
    api_key_env: str | None = Field(
        default=None, json_schema_extra={"pattern": f"^{ENV_NAME.pattern}$"}
    )
    #: scrape this backend's /metrics for load routing (``routing:``); false: never
    scrape_metrics: bool = True

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        try:
            parts = urlsplit(v)
            port = parts.port
        except ValueError:
            parts, port = None, None
        # never echo a secret: these messages reach logs and /admin
        shown = redact(v)
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http(s) URL like http://host:8000, got {shown!r}")
        if "@" in parts.netloc:
            shown = f"{parts.scheme}://***@{parts.hostname}{f':{port}' if port else ''}"
            raise ValueError(
                f"credentials in a backend URL are not allowed (got {shown}): put the key in "
                "an environment variable and name it in api_key_env (sent as a Bearer token)"
            )
        if parts.query or parts.fragment:
            raise ValueError(f"a backend URL takes no query or fragment, got {v!r}")
        return v.rstrip("/")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not BACKEND_NAME.fullmatch(v):
            raise ValueError(
                f"a backend name is 1-64 of A-Z a-z 0-9 . _ - (starting with a letter or "
                f"digit), got {v!r}"
            )
        return v

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not ENV_NAME.fullmatch(v):
            raise ValueError(f"not an environment variable name, got {v!r}")
        return v


class SamplingSpec(BaseModel):
    """Sampling fields with known ranges; other request fields are free-form JSON values,
    bounded (see :func:`values.json_value_problem`) so that every request can carry them."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1, le=1_000_000_000)
    min_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=100_000_000)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    repetition_penalty: float | None = Field(default=None, gt=0, le=100)
    seed: int | None = Field(default=None, ge=INT64[0], le=INT64[1])

    @model_validator(mode="after")
    def _free_form(self) -> SamplingSpec:
        extra = self.model_extra or {}
        owned = sorted(GATEWAY_OWNED_FIELDS & set(extra))
        if owned:
            raise ValueError(
                f"{owned[0]}: set by the client and the gateway, a profile cannot set it"
            )
        problem = json_value_problem(extra)
        if problem:
            raise ValueError(problem)
        return self

    def removed(self) -> tuple[str, ...]:
        """Fields set to ``null`` (as ``overrides``: removed from every request)."""
        return tuple(k for k, v in self if v is None and k in self.model_fields_set)


class PromptSpec(_Strict):
    #: prepend "\n" to the last user message unless it already starts with one
    leading_newline: bool = False
    #: keep | merge (fold system text into the first user turn) | drop
    system: Literal["keep", "merge", "drop"] = "keep"
    #: text the answer must start with (e.g. "<think>\n"): sent as a final assistant message
    #: with vLLM's continue_final_message
    assistant_prefix: str = Field(default="", max_length=4096)
    #: the chat template already adds assistant_prefix: do not send it again
    assistant_prefix_in_template: bool = False


class ReasoningSpec(_Strict):
    #: think_tags: parse <think>...</think> in the text; none: only rename upstream fields
    parser: Literal["think_tags", "none"] = "think_tags"
    #: the template opened <think> in the prompt: output starts inside the reasoning
    starts_in_reasoning: bool = False
    #: delta/message fields that receive the reasoning text
    fields: list[str] = Field(
        default_factory=lambda: ["reasoning_content"], min_length=1, max_length=8
    )
    mode: Literal["split", "inline", "hide"] = "split"
    #: remove reasoning from earlier assistant turns before the request goes upstream
    strip_history: bool = True
    #: reasoning effort and budgets, whatever dialect the client speaks (:mod:`control`)
    control: ReasoningControlSpec = Field(default_factory=ReasoningControlSpec)

    @field_validator("fields")
    @classmethod
    def _field_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if name in ("content", "role", "tool_calls", "refusal") or not FIELD_NAME.fullmatch(
                name
            ):
                raise ValueError(f"{name!r} cannot hold reasoning")
        return v


def _field_list(v: list[str] | None) -> list[str] | None:
    for name in v or ():
        if not FIELD_NAME.fullmatch(name):
            raise ValueError(f"not a request field name, got {name!r}")
    return v


class RequestPolicySpec(_Strict):
    """Which top-level request fields a client may send (see :mod:`fields`)."""

    #: fields refused (or dropped); replaces the shipped list, ``[]`` denies nothing
    deny: list[str] = Field(default_factory=lambda: sorted(DEFAULT_DENIED_FIELDS), max_length=256)
    #: when set, only these fields (and the request's own: model, messages/prompt, stream,
    #: stream_options) are accepted
    allow: list[str] | None = Field(default=None, max_length=256)
    #: reject: 400 naming the field; drop: removed silently before the request goes upstream
    on_denied: Literal["reject", "drop"] = "reject"
    #: accept http(s) media URLs in content parts (vLLM would fetch them); data: URLs always
    remote_media: bool = False
    #: accept raw tensors: ``prompt_embeds`` and ``*_embeds`` content parts
    embeddings: bool = False

    _names = field_validator("deny", "allow")(_field_list)


class ModelSpec(_Strict):
    upstream_model: str | None = Field(default=None, min_length=1, max_length=512)
    backends: list[BackendSpec] = Field(min_length=1, max_length=64)
    stop_token_ids: list[int] = Field(default_factory=list, max_length=1024)
    #: local tokenizer dir (or a model id already in the local HF cache) for stop_tokens
    tokenizer: str | None = Field(default=None, max_length=4096)
    #: stop tokens by name, resolved to ids through ``tokenizer``
    stop_tokens: list[str] = Field(default_factory=list, max_length=1024)
    #: also stop at the tokenizer's eos and generation_config.json's eos_token_id list
    eos_from_tokenizer: bool = False
    #: named variants: field overrides, selected as ``model:variant`` or a header
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict, max_length=64)
    defaults: SamplingSpec = Field(default_factory=SamplingSpec)
    #: fields replaced whatever the client sent; ``null`` removes the field
    overrides: SamplingSpec = Field(default_factory=SamplingSpec)
    #: which request fields a client may send, and which media
    request_policy: RequestPolicySpec = Field(default_factory=RequestPolicySpec)
    prompt: PromptSpec = Field(default_factory=PromptSpec)
    stop_text: list[str] = Field(default_factory=list, max_length=64)
    timeouts: TimeoutOverrides = Field(default_factory=TimeoutOverrides)
    reasoning: ReasoningSpec | None = None
    #: other backends tried when one fails before the first byte reached the client
    retries: int = Field(default=2, ge=0, le=10)
    #: none | prefix (hash of system + first user turn) | header (``affinity_header``)
    affinity: Literal["none", "prefix", "header"] = "none"
    affinity_header: str = Field(default="x-session-id", pattern=HEADER_NAME.pattern)
    #: largest max_tokens a client may ask for (also applied when it asks for none)
    max_tokens_limit: int | None = Field(default=None, ge=1, le=100_000_000)
    #: clamp: lower it to the limit; reject: 400
    max_tokens_policy: Literal["clamp", "reject"] = "clamp"
    #: largest ``n`` (choices per request)
    max_n: int = Field(default=4, ge=1, le=128)
    #: how a stream the gateway must cut after its first byte ends (timeout, upstream drop
    #: or abort, shutdown): ``error``: an OpenAI error event, then [DONE] (SDKs raise);
    #: ``graceful``: a final chunk with ``finish_reason: length`` and ``gateway_termination``
    stream_termination: Literal["error", "graceful"] = "error"

    @field_validator("stop_token_ids")
    @classmethod
    def _non_negative(cls, v: list[int]) -> list[int]:
        for tid in v:
            if tid < 0:
                raise ValueError(f"token ids must be >= 0, got {tid}")
            if tid >= 2**31:
                raise ValueError(f"token ids must be < 2**31, got {tid}")
        return v

    @field_validator("stop_text", "stop_tokens")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if any(s == "" for s in v):
            raise ValueError("entries must not be empty strings")
        if any(len(s) > 1024 for s in v):
            raise ValueError("entries must be at most 1024 characters")
        return v

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, body in v.items():
            if not name or ":" in name or name != name.strip() or len(name) > 64:
                raise ValueError(
                    f"variant name {name!r} must be non-empty, trimmed, without ':', "
                    "at most 64 characters"
                )
            if not isinstance(body, dict):
                raise ValueError(f"variant {name!r} must be a mapping of profile fields")
            if "variants" in body:
                raise ValueError(f"variant {name!r} cannot define variants")
        return v

    @model_validator(mode="after")
    def _tokenizer_needed(self) -> ModelSpec:
        if (self.stop_tokens or self.eos_from_tokenizer) and not self.tokenizer:
            raise ValueError("stop_tokens and eos_from_tokenizer need a `tokenizer`")
        return self

    @model_validator(mode="after")
    def _unique_backend_names(self) -> ModelSpec:
        seen: set[str] = set()
        for name in backend_names(self.backends):
            if name in seen:
                raise ValueError(f"backends: two backends are named {name!r}")
            seen.add(name)
        return self


def backend_names(backends: Sequence[BackendSpec]) -> list[str]:
    """Configured names, else ``b0``, ``b1``, ... by position: internal addresses never
    leak through a name (``x-gateway-backend``, metric labels, logs)."""
    return [b.name or f"b{i}" for i, b in enumerate(backends)]


class ProfileFile(_Strict):
    timeouts: TimeoutsSpec = Field(default_factory=TimeoutsSpec)
    health: HealthSpec = Field(default_factory=HealthSpec)
    #: load routing: each backend's /metrics, scraped on the probe session
    routing: RoutingSpec = Field(default_factory=RoutingSpec)
    auth: AuthSpec = Field(default_factory=AuthSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    models: dict[str, ModelSpec] = Field(min_length=1, max_length=256)

    @field_validator("models")
    @classmethod
    def _names(cls, v: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
        for name in v:
            if not name or ":" in name or name != name.strip() or len(name) > 256:
                raise ValueError(
                    f"model name {name!r} must be non-empty, trimmed, without ':', "
                    "at most 256 characters"
                )
        return v


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    first_token: float
    idle: float
    total: float
    heartbeat: float = 0.0


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    url: str
    weight: int = 1
    #: from ``api_key_env``; never printed, logged or described
    api_key: str | None = field(default=None, repr=False, compare=False)
    #: its /metrics is scraped for load routing
    scrape_metrics: bool = True


@dataclass(frozen=True, slots=True)
class ReasoningRules:
    parser: Literal["think_tags", "none"]
    starts_in_reasoning: bool
    fields: tuple[str, ...]
    mode: Literal["split", "inline", "hide"]
    strip_history: bool
    control: ReasoningControl = field(default_factory=ReasoningControl)


@dataclass(frozen=True, slots=True)
class Profile:
    """A resolved model profile: everything the request path needs, precomputed.

    ``name`` is the public name (``model`` or ``model:variant``)."""

    name: str
    variant: str | None
    upstream_model: str
    backends: tuple[Backend, ...]
    stop_token_ids: tuple[int, ...]
    defaults: dict[str, Any]
    overrides: dict[str, Any]
    leading_newline: bool
    system: Literal["keep", "merge", "drop"]
    stop_text: tuple[str, ...]
    timeouts: Timeouts
    reasoning: ReasoningRules | None = None
    #: sent as a final assistant message (empty: nothing is sent)
    assistant_prefix: str = ""
    retries: int = 2
    affinity: Literal["none", "prefix", "header"] = "none"
    affinity_header: str = "x-session-id"
    max_tokens_limit: int | None = None
    max_tokens_policy: Literal["clamp", "reject"] = "clamp"
    max_n: int = 4
    stream_termination: Literal["error", "graceful"] = "error"
    #: which request fields and media a client may send
    policy: FieldPolicy = DEFAULT_POLICY
    #: fields removed from every request (``overrides`` set to ``null``)
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ProfileSet:
    """An immutable snapshot of all profiles; ``version`` is a hash of the file content."""

    models: dict[str, Profile]
    version: str
    source: str = ""
    health: HealthSpec = field(default_factory=HealthSpec)
    routing: RoutingSpec = field(default_factory=RoutingSpec)
    limits: LimitsSpec = field(default_factory=LimitsSpec)
    #: (sha256 digest, allowed models or None) from ``auth.keys_file``
    key_digests: tuple[tuple[bytes, frozenset[str] | None], ...] = ()
    #: (path, content hash) of every file this snapshot was read from (the profile file and
    #: its keys file): the watcher reloads only when one of them changed
    sources: tuple[tuple[str, str], ...] = ()

    def backends(self) -> list[Backend]:
        """Every backend of every profile, once per URL."""
        return list({b.url: b for p in self.models.values() for b in p.backends}.values())

    def get(self, name: str) -> Profile | None:
        return self.models.get(name)

    def describe(self) -> dict[str, Any]:
        """The effective profiles as plain data (for ``gateway check`` and ``/admin``)."""
        models = {}
        for name, p in self.models.items():
            d = asdict(p)
            for b in d["backends"]:
                b["api_key"] = "<set>" if b["api_key"] else None  # never the key itself
            models[name] = d
        return {"version": self.version, "source": self.source, "models": models}


#: ``(tokenizer, stop_tokens, with_eos) -> ids``; raises ``ValueError`` with a message
TokenResolver = Callable[[str, Sequence[str], bool], list[int]]


def _describe(err: Any, prefix: str = "") -> str:
    """One pydantic error as ``path: problem, got value``."""
    path = prefix + ".".join(str(p) for p in err["loc"]) or "<file>"
    path = path.rstrip(".")
    ctx = err.get("ctx") or {}
    kind = err["type"]
    bounds = {
        "greater_than_equal": (">=", "ge"),
        "greater_than": (">", "gt"),
        "less_than_equal": ("<=", "le"),
        "less_than": ("<", "lt"),
    }
    if kind in bounds:
        op, key = bounds[kind]
        bound = ctx.get(key)
        msg = (
            f"must be {op} {bound:g}" if isinstance(bound, int | float) else f"must be {op} {bound}"
        )
    elif kind == "extra_forbidden":
        return f"{path}: unknown key"
    elif kind == "missing":
        return f"{path}: required key is missing"
    elif kind == "value_error":
        msg = str(ctx.get("error", err["msg"]))
        if "got " in msg or isinstance(err.get("input"), dict | list):
            return f"{path}: {msg}"
    else:
        msg = err["msg"][0].lower() + err["msg"][1:]
    return f"{path}: {msg}, got {err.get('input')!r}"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """A variant over its model: mappings merge key by key, everything else is replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _resolve_one(
    name: str,
    variant: str | None,
    m: ModelSpec,
    base: TimeoutsSpec,
    resolver: TokenResolver | None,
    path: str,
    errors: list[str],
) -> Profile | None:
    ids = list(m.stop_token_ids)
    if m.tokenizer and (m.stop_tokens or m.eos_from_tokenizer):
        if resolver is None:
            errors.append(f"{path}.stop_tokens: no tokenizer resolver available here")
            return None
        try:
            ids += resolver(m.tokenizer, m.stop_tokens, m.eos_from_tokenizer)
        except ValueError as exc:
            errors.append(f"{path}.stop_tokens: {exc}")
            return None
    backends = []
    names = backend_names(m.backends)
    for i, b in enumerate(m.backends):
        key = None
        if b.api_key_env:
            key = os.environ.get(b.api_key_env)
            if not key:
                errors.append(
                    f"{path}.backends.{i}.api_key_env: environment variable "
                    f"{b.api_key_env} is not set"
                )
                return None
        backends.append(
            Backend(
                name=names[i],
                url=b.url,
                weight=b.weight,
                api_key=key,
                scrape_metrics=b.scrape_metrics,
            )
        )
    t = m.timeouts
    rp = m.request_policy
    r = m.reasoning
    return Profile(
        name=f"{name}:{variant}" if variant else name,
        variant=variant,
        upstream_model=m.upstream_model or name,
        backends=tuple(backends),
        stop_token_ids=tuple(dict.fromkeys(ids)),
        defaults=m.defaults.model_dump(exclude_none=True),
        overrides=m.overrides.model_dump(exclude_none=True),
        leading_newline=m.prompt.leading_newline,
        system=m.prompt.system,
        stop_text=tuple(dict.fromkeys(m.stop_text)),
        timeouts=Timeouts(
            connect=t.connect or base.connect,
            first_token=t.first_token or base.first_token,
            idle=t.idle or base.idle,
            total=t.total or base.total,
            heartbeat=base.heartbeat if t.heartbeat is None else t.heartbeat,
        ),
        reasoning=None
        if r is None
        else ReasoningRules(
            parser=r.parser,
            starts_in_reasoning=r.starts_in_reasoning,
            fields=tuple(r.fields),
            mode=r.mode,
            strip_history=r.strip_history,
            control=ReasoningControl.from_spec(r.control),
        ),
        assistant_prefix="" if m.prompt.assistant_prefix_in_template else m.prompt.assistant_prefix,
        retries=m.retries,
        affinity=m.affinity,
        affinity_header=m.affinity_header.lower(),
        max_tokens_limit=m.max_tokens_limit,
        max_tokens_policy=m.max_tokens_policy,
        max_n=m.max_n,
        stream_termination=m.stream_termination,
        policy=FieldPolicy(
            deny=tuple(sorted(set(rp.deny))),
            allow=None if rp.allow is None else tuple(sorted(set(rp.allow))),
            on_denied=rp.on_denied,
            remote_media=rp.remote_media,
            embeddings=rp.embeddings,
        ),
        remove=m.overrides.removed(),
    )


def _resolve(
    spec: ProfileFile, raw: dict[str, Any], resolver: TokenResolver | None
) -> dict[str, Profile]:
    models: dict[str, Profile] = {}
    errors: list[str] = []
    for name, m in spec.models.items():
        profile = _resolve_one(name, None, m, spec.timeouts, resolver, f"models.{name}", errors)
        if profile is not None:
            models[name] = profile
        base_raw = {k: v for k, v in raw["models"][name].items() if k != "variants"}
        for vname, vbody in m.variants.items():
            path = f"models.{name}.variants.{vname}"
            try:
                vm = ModelSpec.model_validate(_merge(base_raw, vbody))
            except ValidationError as exc:
                errors += [_describe(e, path + ".") for e in exc.errors(include_url=False)]
                continue
            vp = _resolve_one(name, vname, vm, spec.timeouts, resolver, path, errors)
            if vp is not None:
                models[vp.name] = vp
    if errors:
        raise ProfileError(errors)
    return models


def parse_profiles(
    text: str, source: str = "<string>", resolver: TokenResolver | None = None
) -> ProfileSet:
    """Validate and resolve profile YAML text. Raises :class:`ProfileError`, and nothing
    else: an unexpected exception is a refusal too (logged with its traceback).

    ``resolver`` turns ``stop_tokens`` names into ids (see :mod:`tokens`)."""
    try:
        return _parse(text, source, resolver)
    except ProfileError:
        raise
    except Exception as exc:
        log.error("profile file %s could not be loaded", source, exc_info=True)
        raise ProfileError(
            [f"{source}: could not be loaded ({type(exc).__name__}: {str(exc)[:200]})"]
        ) from exc


def _parse(text: str, source: str, resolver: TokenResolver | None) -> ProfileSet:
    data = load_yaml(text, source)
    if not isinstance(data, dict):
        raise ProfileError([f"{source}: top level must be a mapping, got {type(data).__name__}"])
    try:
        spec = ProfileFile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError([_describe(e) for e in exc.errors(include_url=False)]) from None
    version = content_version(text)
    sources = [(source, version)]
    models = _resolve(spec, data, resolver)
    keys: tuple[tuple[bytes, frozenset[str] | None], ...] = ()
    if spec.auth.keys_file:
        keys_path = Path(spec.auth.keys_file)
        if not keys_path.is_absolute() and source not in ("<string>", "<test>", "<demo>"):
            keys_path = Path(source).parent / keys_path
        base_models = {name for name in models if ":" not in name}
        keys, keys_hash = read_keys_file(keys_path, base_models)
        version = content_version(text + "".join(d.hex() for d, _ in keys))
        sources.append((str(keys_path), keys_hash))
    return ProfileSet(
        models=models,
        version=version,
        source=source,
        health=spec.health,
        routing=spec.routing,
        limits=spec.limits,
        key_digests=keys,
        sources=tuple(sources),
    )


def read_keys_file(
    path: Path, known_models: set[str]
) -> tuple[tuple[tuple[bytes, frozenset[str] | None], ...], str]:
    """``auth.keys_file``: ``<sha256 hex> [model,model]`` per line; ``#`` comments; at most
    :data:`MAX_KEYS_FILE_BYTES` bytes. Returns the keys and the file's content hash."""
    text = read_bounded_text(path, MAX_KEYS_FILE_BYTES, "auth.keys_file: cannot read {path}: {why}")
    lines = text.splitlines()
    keys = []
    errors = []
    for n, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        hexdigest, _, rest = line.partition(" ")
        try:
            raw = bytes.fromhex(hexdigest)
        except ValueError:
            raw = b""
        if len(raw) != 32:
            errors.append(f"auth.keys_file line {n}: not a sha256 hex digest")
            continue
        models = None
        if rest.strip():
            models = frozenset(m.strip() for m in rest.split(",") if m.strip())
            variants = sorted(m for m in models if ":" in m)
            if variants:
                errors.append(
                    f"auth.keys_file line {n}: {', '.join(variants)}: name the model, its "
                    "variants follow it"
                )
                continue
            unknown = sorted(models - known_models)
            if unknown:
                errors.append(f"auth.keys_file line {n}: unknown model(s) {', '.join(unknown)}")
                continue
        keys.append((raw, models))
    if errors:
        raise ProfileError(errors)
    return tuple(keys), content_version(text)


def content_version(text: str) -> str:
    """The profile version: a hash of the file content."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def load_profiles(path: str | Path, resolver: TokenResolver | None = None) -> ProfileSet:
    """Read and validate a profile file. Raises :class:`ProfileError`.

    A shared rate storage (Redis) that does not answer is logged as a warning, not refused
    (see :mod:`ratestore`)."""
    profiles = parse_profiles(read_profile_text(path), source=str(path), resolver=resolver)
    if profiles.limits.key_rate:
        from .ratestore import reachability_warning

        warning = reachability_warning(profiles.limits.rate_storage)
        if warning:
            log.warning("%s", warning)
    return profiles
