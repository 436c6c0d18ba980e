"""Model profiles: the schema of ``model_profiles.yaml`` and its loader.

``load_profiles(path)`` reads, validates and resolves the whole file into a
:class:`ProfileSet`, or raises :class:`ProfileError` whose messages name the key path and
the bad value (``models.r1.defaults.temperature: must be >= 0, got -1``), never a traceback.
The resolved :class:`Profile` objects are frozen and cheap to read on the request path.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ProfileError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TimeoutsSpec(_Strict):
    """Seconds. ``first_token``: request sent -> first event; ``idle``: between events."""

    connect: float = Field(default=5, gt=0)
    first_token: float = Field(default=60, gt=0)
    idle: float = Field(default=15, gt=0)
    total: float = Field(default=600, gt=0)


class TimeoutOverrides(_Strict):
    connect: float | None = Field(default=None, gt=0)
    first_token: float | None = Field(default=None, gt=0)
    idle: float | None = Field(default=None, gt=0)
    total: float | None = Field(default=None, gt=0)


class BackendSpec(_Strict):
    url: str
    name: str | None = None

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


class ModelSpec(_Strict):
    upstream_model: str | None = None
    backends: list[BackendSpec] = Field(min_length=1)
    stop_token_ids: list[int] = Field(default_factory=list)
    defaults: SamplingSpec = Field(default_factory=SamplingSpec)
    overrides: SamplingSpec = Field(default_factory=SamplingSpec)
    prompt: PromptSpec = Field(default_factory=PromptSpec)
    stop_text: list[str] = Field(default_factory=list)
    timeouts: TimeoutOverrides = Field(default_factory=TimeoutOverrides)

    @field_validator("stop_token_ids")
    @classmethod
    def _non_negative(cls, v: list[int]) -> list[int]:
        for tid in v:
            if tid < 0:
                raise ValueError(f"token ids must be >= 0, got {tid}")
        return v

    @field_validator("stop_text")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if any(s == "" for s in v):
            raise ValueError("stop strings must not be empty")
        return v


class ProfileFile(_Strict):
    timeouts: TimeoutsSpec = Field(default_factory=TimeoutsSpec)
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


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    url: str


@dataclass(frozen=True, slots=True)
class Profile:
    """A resolved model profile: everything the request path needs, precomputed."""

    name: str
    upstream_model: str
    backends: tuple[Backend, ...]
    stop_token_ids: tuple[int, ...]
    defaults: dict[str, Any]
    overrides: dict[str, Any]
    leading_newline: bool
    system: Literal["keep", "merge", "drop"]
    stop_text: tuple[str, ...]
    timeouts: Timeouts


@dataclass(frozen=True, slots=True)
class ProfileSet:
    """An immutable snapshot of all profiles; ``version`` is a hash of the file content."""

    models: dict[str, Profile]
    version: str
    source: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def get(self, name: str) -> Profile | None:
        return self.models.get(name)


def _describe(err: Any) -> str:
    """One pydantic error as ``path: problem, got value``."""
    path = ".".join(str(p) for p in err["loc"]) or "<file>"
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
        if "got " in msg:
            return f"{path}: {msg}"
    else:
        msg = err["msg"][0].lower() + err["msg"][1:]
    return f"{path}: {msg}, got {err.get('input')!r}"


def _resolve(spec: ProfileFile) -> dict[str, Profile]:
    base = spec.timeouts
    models: dict[str, Profile] = {}
    for name, m in spec.models.items():
        t = m.timeouts
        models[name] = Profile(
            name=name,
            upstream_model=m.upstream_model or name,
            backends=tuple(
                Backend(name=b.name or urlsplit(b.url).netloc, url=b.url) for b in m.backends
            ),
            stop_token_ids=tuple(dict.fromkeys(m.stop_token_ids)),
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
            ),
        )
    return models


def parse_profiles(text: str, source: str = "<string>") -> ProfileSet:
    """Validate and resolve profile YAML text. Raises :class:`ProfileError`."""
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
    version = hashlib.sha256(text.encode()).hexdigest()[:12]
    return ProfileSet(models=_resolve(spec), version=version, source=source, raw=data)


def load_profiles(path: str | Path) -> ProfileSet:
    """Read and validate a profile file. Raises :class:`ProfileError`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError([f"{p}: cannot read profile file: {exc.strerror or exc}"]) from None
    return parse_profiles(text, source=str(p))
