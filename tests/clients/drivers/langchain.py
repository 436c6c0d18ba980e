"""``langchain-openai``'s ``ChatOpenAI`` as an application uses it."""

from __future__ import annotations

import asyncio
from typing import Any

from _common import Case, Partial, count_shown, result, run
from langchain_core.messages import AIMessage, BaseMessage, ChatMessage, HumanMessage
from langchain_openai import ChatOpenAI


def _llm(case: Case) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=case["base_url"],
        api_key=case["api_key"],
        model=case["model"],
        max_retries=0,
        timeout=30,
        extra_body=case.get("extra_body"),
    )


def _reasoning(msg: BaseMessage) -> tuple[str | None, int]:
    """Reasoning the application can read: additional_kwargs and standard content blocks."""
    pieces: list[str] = []
    for key in ("reasoning_content", "reasoning"):
        v = msg.additional_kwargs.get(key)
        if isinstance(v, str) and v:
            pieces.append(v)
    for block in msg.content_blocks:
        if block.get("type") == "reasoning" and block.get("reasoning"):
            pieces.append(str(block["reasoning"]))
    reasoning = pieces[0] if pieces else None
    return reasoning, count_shown(reasoning, sum(map(len, pieces)))


def _result(msg: BaseMessage) -> dict[str, Any]:
    reasoning, shown = _reasoning(msg)
    return result(
        text=msg.text,
        reasoning=reasoning,
        reasoning_shown=shown,
        finish_reason=msg.response_metadata.get("finish_reason"),
    )


def nonstream(case: Case, partial: Partial) -> dict[str, Any]:
    return _result(_llm(case).invoke([HumanMessage(case["prompt"])]))


def stream(case: Case, partial: Partial) -> dict[str, Any]:
    full = None
    for chunk in _llm(case).stream([HumanMessage(case["prompt"])]):
        partial.text += chunk.text
        full = chunk if full is None else full + chunk
    assert full is not None, "no chunk at all"
    return _result(full)


def history(case: Case, partial: Partial) -> dict[str, Any]:
    llm = _llm(case)
    messages: list[BaseMessage] = []
    texts, sent_keys = [], []
    for turn in range(3):
        messages.append(HumanMessage(f"{case['prompt']} (turn {turn + 1})"))
        reply = llm.invoke(messages)
        assert isinstance(reply, AIMessage)
        texts.append(reply.text)
        sent_keys.append(sorted(reply.additional_kwargs))
        messages.append(reply)
    return result(text=texts[-1], texts=texts, sent_assistant_keys=sent_keys)


async def async_case(case: Case, partial: Partial) -> dict[str, Any]:
    llm = _llm(case)

    async def one() -> str:
        return (await llm.ainvoke([HumanMessage(case["prompt"])])).text

    async def streamed() -> str:
        return "".join([c.text async for c in llm.astream([HumanMessage(case["prompt"])])])

    texts = await asyncio.gather(one(), streamed(), one())
    return result(text=texts[0], texts=list(texts))


def custom_role(case: Case, partial: Partial) -> dict[str, Any]:
    messages = [
        HumanMessage(case["prompt"]),
        AIMessage("Let me compute it."),
        ChatMessage(role="ipython", content='{"result": 4}'),
    ]
    return _result(_llm(case).invoke(messages))


if __name__ == "__main__":
    run(
        {
            "nonstream": nonstream,
            "stream": stream,
            "history": history,
            "async": async_case,
            "custom_role": custom_role,
        },
        ["langchain-openai", "langchain-core", "openai"],
    )
