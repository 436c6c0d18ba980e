"""Model profiles: the schema of ``model_profiles.yaml`` and its loader.

``load_profiles(path)`` reads, validates and resolves the whole file into a
:class:`ProfileSet`, or raises :class:`ProfileError` whose messages name the key path and
the bad value (``models.r1.defaults.temperature: must be >= 0, got -1``), never a traceback.
The resolved :class:`Profile` objects are frozen and cheap to read on the request path.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ProfileError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TimeoutsSpec(_Strict):
    """Seconds. ``first_token``: request sent -> first event; ``idle``: between events."""

    connect: float = Field(default=5, gt=0)
    first_token: float = Field(default=60, gt=0)
    idle: float = Field(default=15, gt=0)
    total: float = Field(default=600, gt=0)
    #: seconds of nothing forwarded on an open stream before an SSE comment is sent (keeps
    #: client read timeouts and proxies from cutting a model that thinks in silence); 0: off
    heartbeat: float = Field(default=10, ge=0)


class HealthSpec(_Strict):
    """Backend health: active probes of ``GET /health`` and passive ejection."""

    #: seconds between probes (0 turns active checks off)
    interval: float = Field(default=5, ge=0)
    timeout: float = Field(default=2, gt=0)
    #: connect errors / 5xx / first-token timeouts in a row before a backend is ejected
    eject_after: int = Field(default=3, ge=1)
    #: seconds an ejected backend stays out before it is probed again
    cooloff: float = Field(default=10, ge=0)


class AuthSpec(_Strict):
    #: sha256 digests of client keys, one per line, optionally "<digest> model-a,model-b";
    #: relative to the profile file's directory
    keys_file: str | None = None


class LimitsSpec(_Strict):
    """Front-door limits (in-flight and memory-backed rate counters are per replica)."""

    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    #: seconds a client may take to send its request body (408 after it)
    body_timeout: float = Field(default=30, gt=0, le=3600)
    max_messages: int = Field(default=2048, ge=1)
    #: characters over all message contents (chat) or the prompt (completions)
    max_prompt_chars: int = Field(default=4_000_000, ge=1)
    max_in_flight: int = Field(default=1024, ge=1)
    key_max_in_flight: int = Field(default=256, ge=1)
    #: requests per key (per client address without keys), e.g. "600/minute"
    key_rate: str | None = None
    #: a backend's non-stream answer larger than this is refused (502)
    max_upstream_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    #: failed authentications per client address before it gets 429 (brute-force guard)
    auth_failure_rate: str | None = "30/minute"
    #: ``limits`` storage: memory:// (per replica) or redis://host:6379 (shared)
    rate_storage: str = "memory://"

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


class TimeoutOverrides(_Strict):
    connect: float | None = Field(default=None, gt=0)
    first_token: float | None = Field(default=None, gt=0)
    idle: float | None = Field(default=None, gt=0)
    total: float | None = Field(default=None, gt=0)
    heartbeat: float | None = Field(default=None, ge=0)


class BackendSpec(_Strict):
    url: str
    name: str | None = None
    #: share of traffic relative to the model's other backends
    weight: int = Field(default=1, ge=1, le=100)
    #: name of an environment variable holding this backend's API key (sent as Bearer)
    api_key_env: str | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL like http://host:8000")
        return v.rstrip("/")


class SamplingSpec(BaseModel):
    """Sampling fields with known ranges; other vLLM sampling fields pass unchecked."""

    model_config = ConfigDict(extra="allow")

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    repetition_penalty: float | None = Field(default=None, gt=0)
    seed: int | None = None


class PromptSpec(_Strict):
    #: prepend "\n" to the last user message unless it already starts with one
    leading_newline: bool = False
    #: keep | merge (fold system text into the first user turn) | drop
    system: Literal["keep", "merge", "drop"] = "keep"
    #: text the answer must start with (e.g. "<think>\n"): sent as a final assistant message
    #: with vLLM's continue_final_message
    assistant_prefix: str = ""
    #: the chat template already adds assistant_prefix: do not send it again
    assistant_prefix_in_template: bool = False


class ReasoningSpec(_Strict):
    #: think_tags: parse <think>...</think> in the text; none: only rename upstream fields
    parser: Literal["think_tags", "none"] = "think_tags"
    #: the template opened <think> in the prompt: output starts inside the reasoning
    starts_in_reasoning: bool = False
    #: delta/message fields that receive the reasoning text
    fields: list[str] = Field(
        default_factory=lambda: ["reasoning_content", "reasoning"], min_length=1
    )
    mode: Literal["split", "inline", "hide"] = "split"
    #: remove reasoning from earlier assistant turns before the request goes upstream
    strip_history: bool = True

    @field_validator("fields")
    @classmethod
    def _field_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if name in ("content", "role", "tool_calls", "refusal") or not name.isidentifier():
                raise ValueError(f"{name!r} cannot hold reasoning")
        return v


class ModelSpec(_Strict):
    upstream_model: str | None = None
    backends: list[BackendSpec] = Field(min_length=1)
    stop_token_ids: list[int] = Field(default_factory=list)
    #: local tokenizer dir (or a model id already in the local HF cache) for stop_tokens
    tokenizer: str | None = None
    #: stop tokens by name, resolved to ids through ``tokenizer``
    stop_tokens: list[str] = Field(default_factory=list)
    #: also stop at the tokenizer's eos and generation_config.json's eos_token_id list
    eos_from_tokenizer: bool = False
    #: named variants: field overrides, selected as ``model:variant`` or a header
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    defaults: SamplingSpec = Field(default_factory=SamplingSpec)
    overrides: SamplingSpec = Field(default_factory=SamplingSpec)
    prompt: PromptSpec = Field(default_factory=PromptSpec)
    stop_text: list[str] = Field(default_factory=list)
    timeouts: TimeoutOverrides = Field(default_factory=TimeoutOverrides)
    reasoning: ReasoningSpec | None = None
    #: other backends tried when one fails before the first byte reached the client
    retries: int = Field(default=2, ge=0, le=10)
    #: none | prefix (hash of system + first user turn) | header (``affinity_header``)
    affinity: Literal["none", "prefix", "header"] = "none"
    affinity_header: str = "x-session-id"
    #: largest max_tokens a client may ask for (also applied when it asks for none)
    max_tokens_limit: int | None = Field(default=None, ge=1)
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
        return v

    @field_validator("stop_text", "stop_tokens")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if any(s == "" for s in v):
            raise ValueError("entries must not be empty strings")
        return v

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, body in v.items():
            if not name or ":" in name or name != name.strip():
                raise ValueError(f"variant name {name!r} must be non-empty, trimmed, without ':'")
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


class ProfileFile(_Strict):
    timeouts: TimeoutsSpec = Field(default_factory=TimeoutsSpec)
    health: HealthSpec = Field(default_factory=HealthSpec)
    auth: AuthSpec = Field(default_factory=AuthSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    models: dict[str, ModelSpec] = Field(min_length=1)

    @field_validator("models")
    @classmethod
    def _names(cls, v: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
        for name in v:
            if not name or ":" in name or name != name.strip():
                raise ValueError(f"model name {name!r} must be non-empty, trimmed, without ':'")
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


@dataclass(frozen=True, slots=True)
class ReasoningRules:
    parser: Literal["think_tags", "none"]
    starts_in_reasoning: bool
    fields: tuple[str, ...]
    mode: Literal["split", "inline", "hide"]
    strip_history: bool


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


@dataclass(frozen=True, slots=True)
class ProfileSet:
    """An immutable snapshot of all profiles; ``version`` is a hash of the file content."""

    models: dict[str, Profile]
    version: str
    source: str = ""
    health: HealthSpec = field(default_factory=HealthSpec)
    limits: LimitsSpec = field(default_factory=LimitsSpec)
    #: (sha256 digest, allowed models or None) from ``auth.keys_file``
    key_digests: tuple[tuple[bytes, frozenset[str] | None], ...] = ()

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
            # the default name never shows the internal address (it reaches headers,
            # metrics labels and logs)
            Backend(name=b.name or f"b{i}", url=b.url, weight=b.weight, api_key=key)
        )
    t = m.timeouts
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
        ),
        assistant_prefix="" if m.prompt.assistant_prefix_in_template else m.prompt.assistant_prefix,
        retries=m.retries,
        affinity=m.affinity,
        affinity_header=m.affinity_header.lower(),
        max_tokens_limit=m.max_tokens_limit,
        max_tokens_policy=m.max_tokens_policy,
        max_n=m.max_n,
        stream_termination=m.stream_termination,
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
    """Validate and resolve profile YAML text. Raises :class:`ProfileError`.

    ``resolver`` turns ``stop_tokens`` names into ids (see :mod:`tokens`)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ProfileError([f"{source}: invalid YAML{where}: {problem}"]) from None
    if not isinstance(data, dict):
        raise ProfileError([f"{source}: top level must be a mapping, got {type(data).__name__}"])
    try:
        spec = ProfileFile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError([_describe(e) for e in exc.errors(include_url=False)]) from None
    version = content_version(text)
    models = _resolve(spec, data, resolver)
    keys: tuple[tuple[bytes, frozenset[str] | None], ...] = ()
    if spec.auth.keys_file:
        keys_path = Path(spec.auth.keys_file)
        if not keys_path.is_absolute() and source not in ("<string>", "<test>", "<demo>"):
            keys_path = Path(source).parent / keys_path
        keys = read_keys_file(keys_path, set(models))
        version = content_version(text + "".join(d.hex() for d, _ in keys))
    return ProfileSet(
        models=models,
        version=version,
        source=source,
        health=spec.health,
        limits=spec.limits,
        key_digests=keys,
    )


def read_keys_file(
    path: Path, known_models: set[str]
) -> tuple[tuple[bytes, frozenset[str] | None], ...]:
    """``auth.keys_file``: ``<sha256 hex> [model,model]`` per line; ``#`` comments."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ProfileError([f"auth.keys_file: cannot read {path}: {reason}"]) from None
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
            unknown = sorted(models - known_models)
            if unknown:
                errors.append(f"auth.keys_file line {n}: unknown model(s) {', '.join(unknown)}")
                continue
        keys.append((raw, models))
    if errors:
        raise ProfileError(errors)
    return tuple(keys)


def content_version(text: str) -> str:
    """The profile version: a hash of the file content."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def read_profile_text(path: str | Path) -> str:
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ProfileError([f"{p}: cannot read profile file: {reason}"]) from None


def load_profiles(path: str | Path, resolver: TokenResolver | None = None) -> ProfileSet:
    """Read and validate a profile file. Raises :class:`ProfileError`."""
    return parse_profiles(read_profile_text(path), source=str(path), resolver=resolver)
