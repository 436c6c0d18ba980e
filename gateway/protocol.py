"""OpenAI wire types the gateway touches, the finish_reason set, SSE framing, error bodies.

Requests are validated once, at the edge, with pydantic models that keep unknown fields
(``extra="allow"``): vLLM's extra sampling parameters must pass through untouched. The
per-chunk path never builds pydantic models; it uses plain dicts and orjson.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import (
    GatewayError,
    MethodNotAllowed,
    RequestError,
    TooManyRequests,
    UpstreamStatusError,
)

#: finish_reason values an OpenAI client accepts.
FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})

#: how upstream finish reasons outside OpenAI's set are repaired. vLLM sends ``abort`` when the
#: engine dropped the request and ``error`` for an internal failure: both mean the text is
#: incomplete, which OpenAI clients understand as ``length``.
FINISH_REPAIRS = {"abort": "length", "error": "length"}

DONE_FRAME = b"data: [DONE]\n\n"


def sse_frame(obj: Any) -> bytes:
    """One SSE ``data:`` event carrying ``obj`` as JSON (the single encoder of this project)."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def error_body(
    message: str, type_: str, *, code: str | int | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def render_error(exc: BaseException) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """The one error boundary: any exception -> (status, OpenAI error JSON, extra headers).

    Used by the completion routes and by the FastAPI side routes alike. An exception that is
    not a :class:`GatewayError` is the gateway's own bug: a 500 that reveals nothing."""
    headers: list[tuple[bytes, bytes]] = []
    if isinstance(exc, UpstreamStatusError):
        body = error_body(exc.message, exc.type, code=exc.upstream_code, param=exc.param)
    elif isinstance(exc, GatewayError):
        body = error_body(exc.message, exc.type, code=exc.code, param=exc.param)
        if isinstance(exc, TooManyRequests):
            headers.append((b"retry-after", str(exc.retry_after).encode()))
        elif isinstance(exc, MethodNotAllowed):
            headers.append((b"allow", exc.allow.encode()))
    else:
        return 500, orjson.dumps(INTERNAL_ERROR), headers
    return exc.status, orjson.dumps(body), headers


INTERNAL_ERROR = error_body("Internal gateway error", "server_error", code="internal_error")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Open):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


class ChatMessage(_Open):
    #: OpenAI's roles and custom ones (``ipython`` for Llama 3.1 tools): vLLM accepts any
    role: str = Field(min_length=1, max_length=64)
    content: str | list[dict[str, Any]] | None = None


class _Sampling(_Open):
    model: str = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]


Endpoint = Literal["chat", "completions"]
#: the OpenAI path of each endpoint (the same path on the gateway and on vLLM)
ENDPOINT_PATHS: dict[Endpoint, str] = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
}
_MODELS: dict[Endpoint, type[_Sampling]] = {
    "chat": ChatCompletionRequest,
    "completions": CompletionRequest,
}


def parse_request(raw: bytes, endpoint: Endpoint) -> dict[str, Any]:
    """Decode and validate a request body; return it as the plain dict the client sent.

    Raises :class:`RequestError` naming the offending field.
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError("Request body must be a JSON object")
    try:
        _MODELS[endpoint].model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        param = ".".join(str(p) for p in err["loc"])
        raise RequestError(f"{param}: {err['msg']}", param=param) from None
    return data


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema with every ``$ref`` inlined (for an OpenAPI request body)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.split("/")[-1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)  # type: ignore[no-any-return]
