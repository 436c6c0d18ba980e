"""Responses API output items and stream events of the simulated vLLM (vLLM 0.32's
``SimpleStreamingEventProcessor`` and ``build_response_output_items``; key order as the
openai SDK's models dump them, which vLLM serialises)."""

from __future__ import annotations

from typing import Any

from . import sim_plan as sp
from .sim_plan import new_id

Event = dict[str, Any]


def normalized_tool(tool: Any) -> Any:
    """A function tool as vLLM echoes it (the openai SDK's ``FunctionTool`` dump)."""
    if not isinstance(tool, dict) or tool.get("type") != "function":
        return tool
    return {
        "name": tool.get("name"),
        "parameters": tool.get("parameters"),
        "strict": tool.get("strict"),
        "type": "function",
        "allowed_callers": tool.get("allowed_callers"),
        "async": tool.get("async"),
        "defer_loading": tool.get("defer_loading"),
        "description": tool.get("description"),
        "output_schema": tool.get("output_schema"),
    }


def normalized_text(text: Any) -> Any:
    if not isinstance(text, dict):
        return text
    fmt = text.get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        fmt = {
            "name": fmt.get("name"),
            "schema": fmt.get("schema"),
            "type": "json_schema",
            "description": fmt.get("description"),
            "strict": fmt.get("strict"),
        }
    return {"format": fmt, "verbosity": text.get("verbosity")}


def normalized_reasoning(reasoning: Any) -> Any:
    if not isinstance(reasoning, dict):
        return reasoning
    return {
        "context": reasoning.get("context"),
        "effort": reasoning.get("effort"),
        "generate_summary": reasoning.get("generate_summary"),
        "mode": reasoning.get("mode"),
        "summary": reasoning.get("summary"),
    }


def usage(prompt: int, output: int, reasoning: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": 0,
            "cache_write_tokens": 0,
            "input_tokens_per_turn": [],
            "cached_tokens_per_turn": [],
        },
        "output_tokens": output,
        "output_tokens_details": {
            "reasoning_tokens": reasoning,
            "tool_output_tokens": 0,
            "output_tokens_per_turn": [],
            "tool_output_tokens_per_turn": [],
        },
        "total_tokens": prompt + output,
    }


def message_item(item_id: str, text: str, status: str | None, parts: bool = True) -> Event:
    part: Event = {"annotations": [], "text": text, "type": "output_text", "logprobs": None}
    return {
        "id": item_id,
        "content": [part] if (parts and text) else [],
        "role": "assistant",
        "status": status,
        "type": "message",
        "phase": None,
    }


def reasoning_item(item_id: str, text: str | None, status: str | None) -> Event:
    return {
        "id": item_id,
        "summary": [],
        "type": "reasoning",
        "content": None if text is None else [{"text": text, "type": "reasoning_text"}],
        "encrypted_content": None,
        "status": status,
    }


def call_item(item_id: str, call_id: str, name: str, args: str, status: str) -> Event:
    return {
        "arguments": args,
        "call_id": call_id,
        "name": name,
        "type": "function_call",
        "id": item_id,
        "async": None,
        "caller": None,
        "namespace": None,
        "status": status,
    }


class ItemStream:
    """vLLM's ``SimpleStreamingEventProcessor``: one open output item at a time (reasoning,
    message or function call); a delta of another kind closes it and opens the next."""

    def __init__(self, *, parser: bool, reasoning: bool, tool_mode: Any) -> None:
        self.parser = (
            sp.StreamParser(reasoning=reasoning, tool_mode=tool_mode, new_id=new_id)
            if parser
            else None
        )
        self.state: str | None = None
        self.output_index = 0
        self.item_id = ""
        self.text = ""
        self.call: tuple[str, str, int] = ("", "", 0)  # call_id, name, index
        self.items: list[Event] = []

    def feed(self, group: list[sp.Token]) -> list[Event]:
        if self.parser is None:
            delta: dict[str, Any] = {"content": "".join(t for _, t in group)}
        else:
            delta = self.parser.delta(group)
        events: list[Event] = []
        parts: list[tuple[str, Any]] = []
        if "reasoning" in delta:
            parts.append(("reasoning", delta["reasoning"]))
        if delta.get("content"):
            parts.append(("content", delta["content"]))
        for call in delta.get("tool_calls") or ():
            parts.append(("tool", call))
        for kind, value in parts:
            if kind == "tool":
                index = value["index"]
                if "id" in value:  # a new call
                    events += self.close()
                    events += self.open_call(value["id"], value["function"]["name"], index)
                    continue
                if self.state != "tool" or self.call[2] != index:
                    continue
                events.append(self.event_arguments(value["function"]["arguments"]))
                continue
            if self.state != kind:
                events += self.close()
                events += self.open(kind)
            self.text += value
            if kind == "content":
                events.append(
                    {
                        "content_index": 0,
                        "delta": value,
                        "item_id": self.item_id,
                        "logprobs": [],
                        "output_index": self.output_index,
                        "sequence_number": 0,
                        "type": "response.output_text.delta",
                    }
                )
            else:
                events.append(
                    {
                        "content_index": 0,
                        "delta": value,
                        "item_id": self.item_id,
                        "output_index": self.output_index,
                        "sequence_number": 0,
                        "type": "response.reasoning_text.delta",
                    }
                )
        return events

    def open(self, kind: str) -> list[Event]:
        self.state = kind
        self.text = ""
        if kind == "content":
            self.item_id = new_id("msg_")
            item: Event = message_item(self.item_id, "", "in_progress")
            part: Event = {"annotations": [], "text": "", "type": "output_text", "logprobs": []}
        else:
            self.item_id = new_id("rs_")
            item = reasoning_item(self.item_id, None, "in_progress")
            part = {"text": "", "type": "reasoning_text"}
        return [
            {
                "item": item,
                "output_index": self.output_index,
                "sequence_number": 0,
                "type": "response.output_item.added",
            },
            {
                "content_index": 0,
                "item_id": self.item_id,
                "output_index": self.output_index,
                "part": part,
                "sequence_number": 0,
                "type": "response.content_part.added",
            },
        ]

    def open_call(self, call_id: str, name: str, index: int) -> list[Event]:
        self.state = "tool"
        self.text = ""
        self.item_id = new_id("fc_")
        self.call = (call_id, name, index)
        return [
            {
                "item": call_item(self.item_id, call_id, name, "", "in_progress"),
                "output_index": self.output_index,
                "sequence_number": 0,
                "type": "response.output_item.added",
            }
        ]

    def event_arguments(self, text: str) -> Event:
        self.text += text
        return {
            "delta": text,
            "item_id": self.item_id,
            "output_index": self.output_index,
            "sequence_number": 0,
            "type": "response.function_call_arguments.delta",
        }

    def close(self) -> list[Event]:
        state, text, oi, item_id = self.state, self.text, self.output_index, self.item_id
        if state is None:
            return []
        self.state = None
        self.output_index += 1
        if state == "tool":
            call_id, name, _ = self.call
            item = call_item(item_id, call_id, name, text, "completed")
            self.items.append(item)
            return [
                {
                    "arguments": text,
                    "item_id": item_id,
                    "output_index": oi,
                    "sequence_number": 0,
                    "type": "response.function_call_arguments.done",
                    "name": name,
                },
                {
                    "item": item,
                    "output_index": oi,
                    "sequence_number": 0,
                    "type": "response.output_item.done",
                },
            ]
        if state == "content":
            item = message_item(item_id, text, "completed")
            part: Event = {"annotations": [], "text": text, "type": "output_text", "logprobs": None}
            done: Event = {
                "content_index": 0,
                "item_id": item_id,
                "logprobs": [],
                "output_index": oi,
                "sequence_number": 0,
                "text": text,
                "type": "response.output_text.done",
            }
        else:
            item = reasoning_item(item_id, text, "completed")
            part = {"text": text, "type": "reasoning_text"}
            done = {
                "content_index": 0,
                "item_id": item_id,
                "output_index": oi,
                "sequence_number": 0,
                "text": text,
                "type": "response.reasoning_text.done",
            }
        self.items.append(item)
        return [
            done,
            {
                "content_index": 0,
                "item_id": item_id,
                "output_index": oi,
                "part": part,
                "sequence_number": 0,
                "type": "response.content_part.done",
            },
            {
                "item": item,
                "output_index": oi,
                "sequence_number": 0,
                "type": "response.output_item.done",
            },
        ]
