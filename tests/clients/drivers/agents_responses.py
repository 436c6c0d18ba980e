"""The OpenAI Agents SDK on its default model (``OpenAIResponsesModel``: the Responses API)
through the gateway, as an application uses it. Runs in the client environment (openai-agents
is not a dependency of the gateway); prints one JSON object with what the application saw.

    python agents_responses.py <base_url> <api_key> <model> <cut_model> [notools]
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from agents import (
    Agent,
    ModelSettings,
    Runner,
    function_tool,
    set_default_openai_api,
    set_default_openai_client,
    set_tracing_disabled,
)
from agents.items import ReasoningItem, ToolCallOutputItem
from agents.models.openai_provider import OpenAIProvider
from agents.models.openai_responses import OpenAIResponsesModel
from openai import AsyncOpenAI

set_tracing_disabled(True)  # tracing would upload to OpenAI

CALLS: list[dict[str, Any]] = []


@function_tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    CALLS.append({"a": a, "b": b})
    return a + b


def reasoning_texts(items: list[Any]) -> list[str]:
    out = []
    for item in items:
        if isinstance(item, ReasoningItem):
            out += [c.text for c in (item.raw_item.content or [])]
    return out


async def tool_call(model: str) -> dict[str, Any]:
    agent = Agent(
        name="calculator",
        instructions="Use the tool.",
        model=model,
        tools=[add],
        model_settings=ModelSettings(tool_choice="required"),
    )
    t = await Runner.run(agent, "Add 2 and 3.", max_turns=4)
    return {
        "text": t.final_output,
        "calls": CALLS,
        "outputs": [str(i.output) for i in t.new_items if isinstance(i, ToolCallOutputItem)],
    }


async def main(
    base_url: str, key: str, model: str, cut_model: str, tools: bool = True
) -> dict[str, Any]:
    client = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30)
    set_default_openai_client(client, use_for_tracing=False)
    set_default_openai_api("responses")
    agent = Agent(name="assistant", instructions="Answer briefly.", model=model)
    out: dict[str, Any] = {}
    # the model class a plain model name gets by default
    default = OpenAIProvider(openai_client=client).get_model(model)
    out["default_model_is_responses"] = isinstance(default, OpenAIResponsesModel)
    r = await Runner.run(agent, "What is 2 + 2?")
    out["nonstream"] = {
        "text": r.final_output,
        "reasoning": reasoning_texts(r.new_items),
        "response_id": r.last_response_id,
    }
    # the next turn on the server-side conversation
    r2 = await Runner.run(agent, "And 3 + 3?", previous_response_id=r.last_response_id)
    out["second_turn"] = {"text": r2.final_output, "response_id": r2.last_response_id}
    # the next turn with the whole history sent back as items
    r3 = await Runner.run(agent, [*r.to_input_list(), {"role": "user", "content": "Thanks!"}])
    out["history_turn"] = {"text": r3.final_output}
    s = Runner.run_streamed(agent, "What is 2 + 2?")
    kinds: dict[str, int] = {}
    deltas = ""
    async for ev in s.stream_events():
        if ev.type == "raw_response_event":
            kinds[ev.data.type] = kinds.get(ev.data.type, 0) + 1
            if ev.data.type == "response.output_text.delta":
                deltas += ev.data.delta
    out["stream"] = {"text": s.final_output, "deltas": deltas, "events": kinds}
    # a tool: the model must call it, the agent runs it and sends back its output
    out["tool"] = await tool_call(model) if tools else None
    # a stream the gateway cuts after its first byte: the application must get an error
    stall = ModelSettings(extra_body={"sim": {"stall_after": 18, "stall_for": 30}})
    cut_agent = agent.clone(model=cut_model, model_settings=stall)
    try:
        cut = Runner.run_streamed(cut_agent, "What is 2 + 2?")
        async for _ in cut.stream_events():
            pass
        out["cut"] = {"raised": None, "text": cut.final_output}
    except Exception as exc:  # the driver reports what the SDK raised
        out["cut"] = {"raised": type(exc).__name__, "message": str(exc)[:300]}
    await client.close()
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    print(json.dumps(asyncio.run(main(*args[:4], tools="notools" not in args[4:]))))
