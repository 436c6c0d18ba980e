"""The OpenAI Agents SDK (``openai-agents``) on ``OpenAIChatCompletionsModel``, as an
application uses it. Tracing is off: it would upload traces to OpenAI."""

from __future__ import annotations

import asyncio
from typing import Any

from _common import Case, Partial, count_shown, result, run
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    Runner,
    set_tracing_disabled,
)
from agents.items import ReasoningItem
from openai import AsyncOpenAI

set_tracing_disabled(True)


def _agent(case: Case) -> Agent[Any]:
    client = AsyncOpenAI(
        base_url=case["base_url"], api_key=case["api_key"], max_retries=0, timeout=30
    )
    settings = ModelSettings(extra_body=case["extra_body"]) if case.get("extra_body") else None
    return Agent(
        name="assistant",
        instructions="Answer briefly.",
        model=OpenAIChatCompletionsModel(model=case["model"], openai_client=client),
        **({"model_settings": settings} if settings else {}),
    )


def _reasoning_items(items: list[Any]) -> list[str]:
    """Reasoning text in each place an application reads it: summaries and content."""
    out: list[str] = []
    for it in items:
        if isinstance(it, ReasoningItem):
            raw = it.raw_item
            out += [s.text for s in raw.summary if s.text]
            out += [c.text for c in (raw.content or []) if c.text]
    return out


async def nonstream(case: Case, partial: Partial) -> dict[str, Any]:
    r = await Runner.run(_agent(case), case["prompt"])
    places = _reasoning_items(r.new_items)
    reasoning = places[0] if places else None
    return result(
        text=r.final_output,
        reasoning=reasoning,
        reasoning_shown=count_shown(reasoning, sum(map(len, places))),
    )


async def stream(case: Case, partial: Partial) -> dict[str, Any]:
    s = Runner.run_streamed(_agent(case), case["prompt"])
    reasoning_chars = 0
    kinds: dict[str, int] = {}
    async for ev in s.stream_events():
        if ev.type != "raw_response_event":
            continue
        kind = ev.data.type
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind == "response.output_text.delta":
            partial.text += ev.data.delta
        elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            reasoning_chars += len(ev.data.delta)
    places = _reasoning_items(s.new_items)
    reasoning = places[0] if places else None
    return result(
        text=s.final_output,
        streamed_text=partial.text,
        reasoning=reasoning,
        reasoning_shown=count_shown(reasoning, reasoning_chars),
        event_kinds=kinds,
    )


async def history(case: Case, partial: Partial) -> dict[str, Any]:
    """Three turns: each turn's input is the previous run's ``to_input_list()`` (reasoning
    items included) plus the new user message."""
    agent = _agent(case)
    items: list[Any] = []
    texts, sent_keys = [], []
    for turn in range(3):
        items.append({"role": "user", "content": f"{case['prompt']} (turn {turn + 1})"})
        r = await Runner.run(agent, items)
        texts.append(r.final_output)
        items = r.to_input_list()
        sent_keys.append(sorted({str(i.get("type", i.get("role"))) for i in items}))
    return result(text=texts[-1], texts=texts, sent_assistant_keys=sent_keys)


async def async_case(case: Case, partial: Partial) -> dict[str, Any]:
    agent = _agent(case)

    async def one() -> str:
        return str((await Runner.run(agent, case["prompt"])).final_output)

    async def streamed() -> str:
        s = Runner.run_streamed(agent, case["prompt"])
        async for _ in s.stream_events():
            pass
        return str(s.final_output)

    texts = await asyncio.gather(one(), streamed(), one())
    return result(text=texts[0], texts=list(texts))


if __name__ == "__main__":
    run(
        {"nonstream": nonstream, "stream": stream, "history": history, "async": async_case},
        ["openai-agents", "openai"],
    )
