"""``pydantic-ai``'s ``Agent`` on ``OpenAIChatModel`` (the chat completions API) as an
application uses it."""

from __future__ import annotations

import asyncio
from typing import Any

from _common import Case, Partial, count_shown, result, run
from openai import AsyncOpenAI
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, ThinkingPart
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.settings import ModelSettings


def _agent(case: Case) -> Agent[None, str]:
    client = AsyncOpenAI(
        base_url=case["base_url"], api_key=case["api_key"], max_retries=0, timeout=30
    )
    model = OpenAIChatModel(case["model"], provider=OpenAIProvider(openai_client=client))
    settings = ModelSettings(extra_body=case["extra_body"]) if case.get("extra_body") else None
    return Agent(model, model_settings=settings)


def _result(messages: list[ModelMessage], text: str) -> dict[str, Any]:
    responses = [m for m in messages if isinstance(m, ModelResponse)]
    last = responses[-1] if responses else None
    thoughts = [p.content for p in (last.parts if last else []) if isinstance(p, ThinkingPart)]
    reasoning = thoughts[0] if thoughts else None
    return result(
        text=text,
        reasoning=reasoning,
        reasoning_shown=count_shown(reasoning, sum(map(len, thoughts))),
        finish_reason=getattr(last, "finish_reason", None),
        parts=[type(p).__name__ for p in (last.parts if last else [])],
    )


async def nonstream(case: Case, partial: Partial) -> dict[str, Any]:
    r = await _agent(case).run(case["prompt"])
    return _result(r.all_messages(), r.output)


async def stream(case: Case, partial: Partial) -> dict[str, Any]:
    async with _agent(case).run_stream(case["prompt"]) as s:
        async for piece in s.stream_text(delta=True):
            partial.text += piece
        messages = s.all_messages()
    return _result(messages, partial.text)


async def history(case: Case, partial: Partial) -> dict[str, Any]:
    """Three turns, each with the message history pydantic-ai returned (thinking parts too)."""
    agent = _agent(case)
    past: list[ModelMessage] = []
    texts, sent_keys = [], []
    for turn in range(3):
        r = await agent.run(f"{case['prompt']} (turn {turn + 1})", message_history=past)
        texts.append(r.output)
        past = r.all_messages()
        last = [m for m in past if isinstance(m, ModelResponse)][-1]
        sent_keys.append(sorted({type(p).__name__ for p in last.parts}))
    return result(text=texts[-1], texts=texts, sent_assistant_keys=sent_keys)


async def async_case(case: Case, partial: Partial) -> dict[str, Any]:
    agent = _agent(case)

    async def one() -> str:
        return (await agent.run(case["prompt"])).output

    async def streamed() -> str:
        async with agent.run_stream(case["prompt"]) as s:
            return "".join([p async for p in s.stream_text(delta=True)])

    texts = await asyncio.gather(one(), streamed(), one())
    return result(text=texts[0], texts=list(texts))


if __name__ == "__main__":
    run(
        {"nonstream": nonstream, "stream": stream, "history": history, "async": async_case},
        ["pydantic-ai-slim", "openai"],
    )
