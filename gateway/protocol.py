"""OpenAI wire types the gateway touches, the finish_reason set, SSE framing, error bodies.

Requests are validated once, at the edge, with pydantic models that keep unknown fields
(``extra="allow"``): vLLM's extra sampling parameters must pass through untouched. The
per-chunk path never builds pydantic models; it uses plain dicts and orjson.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import (
    GatewayError,
    GatewayOverloaded,
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
        if isinstance(exc, TooManyRequests | GatewayOverloaded):
            headers.append((b"retry-after", str(exc.retry_after).encode()))
        elif isinstance(exc, MethodNotAllowed):
            headers.append((b"allow", exc.allow.encode()))
    else:
        return 500, orjson.dumps(INTERNAL_ERROR), headers
    return exc.status, orjson.dumps(body), headers


INTERNAL_ERROR = error_body("Internal gateway error", "server_error", code="internal_error")


class _Open(BaseModel):
    """Strict: the types OpenAI documents, no coercion (``"stream": "false"`` is a 400, not a
    stream to the gateway and a non-stream to vLLM). Unknown fields pass through."""

    model_config = ConfigDict(extra="allow", strict=True)


class StreamOptions(_Open):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


class ContentPart(_Open):
    type: str = Field(min_length=1, max_length=64)
    text: str | None = None

    @model_validator(mode="after")
    def _text_part(self) -> ContentPart:
        if self.type == "text" and self.text is None:
            raise ValueError("a text part needs a string `text`")
        return self


class ToolCall(_Open):
    id: str | None = None
    type: str | None = None
    function: dict[str, Any] | None = None


class ChatMessage(_Open):
    #: OpenAI's roles and custom ones (``ipython`` for Llama 3.1 tools): vLLM accepts any
    role: str = Field(min_length=1, max_length=64)
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCall] | None = None


class _Sampling(_Open):
    model: str = Field(min_length=1, max_length=256)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    user: str | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(min_length=1)
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool | None = None
    suffix: str | None = None


# -- the Responses API (#15): the fields the gateway reads or rewrites, typed as OpenAI
# documents them; item types it does not touch pass through as objects


_TEXT_PARTS = frozenset({"input_text", "output_text", "text", "reasoning_text", "summary_text"})


class ItemPart(_Open):
    type: str = Field(min_length=1, max_length=64)
    text: str | None = None

    @model_validator(mode="after")
    def _text_part(self) -> ItemPart:
        if self.type in _TEXT_PARTS and self.text is None:
            raise ValueError(f"a {self.type} part needs a string `text`")
        return self


class InputItem(_Open):
    """A message (``role`` + ``content``), a reasoning item, a function call or its output,
    or any other item type (passed through)."""

    type: str | None = Field(default=None, min_length=1, max_length=64)
    role: str | None = Field(default=None, min_length=1, max_length=64)
    content: str | list[ItemPart] | None = None
    summary: list[ItemPart] | None = None
    status: str | None = None
    arguments: str | None = None
    call_id: str | None = None
    name: str | None = None


class ReasoningOptions(_Open):
    effort: str | None = None
    summary: str | None = None


class ResponsesRequest(_Open):
    model: str = Field(min_length=1, max_length=256)
    input: str | list[InputItem]
    instructions: str | None = None
    stream: bool | None = False
    background: bool | None = False
    store: bool | None = None
    previous_response_id: str | None = Field(default=None, min_length=1, max_length=256)
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    reasoning: ReasoningOptions | None = None
    text: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    include: list[str] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


#: a token id counts as this many characters towards ``limits.max_prompt_chars``
CHARS_PER_TOKEN_ID = 4


def _text_chars(value: Any, depth: int = 0) -> int:
    """Characters of the strings in a message (contents, names, tool calls, parts, data
    URLs), a few levels deep (deeper structure does not reach the model as text)."""
    if isinstance(value, str):
        return len(value)
    if depth > 4:
        return 0
    if isinstance(value, dict):
        return sum(_text_chars(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return sum(_text_chars(v, depth + 1) for v in value)
    return 0


def prompt_chars(body: dict[str, Any]) -> int:
    """What reaches the model, in characters: every string of the messages (or the prompt,
    with :data:`CHARS_PER_TOKEN_ID` per token id; or a Responses request's input items and
    instructions), the tool and function definitions as JSON, and a completion's
    ``suffix``."""
    chars = 0
    messages = body.get("messages")
    if messages is not None:
        chars += _text_chars(messages)
    items = body.get("input")  # Responses: input items (or a string) and the instructions
    if items is not None:
        chars += _text_chars(items)
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        chars += len(instructions)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        chars += len(prompt)
    elif isinstance(prompt, list):
        for p in prompt:
            if isinstance(p, str):
                chars += len(p)
            elif isinstance(p, int):
                chars += CHARS_PER_TOKEN_ID
            elif isinstance(p, list):
                chars += CHARS_PER_TOKEN_ID * len(p)
    for key in ("tools", "functions", "documents"):
        value = body.get(key)
        if value:
            try:
                chars += len(orjson.dumps(value))
            except orjson.JSONEncodeError:
                raise RequestError(f"{key}: nested too deeply", param=key) from None
    suffix = body.get("suffix")
    if isinstance(suffix, str):
        chars += len(suffix)
    return chars


#: ``responses_get`` / ``responses_cancel``: ``GET /v1/responses/{id}`` and
#: ``POST /v1/responses/{id}/cancel`` (a stored response; no body to validate)
Endpoint = Literal["chat", "completions", "responses", "responses_get", "responses_cancel"]
#: the OpenAI path of each endpoint that takes a body (the same path on the gateway and on vLLM)
ENDPOINT_PATHS: dict[Endpoint, str] = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "responses": "/v1/responses",
}
#: the endpoints of a stored response, by the path's tail after the id
STORED_ENDPOINTS: dict[str, Endpoint] = {"": "responses_get", "/cancel": "responses_cancel"}
_MODELS: dict[Endpoint, type[_Open]] = {
    "chat": ChatCompletionRequest,
    "completions": CompletionRequest,
    "responses": ResponsesRequest,
}


def parse_request(
    raw: bytes, endpoint: Endpoint, deployment: str | None = None
) -> tuple[dict[str, Any], int]:
    """Decode and validate a request body; return it as the plain dict the client sent,
    and its size in characters (see :func:`prompt_chars`).

    Raises :class:`RequestError` naming the offending field.
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError("Request body must be a JSON object")
    if deployment is not None:  # an Azure-style path names the model
        if data.setdefault("model", deployment) != deployment:
            raise RequestError(
                f"model: the path names deployment `{deployment}`, the body `{data['model']}`",
                param="model",
            )
    try:
        _MODELS[endpoint].model_validate(data)
    except ValidationError as exc:
        errors = [(_param(data, e["loc"]), e["msg"]) for e in exc.errors(include_url=False)]
        # through a union (str | list of parts), the deepest error is the meaningful one
        param, msg = max(errors, key=lambda e: len(e[0]))
        text = ".".join(str(p) for p in param)
        raise RequestError(f"{text}: {msg}", param=text or None) from None
    return data, prompt_chars(data)


def _param(data: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The error location as a path in the client's JSON: pydantic's union tags
    (``str``, ``list[ContentPart]``, ...) are not keys of the data and are dropped."""
    path = []
    node = data
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and not path_tag(part):
            node = None  # a missing field: still part of the path
        else:
            continue
        path.append(part)
    return tuple(path)


def path_tag(part: str) -> bool:
    """pydantic's names for union members and validators, never field names."""
    return any(c in part for c in "[]-(") or part in ("str", "int", "float", "bool", "list")


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
