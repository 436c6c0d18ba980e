"""``litellm`` as a client SDK (``litellm.completion``), with the provider prefix vLLM users
pick: ``hosted_vllm/`` (the job's ``provider``; ``openai/`` is the generic one)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price-list download

import litellm
from _common import Case, Partial, count_shown, result, run

litellm.suppress_debug_info = True
litellm.telemetry = False


def _kw(case: Case) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "model": f"{case['provider']}/{case['model']}",
        "api_base": case["base_url"],
        "api_key": case["api_key"],
        "timeout": 30,
        "num_retries": 0,
    }
    if case.get("extra_body"):
        kw["extra_body"] = case["extra_body"]
    return kw


def _places(obj: Any) -> list[str]:
    """Every place of a litellm Message/Delta that holds reasoning text."""
    found = []
    for key in ("reasoning_content", "reasoning"):
        v = getattr(obj, key, None)
        if isinstance(v, str) and v:
            found.append(v)
    psf = getattr(obj, "provider_specific_fields", None) or {}
    for key in ("reasoning_content", "reasoning"):
        v = psf.get(key)
        if isinstance(v, str) and v:
            found.append(v)
    for block in getattr(obj, "thinking_blocks", None) or []:
        v = block.get("thinking") if isinstance(block, dict) else None
        if isinstance(v, str) and v:
            found.append(v)
    return found


def nonstream(case: Case, partial: Partial) -> dict[str, Any]:
    resp = litellm.completion(messages=[{"role": "user", "content": case["prompt"]}], **_kw(case))
    msg = resp.choices[0].message
    places = _places(msg)
    reasoning = getattr(msg, "reasoning_content", None) or (places[0] if places else None)
    return result(
        text=msg.content,
        reasoning=reasoning,
        reasoning_shown=count_shown(reasoning, sum(map(len, places))),
        finish_reason=resp.choices[0].finish_reason,
    )


def stream(case: Case, partial: Partial) -> dict[str, Any]:
    reasoning, chars, finish = "", 0, None
    for chunk in litellm.completion(
        messages=[{"role": "user", "content": case["prompt"]}], stream=True, **_kw(case)
    ):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        partial.text += delta.content or ""
        reasoning += getattr(delta, "reasoning_content", None) or ""
        chars += sum(map(len, _places(delta)))
        finish = chunk.choices[0].finish_reason or finish
    return result(
        text=partial.text,
        reasoning=reasoning or None,
        reasoning_shown=count_shown(reasoning, chars),
        finish_reason=finish,
    )


def history(case: Case, partial: Partial) -> dict[str, Any]:
    """Three turns, each answer appended as litellm returned it (its Message object)."""
    messages: list[Any] = []
    texts, sent_keys = [], []
    for turn in range(3):
        messages.append({"role": "user", "content": f"{case['prompt']} (turn {turn + 1})"})
        resp = litellm.completion(messages=messages, **_kw(case))
        msg = resp.choices[0].message
        texts.append(msg.content)
        sent_keys.append(sorted(k for k, v in msg.model_dump().items() if v is not None))
        messages.append(msg)
    return result(text=texts[-1], texts=texts, sent_assistant_keys=sent_keys)


async def async_case(case: Case, partial: Partial) -> dict[str, Any]:
    msgs = [{"role": "user", "content": case["prompt"]}]

    async def one() -> str:
        r = await litellm.acompletion(messages=msgs, **_kw(case))
        return r.choices[0].message.content or ""

    async def streamed() -> str:
        out = ""
        async for chunk in await litellm.acompletion(messages=msgs, stream=True, **_kw(case)):
            if chunk.choices:
                out += chunk.choices[0].delta.content or ""
        return out

    texts = await asyncio.gather(one(), streamed(), one())
    return result(text=texts[0], texts=list(texts))


if __name__ == "__main__":
    run(
        {"nonstream": nonstream, "stream": stream, "history": history, "async": async_case},
        ["litellm", "openai"],
    )
