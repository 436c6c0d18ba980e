"""What the simulated vLLM generates for a request, and what it refuses: pure functions.

No I/O here, so the rules can be tested without sockets. ``gateway.sim`` renders the plans
as vLLM's chat/completions wire format, ``gateway.sim_responses`` as the Responses API.
Every refusal carries vLLM 0.32's own message (read from its ``entrypoints/openai`` source
and held to recordings of the real server by ``tests/test_sim_fidelity.py``).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .sim_checks import Caps, tool_choice_of

Token = tuple[int, str]
_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    """``prefix`` + 16 hex digits, as vLLM's ids look (``chatcmpl-…``, ``resp_…``)."""
    return f"{prefix}{next(_ids):016x}"


# The sim's vocabulary for the pieces it builds itself (Qwen2.5's ids where Qwen has one).
THINK_END: Token = (151649, "</think>")
TOOL_START_ID = 151657  # <tool_call>
TOOL_END_ID = 151658  # </tool_call>
TOOL_NAME_ID = 151700  # '\n{"name": "f", "arguments": '
TOOL_ARGS_ID = 151701  # a slice of the arguments' JSON text
TOOL_CLOSE_ID = 151702  # '}\n'
TEXT_ID = 151703  # a slice of structured-output text
TOOL_IDS = frozenset((TOOL_START_ID, TOOL_NAME_ID, TOOL_ARGS_ID, TOOL_CLOSE_ID, TOOL_END_ID))
PIECE = 4  # characters per generated slice (arguments, JSON output)
EOS_ID = 151643  # DeepSeek-R1's <｜end▁of▁sentence｜>


# ---------------------------------------------------------------------------------------------
# what is generated


@dataclass(slots=True)
class Choice:
    """One sequence: the tokens emitted, and how it ended."""

    tokens: list[Token]
    finish: str | None
    stop_reason: int | str | None
    tool_calls: list[tuple[str, str]] = field(default_factory=list)  # (name, arguments)


def thinking_off(body: dict[str, Any]) -> bool:
    """``enable_thinking`` as vLLM resolves it: the client's kwarg, else reasoning_effort."""
    kwargs = body.get("chat_template_kwargs") or {}
    if isinstance(kwargs, dict) and "enable_thinking" in kwargs:
        return kwargs["enable_thinking"] is False
    return body.get("reasoning_effort") == "none"


def prompt_closed_think(body: dict[str, Any], chat: bool) -> bool:
    """The prompt itself closed the think block: a continued final assistant message
    (``continue_final_message``) or a completions prompt whose last ``<think>`` is closed.
    The model then generates only the answer, and vLLM's streaming reasoning parser (which
    checks the prompt) puts it in ``content``."""
    if chat:
        msgs = body.get("messages")
        if not body.get("continue_final_message") or not isinstance(msgs, list) or not msgs:
            return False
        last = msgs[-1]
        if not isinstance(last, dict) or last.get("role") != "assistant":
            return False
        text = last.get("content")
    else:
        text = body.get("prompt")
    return isinstance(text, str) and text.rfind("</think>") > text.rfind("<think>")


def render_prompt(body: dict[str, Any]) -> str:
    """The prompt text vLLM returns with ``return_prompt_text`` (the sim's ChatML-like
    template: the generation prompt opens ``<think>\n``, or closes an empty block with
    thinking off, as the script assumes)."""
    msgs = [m for m in body.get("messages") or () if isinstance(m, dict)]
    cont = bool(body.get("continue_final_message")) and bool(msgs)
    out = []
    for i, m in enumerate(msgs):
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(
                p.get("text") or ""
                for p in content
                if isinstance(p, dict) and p.get("type") == "text"
            )
        text = content if isinstance(content, str) else ""
        if cont and i == len(msgs) - 1:
            out.append(f"<|im_start|>{m.get('role')}\n{text}")
            return "".join(out)
        out.append(f"<|im_start|>{m.get('role')}\n{text}<|im_end|>\n")
    if body.get("add_generation_prompt", True):
        out.append("<|im_start|>assistant\n")
        out.append("<think>\n\n</think>\n\n" if thinking_off(body) else "<think>\n")
    return "".join(out)


def split_think(script: list[Token]) -> tuple[list[Token], Token | None, list[Token]]:
    for i, tok in enumerate(script):
        if tok[1] == "</think>":
            return script[:i], tok, script[i + 1 :]
    return script, None, []


def shape_thinking(script: list[Token], *, off: bool, budget: int | None) -> list[Token]:
    """The template opened ``<think>\\n`` (R1, Qwen3-Thinking). With thinking off (Qwen3's
    template closes an empty think block) only the answer is generated. A budget B is
    enforced as vLLM's sampler does: the ``\\n`` after ``<think>`` in the prompt counts, so
    B - 1 reasoning tokens are generated, then ``</think>`` is forced."""
    reasoning, end, answer = split_think(script)
    if off:
        return answer if end is not None else []
    if budget is None or budget < 0:
        return script
    keep = max(0, budget - 1)
    if end is not None and len(reasoning) <= keep:
        return script
    return [*reasoning[:keep], end or THINK_END, *answer]


def pieces(text: str, token_id: int) -> list[Token]:
    return [(token_id, text[i : i + PIECE]) for i in range(0, len(text), PIECE)]


def schema_instance(schema: Any, depth: int = 0) -> Any:
    """A small value that satisfies a JSON schema (the sim's 'model' under a grammar)."""
    if depth > 32 or not isinstance(schema, dict):
        return {}
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return schema_instance(schema[key][0], depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        props: dict[str, Any] = (
            schema["properties"] if isinstance(schema.get("properties"), dict) else {}
        )
        required = schema.get("required")
        names: list[Any] = required if isinstance(required, list) else list(props)
        return {str(k): schema_instance(props.get(k, {}), depth + 1) for k in names[:64]}
    if kind == "array":
        count: int = schema["minItems"] if isinstance(schema.get("minItems"), int) else 0
        return [schema_instance(schema.get("items", {}), depth + 1) for _ in range(min(count, 8))]
    if kind == "string":
        return ""
    if kind in ("integer", "number"):
        low = schema.get("minimum")
        return low if isinstance(low, int | float) and not isinstance(low, bool) else 0
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return {}


def structured_text(body: dict[str, Any], sim: dict[str, Any]) -> str | None:
    """The JSON text a structured-output request gets (``response_format`` or the Responses
    ``text.format``); ``sim.json`` scripts the value."""
    rf = body.get("response_format")
    text = body.get("text")
    if rf is None and isinstance(text, dict):
        rf = text.get("format")
    if not isinstance(rf, dict) or rf.get("type") not in ("json_object", "json_schema"):
        return None
    if "json" in sim:
        return json.dumps(sim["json"], ensure_ascii=False)
    if rf["type"] == "json_object":
        return "{}"
    holder: dict[str, Any] = rf["json_schema"] if isinstance(rf.get("json_schema"), dict) else rf
    return json.dumps(schema_instance(holder.get("schema")), ensure_ascii=False)


def planned_tool_calls(
    body: dict[str, Any], sim: dict[str, Any], caps: Caps, *, responses: bool = False
) -> list[tuple[str, str]]:
    """The calls the sim's 'model' makes: ``sim.tool_calls`` (``[{"name", "arguments"}]``),
    else the named tool, else (``required``) the first tool; none for ``auto``."""
    if caps.tool_parser is None or not body.get("tools"):
        return []
    choice = tool_choice_of(body) if not responses else body.get("tool_choice", "auto")
    if choice in (None, "none"):
        return []
    scripted = sim.get("tool_calls")
    if isinstance(scripted, list) and scripted:
        out = []
        for call in scripted:
            args = call.get("arguments", {})
            out.append((str(call["name"]), args if isinstance(args, str) else json.dumps(args)))
        return out
    tools = [t for t in body["tools"] if isinstance(t, dict)]

    def fn(tool: dict[str, Any]) -> dict[str, Any]:
        return tool if responses else (tool.get("function") or {})

    if isinstance(choice, dict):
        name = choice.get("name") if responses else (choice.get("function") or {}).get("name")
        tool = next((t for t in tools if fn(t).get("name") == name), {})
    elif choice == "required" and tools:
        tool = tools[0]
    else:
        return []
    return [(str(fn(tool).get("name")), json.dumps(schema_instance(fn(tool).get("parameters"))))]


def tool_call_tokens(calls: list[tuple[str, str]]) -> list[Token]:
    """Hermes-format tool-call tokens, as a Qwen model writes them."""
    out: list[Token] = []
    for name, args in calls:
        out.append((TOOL_START_ID, "<tool_call>"))
        out.append((TOOL_NAME_ID, f'\n{{"name": {json.dumps(name)}, "arguments": '))
        out.extend(pieces(args, TOOL_ARGS_ID))
        out.append((TOOL_CLOSE_ID, "}\n"))
        out.append((TOOL_END_ID, "</tool_call>"))
    return out


def parse_tool_calls(tokens: list[Token]) -> tuple[str, list[tuple[str, str]]] | None:
    """Non-streaming hermes parse: (text before the first call, calls), or None when a
    call is incomplete (then vLLM returns the raw text as content)."""
    if not any(t[0] == TOOL_START_ID for t in tokens):
        return None
    before: list[str] = []
    calls: list[tuple[str, str]] = []
    name = ""
    args: list[str] | None = None
    closed = True
    for tid, text in tokens:
        if tid == TOOL_START_ID:
            closed = False
            args = None
        elif tid == TOOL_NAME_ID:
            name = json.loads(text.split('"name": ', 1)[1].rsplit(', "arguments"', 1)[0])
            args = []
        elif tid == TOOL_ARGS_ID and args is not None:
            args.append(text)
        elif tid == TOOL_CLOSE_ID and args is not None:
            calls.append((name, "".join(args)))
            closed = True
        elif calls == [] and closed and tid not in (TOOL_END_ID,):
            before.append(text)
    if not closed:
        return None
    return "".join(before), calls


def count_reasoning_tokens(tokens: list[Token]) -> int:
    """vLLM's ``count_reasoning_tokens``: tokens between a *generated* ``<think>`` and
    ``</think>``. With the think block opened by the template (R1) this is 0."""
    count = depth = 0
    for _, text in tokens:
        if text == "<think>":
            depth += 1
        elif text == "</think>":
            depth = max(0, depth - 1)
        elif depth:
            count += 1
    return count


def plan(
    script: list[Token],
    body: dict[str, Any],
    max_tokens: int,
    eos_token_id: int | None,
) -> Choice:
    """Which tokens are emitted, and how generation ends (finish_reason, stop_reason)."""
    stop_ids = set(body.get("stop_token_ids") or ())
    if eos_token_id is not None and not body.get("ignore_eos"):
        stop_ids.add(eos_token_id)
    stops = body.get("stop") or []
    if isinstance(stops, str):
        stops = [stops]
    out: list[Token] = []
    text = ""
    for tid, piece in script:
        if tid in stop_ids:
            out.append((tid, ""))
            return Choice(out, "stop", None if tid == eos_token_id else tid)
        for s in stops:
            j = (text + piece).find(s)
            if j != -1:
                out.append((tid, (text + piece)[len(text) : j] if j >= len(text) else ""))
                return Choice(out, "stop", s)
        out.append((tid, piece))
        text += piece
        if len(out) >= max_tokens:
            return Choice(out, "length", None)
    # The script ran out: as if the model emitted its eos.
    return Choice(out, "stop", None)


class StreamParser:
    """What vLLM's streaming parsers (``deepseek_r1`` reasoning, ``hermes`` tools) make of
    each step's tokens for one choice: a chat ``delta`` dict.

    Reasoning: text before ``</think>`` is ``reasoning`` (also when empty), the end token
    alone gives ``{}``, text after it is ``content``. Tool calls: the name piece opens a call
    (``id``, ``type``, ``index``, ``function.name``; ``content`` null), argument pieces follow
    as ``{"index", "function": {"arguments"}}``, the markup gives nothing.
    """

    __slots__ = ("in_reasoning", "new_id", "tool_index", "tool_mode", "tools_streamed")

    def __init__(self, *, reasoning: bool, tool_mode: Any, new_id: Callable[[str], str]) -> None:
        self.in_reasoning = reasoning
        self.tool_mode = tool_mode
        self.tool_index = 0
        self.tools_streamed = False
        self.new_id = new_id

    def delta(self, group: list[Token]) -> dict[str, Any]:
        if self.tool_mode is None and not self.in_reasoning:
            return {"content": "".join(p for _, p in group)}
        reasoning: list[str] | None = None
        content: list[str] = []
        calls: list[dict[str, Any]] = []
        for tid, text in group:
            if self.tool_mode is not None and tid in TOOL_IDS:
                if tid == TOOL_NAME_ID:
                    name = text.split('"name": ', 1)[1].rsplit(', "arguments"', 1)[0]
                    calls.append(
                        {
                            "id": self.new_id("chatcmpl-tool-"),
                            "type": "function",
                            "index": self.tool_index,
                            "function": {"name": json.loads(name)},
                        }
                    )
                    self.tools_streamed = True
                elif tid == TOOL_ARGS_ID:
                    last = calls[-1] if calls else None
                    if last is not None and "id" not in last:  # more arguments, same call
                        last["function"]["arguments"] += text
                    else:
                        calls.append({"index": self.tool_index, "function": {"arguments": text}})
                elif tid == TOOL_END_ID:
                    self.tool_index += 1
                continue
            if self.in_reasoning:
                if text == "</think>":  # the end token alone: nothing to show
                    self.in_reasoning = False
                    continue
                before, sep, after = text.partition("</think>")
                reasoning = reasoning or []
                reasoning.append(before)
                if sep:
                    self.in_reasoning = False
                    if after:
                        content.append(after)
                continue
            content.append(text)
        out: dict[str, Any] = {}
        if reasoning is not None:
            out["reasoning"] = "".join(reasoning)
        if calls:
            out["content"] = "".join(content) or None
            out["tool_calls"] = calls
        elif content:
            out["content"] = "".join(content)
        return out
