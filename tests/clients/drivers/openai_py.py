"""The ``openai`` Python SDK as an application uses it (run in either clients venv: 3.x and 2.x)."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
from _common import Case, Partial, count_shown, result, run

FIELDS = ("reasoning_content", "reasoning")


def _client(case: Case, **kw: Any) -> openai.OpenAI:
    kw = {"api_key": case["api_key"], "max_retries": 0, "timeout": 30, **kw}
    return openai.OpenAI(base_url=case["base_url"], **kw)


def _messages(case: Case) -> list[dict[str, Any]]:
    return [{"role": "user", "content": case["prompt"]}]


def _message_result(resp: Any) -> dict[str, Any]:
    choice = resp.choices[0]
    msg = choice.message
    found = {f: getattr(msg, f, None) for f in FIELDS}
    reasoning = next((v for v in found.values() if v), None)
    chars = sum(len(v) for v in found.values() if isinstance(v, str))
    return result(
        text=msg.content,
        reasoning=reasoning,
        reasoning_shown=count_shown(reasoning, chars),
        reasoning_fields=[f for f, v in found.items() if v],
        finish_reason=choice.finish_reason,
    )


def nonstream(case: Case, partial: Partial) -> dict[str, Any]:
    with _client(case) as c:
        resp = c.chat.completions.create(
            model=case["model"], messages=_messages(case), extra_body=case.get("extra_body")
        )
    return _message_result(resp)


class _Collect:
    """What a streaming chat UI accumulates from chunks."""

    def __init__(self, partial: Partial) -> None:
        self.partial = partial
        self.fields: dict[str, str] = {f: "" for f in FIELDS}
        self.finish: str | None = None
        self.usage_chunks = 0
        self.heartbeat_gaps: list[float] = []

    def feed(self, chunk: Any) -> None:
        if not chunk.choices:
            self.usage_chunks += 1
            return
        choice = chunk.choices[0]
        delta = choice.delta
        self.partial.text += delta.content or ""
        for f in FIELDS:
            v = getattr(delta, f, None)
            if isinstance(v, str):
                self.fields[f] += v
        if choice.finish_reason is not None:
            self.finish = choice.finish_reason

    def result(self) -> dict[str, Any]:
        reasoning = next((v for v in self.fields.values() if v), None)
        chars = sum(len(v) for v in self.fields.values())
        return result(
            text=self.partial.text,
            reasoning=reasoning,
            reasoning_shown=count_shown(reasoning, chars),
            reasoning_fields=[f for f, v in self.fields.items() if v],
            finish_reason=self.finish,
            usage_chunks=self.usage_chunks,
        )


def stream(case: Case, partial: Partial) -> dict[str, Any]:
    col = _Collect(partial)
    timeout = case.get("read_timeout")
    kw = {"timeout": openai.Timeout(30, read=timeout)} if timeout else {}
    with _client(case, **kw) as c:
        for chunk in c.chat.completions.create(
            model=case["model"],
            messages=_messages(case),
            stream=True,
            extra_body=case.get("extra_body"),
        ):
            col.feed(chunk)
    return col.result()


def history(case: Case, partial: Partial) -> dict[str, Any]:
    """Three turns, each answer appended as the SDK returned it (the message object)."""
    messages: list[Any] = []
    texts, sent_keys = [], []
    with _client(case) as c:
        for turn in range(3):
            messages.append({"role": "user", "content": f"{case['prompt']} (turn {turn + 1})"})
            resp = c.chat.completions.create(
                model=case["model"], messages=messages, extra_body=case.get("extra_body")
            )
            msg = resp.choices[0].message
            texts.append(msg.content)
            sent_keys.append(sorted(msg.model_dump(exclude_unset=True)))
            messages.append(msg)
    return result(text=texts[-1], texts=texts, sent_assistant_keys=sent_keys)


async def async_case(case: Case, partial: Partial) -> dict[str, Any]:
    async with openai.AsyncOpenAI(
        base_url=case["base_url"], api_key=case["api_key"], max_retries=0, timeout=30
    ) as c:

        async def one() -> str:
            r = await c.chat.completions.create(
                model=case["model"], messages=_messages(case), extra_body=case.get("extra_body")
            )
            return r.choices[0].message.content or ""

        async def streamed() -> str:
            out = ""
            s = await c.chat.completions.create(
                model=case["model"], messages=_messages(case), stream=True
            )
            async for chunk in s:
                if chunk.choices:
                    out += chunk.choices[0].delta.content or ""
            return out

        texts = await asyncio.gather(one(), streamed(), one())
    return result(text=texts[0], texts=list(texts))


def list_prompts(case: Case, partial: Partial) -> dict[str, Any]:
    """Streamed /v1/completions with a list of prompts (batch clients, evaluation harnesses)."""
    prompts = case["prompts"]
    texts = [""] * len(prompts)
    finishes: list[str | None] = [None] * len(prompts)
    with _client(case) as c:
        for chunk in c.completions.create(
            model=case["model"], prompt=prompts, max_tokens=64, stream=True
        ):
            for ch in chunk.choices:
                if ch.index >= len(texts):
                    raise AssertionError(f"choice index {ch.index} for {len(prompts)} prompts")
                texts[ch.index] += ch.text
                if ch.finish_reason is not None:
                    finishes[ch.index] = ch.finish_reason
        whole = c.completions.create(model=case["model"], prompt=prompts, max_tokens=64)
    by_index = {ch.index: ch.text for ch in whole.choices}
    return result(
        text=texts[0],
        texts=texts,
        finishes=finishes,
        nonstream_texts=[by_index.get(i) for i in range(len(prompts))],
    )


def custom_role(case: Case, partial: Partial) -> dict[str, Any]:
    """A Llama 3.1 tool client's ``ipython`` role (vLLM accepts custom roles)."""
    messages = [
        {"role": "user", "content": case["prompt"]},
        {"role": "assistant", "content": "Let me compute it."},
        {"role": "ipython", "content": '{"result": 4}'},
    ]
    with _client(case) as c:
        resp = c.chat.completions.create(model=case["model"], messages=messages)
    return _message_result(resp)


def retrieve(case: Case, partial: Partial) -> dict[str, Any]:
    with _client(case) as c:
        m = c.models.retrieve(case["model"])
        listed = [x.id for x in c.models.list()]
    return result(text=m.id, model_object=m.object, listed=listed)


def api_key_header(case: Case, partial: Partial) -> dict[str, Any]:
    """The key in an Azure-style ``api-key`` header, ``Authorization`` left out (``omit``)."""
    with _client(case, api_key="unused", default_headers={"api-key": case["api_key"]}) as c:
        resp = c.chat.completions.create(
            model=case["model"],
            messages=_messages(case),
            extra_headers={"Authorization": openai.omit},
        )
    return _message_result(resp)


def azure(case: Case, partial: Partial) -> dict[str, Any]:
    """``AzureOpenAI`` sends its key as ``api-key`` (and an ``api-version`` query)."""
    with openai.AzureOpenAI(
        base_url=case["base_url"],
        api_key=case["api_key"],
        api_version="2024-10-21",
        max_retries=0,
        timeout=30,
    ) as c:
        resp = c.chat.completions.create(model=case["model"], messages=_messages(case))
    return _message_result(resp)


if __name__ == "__main__":
    run(
        {
            "nonstream": nonstream,
            "stream": stream,
            "history": history,
            "async": async_case,
            "list_prompts": list_prompts,
            "custom_role": custom_role,
            "retrieve": retrieve,
            "azure": azure,
            "api_key_header": api_key_header,
        },
        ["openai"],
    )
