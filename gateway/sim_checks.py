"""What the simulated vLLM refuses, with vLLM 0.32's own messages, in vLLM's order (request
validation, model name, renderer, sampling params); and how big the sim counts a prompt.

Messages read from ``vllm/entrypoints/openai`` and ``vllm/renderers``, held to recordings
of the real server by ``tests/test_sim_fidelity.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Refusal:
    """An OpenAI-style error vLLM answers before generating (``status`` usually 400)."""

    message: str
    type: str = "BadRequestError"
    param: str | None = None
    status: int = 400

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.status,
            }
        }


def param_error(
    message: str, param: str, value: Any = None, *, show_value: bool = False
) -> Refusal:
    """vLLM's ``VLLMValidationError``: the parameter (and value) appended to the message."""
    suffix = f"parameter={param}, value={value}" if show_value else f"parameter={param}"
    return Refusal(f"{message} ({suffix})", param=param)


def missing_field(body: dict[str, Any], name: str) -> Refusal:
    """FastAPI's request-validation error for a missing required field."""
    detail = (
        f"{{'type': 'missing', 'loc': 'body.{name}', 'msg': 'Field required', "
        f"'input': '<dict of {len(body)} items>'}}"
    )
    return Refusal(f"1 validation error:\n  {detail}", type="Bad Request", param=f"body.{name}")


@dataclass(slots=True)
class Caps:
    """What the simulated server was started with (vLLM's flags)."""

    max_model_len: int = 131072
    reasoning_parser: str | None = None  # "deepseek_r1": split at </think>
    tool_parser: str | None = None  # "hermes" with enable_auto_tools
    enable_auto_tools: bool = False


# ---------------------------------------------------------------------------------------------
# prompt size


def _words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):  # content parts
        return sum(_words(p.get("text")) for p in value if isinstance(p, dict))
    return 0


def chat_prompt_tokens(messages: list[Any]) -> int:
    """The sim's prompt size: words of every message plus 4 per message (its template)."""
    return sum(_words(m.get("content")) + 4 for m in messages if isinstance(m, dict))


def completion_prompts(prompt: Any) -> list[tuple[int, bool]]:
    """Each prompt's size and whether it was token ids: ``str``, ``[str]``, ``[int]``,
    ``[[int]]``."""
    if isinstance(prompt, str):
        return [(len(prompt.split()), False)]
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        return [(len(prompt), True)]
    if isinstance(prompt, list):
        out: list[tuple[int, bool]] = []
        for p in prompt:
            if isinstance(p, str):
                out.append((len(p.split()), False))
            elif isinstance(p, list):
                out.append((len(p), True))
            else:
                raise TypeError("prompt")
        return out
    raise TypeError("prompt")


# ---------------------------------------------------------------------------------------------
# refusals, in vLLM's order: request validation, model, rendering, sampling params


def check_chat_body(body: dict[str, Any]) -> Refusal | None:
    """``ChatCompletionRequest``'s validators (run before the model is looked up)."""
    if "messages" not in body:
        return missing_field(body, "messages")
    if not isinstance(body["messages"], list):
        raise TypeError("messages")
    if body.get("stream_options") and not body.get("stream"):
        return param_error(
            "Stream options can only be defined when `stream=True`.", "stream_options"
        )
    if (r := _check_tools(body)) is not None:
        return r
    rf = body.get("response_format")
    if isinstance(rf, dict) and rf.get("type") == "json_schema" and rf.get("json_schema") is None:
        return param_error(
            "When response_format type is 'json_schema', the 'json_schema' field must be provided.",
            "response_format",
        )
    return check_budget_value(body)


def check_budget_value(body: dict[str, Any]) -> Refusal | None:
    budget = body.get("thinking_token_budget")
    if budget is not None and (
        isinstance(budget, bool) or not isinstance(budget, int) or budget < -1
    ):
        return param_error(
            "`thinking_token_budget` must be a non-negative integer or -1 for unlimited.",
            "thinking_token_budget",
            budget,
            show_value=True,
        )
    return None


def _check_tools(body: dict[str, Any]) -> Refusal | None:
    tools = body.get("tools")
    if tools == []:
        return param_error(
            "`tools` must not be an empty array. Either provide at least one tool or omit "
            "the field entirely.",
            "tools",
        )
    choice = body.get("tool_choice", "auto" if tools else "none")
    if choice is None or choice == "none":
        return None
    if tools is None:
        return param_error("When using `tool_choice`, `tools` must be set.", "tool_choice")
    if choice not in ("auto", "required") and not isinstance(choice, dict):
        return param_error(
            f'Invalid value for `tool_choice`: {choice}! Only named tools, "none", '
            '"auto" or "required" are supported.',
            "tool_choice",
        )
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if not any((t.get("function") or {}).get("name") == name for t in tools):
            return param_error(
                "The tool specified in `tool_choice` does not match any of the specified `tools`",
                "tool_choice",
            )
    return None


MAX_N = 16384  # VLLM_MAX_N_SEQUENCES
MAX_PROMPTS = 1024  # VLLM_MAX_COMPLETION_PROMPTS


def check_completion_body(body: dict[str, Any]) -> Refusal | None:
    prompt = body.get("prompt")
    if prompt is None or prompt == "":
        return param_error(
            "Either prompt or prompt_embeds must be provided and non-empty.", "prompt"
        )
    if (
        isinstance(prompt, list)
        and not all(isinstance(p, int) for p in prompt)
        and len(prompt) > MAX_PROMPTS
    ):
        return param_error(
            f"prompt list length {len(prompt)} exceeds the maximum allowed count of "
            f"{MAX_PROMPTS}. To increase this limit, set the VLLM_MAX_COMPLETION_PROMPTS "
            "environment variable.",
            "prompt",
        )
    if body.get("stream_options") and not body.get("stream"):
        return param_error(
            "Stream options can only be defined when `stream=True`.", "stream_options"
        )
    return check_budget_value(body)


def tool_choice_of(body: dict[str, Any]) -> Any:
    return body.get("tool_choice", "auto" if body.get("tools") else "none")


def check_tool_parser(body: dict[str, Any], caps: Caps) -> Refusal | None:
    """The renderer's refusal when a tool call is asked of a server without a tool parser."""
    choice = tool_choice_of(body)
    if caps.tool_parser is not None or choice in (None, "none"):
        return None
    if choice == "auto":
        if caps.enable_auto_tools:
            return None
        return Refusal(
            '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
        )
    desc = f'function "{choice["function"]["name"]}"' if isinstance(choice, dict) else f'"{choice}"'
    return Refusal(f"tool_choice={desc} requires --tool-call-parser to be set")


def check_lengths(
    prompt_tokens: int,
    token_ids: bool,
    max_tokens: Any,
    param: str,
    caps: Caps,
) -> Refusal | int:
    """vLLM's context checks; returns the effective ``max_tokens`` (clamped, not refused,
    when prompt + max_tokens exceeds max_model_len)."""
    limit = caps.max_model_len
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > limit:
        return param_error(
            f"{param}={max_tokens} cannot be greater than max_model_len={limit}. "
            "Please request fewer output tokens.",
            param,
            max_tokens,
            show_value=True,
        )
    if prompt_tokens > limit:
        # text prompts are tokenized with truncation at max_model_len + 1
        n = prompt_tokens if token_ids else limit + 1
        qualifier = "at least " if n == limit + 1 else ""
        return param_error(
            f"This model's maximum context length is {limit} tokens. However, your prompt "
            f"contains {qualifier}{n} input tokens, which exceeds this limit even without any "
            "output tokens. Please reduce the length of the input prompt.",
            "input_tokens",
            n,
            show_value=True,
        )
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)):
        raise TypeError("max_tokens")
    room = limit - prompt_tokens
    effective = room if max_tokens is None else min(max_tokens, room)
    if effective < 1:
        return param_error(
            f"max_tokens must be at least 1, got {effective}.",
            "max_tokens",
            effective,
            show_value=True,
        )
    return effective


def check_n(n: Any) -> Refusal | int:
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int):
        return Refusal(f"n must be an int, but is of type {type(n)}")
    if n < 1:
        return Refusal(f"n must be at least 1, got {n}.")
    if n > MAX_N:
        return Refusal(
            f"n must be at most {MAX_N}, got {n}. To increase this limit, set the "
            "VLLM_MAX_N_SEQUENCES environment variable."
        )
    return n


BUDGET_WITHOUT_PARSER = Refusal(
    "thinking_token_budget is set but reasoning_config is not configured. Please set "
    "--reasoning-parser and/or --reasoning-config to use thinking_token_budget."
)
