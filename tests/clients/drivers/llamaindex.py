"""``llama-index-llms-openai-like``'s ``OpenAILike`` (chat model) as an application uses it."""

from __future__ import annotations

import asyncio
from typing import Any

from _common import Case, Partial, count_shown, result, run
from llama_index.core.base.llms.types import ThinkingBlock
from llama_index.core.llms import ChatMessage
from llama_index.llms.openai_like import OpenAILike


def _llm(case: Case) -> OpenAILike:
    extra = {"extra_body": case["extra_body"]} if case.get("extra_body") else {}
    return OpenAILike(
        model=case["model"],
        api_base=case["base_url"],
        api_key=case["api_key"],
        is_chat_model=True,
        max_retries=0,
        timeout=30,
        additional_kwargs=extra,
    )


def _finish(raw: Any) -> str | None:
    choices = getattr(raw, "choices", None) or []
    return choices[0].finish_reason if choices else None


def _result(msg: ChatMessage, raw: Any, text: str | None = None) -> dict[str, Any]:
    thoughts = [b.content for b in msg.blocks if isinstance(b, ThinkingBlock) and b.content]
    for key in ("reasoning_content", "reasoning"):
        v = msg.additional_kwargs.get(key)
        if isinstance(v, str) and v:
            thoughts.append(v)
    reasoning = thoughts[0] if thoughts else None
    return result(
        text=msg.content if text is None else text,
        reasoning=reasoning,
        reasoning_shown=count_shown(reasoning, sum(map(len, thoughts))),
        finish_reason=_finish(raw),
    )


def nonstream(case: Case, partial: Partial) -> dict[str, Any]:
    r = _llm(case).chat([ChatMessage(role="user", content=case["prompt"])])
    return _result(r.message, r.raw)


def stream(case: Case, partial: Partial) -> dict[str, Any]:
    last = None
    for r in _llm(case).stream_chat([ChatMessage(role="user", content=case["prompt"])]):
        partial.text += r.delta or ""
        last = r
    assert last is not None, "no chunk at all"
    return _result(last.message, last.raw, partial.text)


def history(case: Case, partial: Partial) -> dict[str, Any]:
    llm = _llm(case)
    messages: list[ChatMessage] = []
    texts, sent_keys = [], []
    for turn in range(3):
        messages.append(ChatMessage(role="user", content=f"{case['prompt']} (turn {turn + 1})"))
        r = llm.chat(messages)
        texts.append(r.message.content)
        sent_keys.append(sorted({type(b).__name__ for b in r.message.blocks}))
        messages.append(r.message)
    return result(text=texts[-1], texts=texts, sent_assistant_keys=sent_keys)


async def async_case(case: Case, partial: Partial) -> dict[str, Any]:
    llm = _llm(case)
    msgs = [ChatMessage(role="user", content=case["prompt"])]

    async def one() -> str:
        return (await llm.achat(msgs)).message.content or ""

    async def streamed() -> str:
        return "".join([r.delta or "" async for r in await llm.astream_chat(msgs)])

    texts = await asyncio.gather(one(), streamed(), one())
    return result(text=texts[0], texts=list(texts))


if __name__ == "__main__":
    run(
        {"nonstream": nonstream, "stream": stream, "history": history, "async": async_case},
        ["llama-index-llms-openai-like", "llama-index-llms-openai", "llama-index-core", "openai"],
    )
