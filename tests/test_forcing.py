"""Budget forcing without sockets: ForcingSource under the real relay() and normalizer, fed
by scripted upstream streams (vLLM's shapes, with per-chunk usage), the first split at every
byte; the continuation request it builds; the non-stream join."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway.control_spec import ReasoningControl
from gateway.errors import UpstreamStatusError
from gateway.forcing import Force, ForcingSource, continue_json
from gateway.profiles import ReasoningRules, Timeouts
from gateway.stream import StreamNormalizer, prime, relay
from tests.helpers import assert_well_ended, sse_events
from tests.test_relay import FakeSource
from tests.virtual_time import run_virtual

TIMEOUTS = Timeouts(connect=1, first_token=10, idle=5, total=60, heartbeat=1)
SPLIT = ReasoningRules("think_tags", True, ("reasoning_content",), "split", True)
UPSTREAM_SPLIT = ReasoningRules("none", False, ("reasoning_content",), "split", True)
FIRST = {
    "model": "up",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": True,
    "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    "max_tokens": 100,
}


def event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def vllm_stream(
    pieces: list[tuple[str, str]], *, prompt: int = 7, finish: str | None = "stop"
) -> list[bytes]:
    """vLLM's chat stream with continuous usage: a role chunk, one chunk per token
    (``(field, text)``), the finish, the usage chunk, [DONE]."""
    out = [
        event(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 5,
                "model": "up",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
                "prompt_text": None,
                "usage": {"prompt_tokens": prompt, "completion_tokens": 0, "total_tokens": prompt},
            }
        )
    ]
    for n, (key, text) in enumerate(pieces, 1):
        last = n == len(pieces)
        out.append(
            event(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "created": 5,
                    "model": "up",
                    "choices": [
                        {
                            "index": 0,
                            "delta": {key: text},
                            "finish_reason": finish if last else None,
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt,
                        "completion_tokens": n,
                        "total_tokens": prompt + n,
                    },
                }
            )
        )
    total = len(pieces)
    out.append(
        event(
            {
                "id": "chatcmpl-1",
                "choices": [],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": total,
                    "total_tokens": prompt + total,
                },
            }
        )
    )
    out.append(b"data: [DONE]\n\n")
    return out


def force(rules: ReasoningRules, budget: int, **kw: Any) -> tuple[Force, list[int]]:
    forced: list[int] = []
    f = Force(
        budget=budget,
        control=ReasoningControl(**kw),
        rules=rules,
        assistant_prefix="",
        body=FIRST,
        answer_max=100,
        client_continuous=False,
        on_forced=lambda: forced.append(1),
    )
    return f, forced


REASONING = [("content", w) for w in ["Let", " me", " think", " very", " long", " indeed"]]
ANSWER = [("content", w) for w in ["The", " answer", "."]]


async def forced_stream(
    first: list[bytes], second: list[bytes], f: Force, rules: ReasoningRules
) -> tuple[list[Any], list[tuple[str, dict[str, Any]]], FakeSource, FakeSource]:
    src, cont = FakeSource(first), FakeSource(second)
    asked: list[tuple[str, dict[str, Any]]] = []

    async def start(path: str, body: dict[str, Any]) -> FakeSource:
        asked.append((path, body))
        await asyncio.sleep(2.5)  # slower than the heartbeat: the read is retried
        return cont

    loop = asyncio.get_running_loop()
    opened = await prime(src, loop.time() + 10)
    source = ForcingSource(opened, f, start)
    norm = StreamNormalizer(public_model="m", endpoint="chat", include_usage=True, reasoning=rules)
    out: list[bytes] = []

    async def emit(frame: bytes) -> None:
        out.append(frame)

    tail = await relay(source.opened(), norm, TIMEOUTS, loop.time() + 60, emit)
    return sse_events(b"".join([*out, tail])), asked, src, cont


def texts(events: list[Any], key: str) -> str:
    return "".join(
        c["delta"].get(key) or "" for e in events if isinstance(e, dict) for c in e["choices"]
    )


@pytest.mark.parametrize("budget", [0, 1, 3, 5])
def test_the_gateway_ends_the_thinking_at_the_budget_and_continues_the_answer(
    budget: int,
) -> None:
    f, forced = force(SPLIT, budget)
    first = vllm_stream([*REASONING, ("content", "</think>"), *ANSWER])
    second = vllm_stream(ANSWER, prompt=20)
    events, asked, src, cont = run_virtual(forced_stream(first, second, f, SPLIT))[0]
    (final,) = assert_well_ended(events)
    assert final["finish_reason"] == "stop"
    reasoning = "".join(w for _, w in REASONING[:budget])
    assert texts(events, "reasoning_content") == reasoning
    assert texts(events, "content") == "The answer."
    assert {e["id"] for e in events[:-1]} == {"chatcmpl-1"}  # one stream
    assert sum("role" in c["delta"] for e in events[:-1] for c in e["choices"]) == 1
    usage = events[-2]["usage"]
    assert usage == {
        "prompt_tokens": 7,  # the client's prompt, not the continuation's
        "completion_tokens": budget + 3,
        "total_tokens": 7 + budget + 3,
        "completion_tokens_details": {"reasoning_tokens": budget},  # exact
    }
    assert src.closed == [False]  # the first request was closed (vLLM aborts it)
    assert cont.closed == [True]
    assert forced == [1]
    ((path, body),) = asked
    assert path == "/v1/chat/completions"
    assert body["messages"][-1] == {
        "role": "assistant",
        "content": "<think>\n" + reasoning + "\n</think>\n\n",
    }
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["max_tokens"] == 100 - budget
    assert body["stream_options"] == {"include_usage": True}


def test_reasoning_within_the_budget_needs_no_second_request() -> None:
    f, forced = force(SPLIT, 50)
    first = vllm_stream([*REASONING, ("content", "</think>"), ("content", "\n\n"), *ANSWER])
    events, asked, src, _ = run_virtual(forced_stream(first, [], f, SPLIT))[0]
    assert_well_ended(events)
    assert asked == [] and forced == []
    assert src.closed == [True]  # ended by vLLM: the connection goes back to the pool
    assert texts(events, "content") == "The answer."
    details = events[-2]["usage"]["completion_tokens_details"]
    assert details == {"reasoning_tokens": 6}  # counted exactly from the per-chunk usage
    assert "usage" not in events[1]  # the per-chunk usage the client did not ask for is gone


def test_upstream_split_reasoning_is_forced_too() -> None:
    f, forced = force(UPSTREAM_SPLIT, 2)
    first = vllm_stream([("reasoning", w) for _, w in REASONING] + [("content", "\n\nx")])
    second = vllm_stream([("content", "\n\nThe"), ("content", " answer.")])
    events, asked, _, _ = run_virtual(forced_stream(first, second, f, UPSTREAM_SPLIT))[0]
    assert_well_ended(events)
    assert texts(events, "reasoning_content") == "Let me"
    assert texts(events, "content") == "The answer."  # no closing tag shown in the answer
    assert asked[0][1]["messages"][-1]["content"] == "<think>\nLet me\n</think>\n\n"
    assert forced == [1]


def test_completions_continuation_extends_the_rendered_prompt() -> None:
    f, _ = force(SPLIT, 2, continuation="completions")
    first = vllm_stream([*REASONING, ("content", "</think>"), *ANSWER])
    role = orjson.loads(first[0][6:])
    role["prompt_text"] = "<|user|>hi<|assistant|><think>\n"
    first[0] = event(role)
    second = [
        event(
            {
                "id": "cmpl-2",
                "object": "text_completion",
                "choices": [{"index": 0, "text": t, "finish_reason": fin, "stop_reason": None}],
            }
        )
        for t, fin in (("The", None), (" answer.", "length"))
    ] + [
        event(
            {"id": "cmpl-2", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}
        ),
        b"data: [DONE]\n\n",
    ]
    events, asked, _, _ = run_virtual(forced_stream(first, second, f, SPLIT))[0]
    (final,) = assert_well_ended(events)
    assert final["finish_reason"] == "length"
    assert events[0]["prompt_text"] is None  # never shown to the client
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])
    assert texts(events, "content") == "The answer."
    path, body = asked[0]
    assert path == "/v1/completions"
    assert body["prompt"] == "<|user|>hi<|assistant|><think>\nLet me\n</think>\n\n"
    assert body["add_special_tokens"] is False and "messages" not in body


def test_a_refused_continuation_ends_the_stream_with_its_error() -> None:
    f, _ = force(SPLIT, 1)
    first = vllm_stream(REASONING)
    src = FakeSource(first)

    async def run() -> list[Any]:
        async def start(path: str, body: dict[str, Any]) -> FakeSource:
            raise UpstreamStatusError(400, "continue_final_message is set but ...")

        loop = asyncio.get_running_loop()
        opened = await prime(src, loop.time() + 10)
        source = ForcingSource(opened, f, start)
        norm = StreamNormalizer(public_model="m", endpoint="chat", reasoning=SPLIT)
        out: list[bytes] = []

        async def emit(frame: bytes) -> None:
            out.append(frame)

        tail = await relay(source.opened(), norm, TIMEOUTS, loop.time() + 60, emit)
        return sse_events(b"".join([*out, tail]))

    events = run_virtual(run())[0]
    assert assert_well_ended(events) == []
    assert "continue_final_message" in events[-2]["error"]["message"]


def test_every_split_of_the_first_stream_gives_the_same_answer() -> None:
    f, _ = force(SPLIT, 3)
    whole = b"".join(vllm_stream([*REASONING, ("content", "</think>"), *ANSWER]))
    second = vllm_stream(ANSWER, prompt=20)
    want = None
    for cut in range(1, len(whole), 7):
        first = [whole[:cut], whole[cut:]]
        f, _ = force(SPLIT, 3)
        events, _, _, _ = run_virtual(forced_stream(first, list(second), f, SPLIT))[0]
        got = (texts(events, "reasoning_content"), texts(events, "content"), events[-2]["usage"])
        want = want or got
        assert got == want, cut
    assert want is not None and want[0] == "Let me think"


def nonstream(content: str | None, reasoning: str | None, finish: str, used: int) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-9",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "reasoning": reasoning},
                    "finish_reason": finish,
                    "stop_reason": None,
                }
            ],
            "usage": {"prompt_tokens": 7, "completion_tokens": used, "total_tokens": 7 + used},
            "prompt_text": "<rendered>",
        }
    )


def test_non_stream_parts_are_joined_into_one_message() -> None:
    f, forced = force(SPLIT, 4)
    asked: list[tuple[str, dict[str, Any]]] = []

    async def start(path: str, body: dict[str, Any]) -> bytes:
        asked.append((path, body))
        # vLLM's non-stream reasoning parser puts a continued answer in `reasoning`
        return nonstream(None, "The answer.", "stop", 3)

    raw = asyncio.run(continue_json(nonstream("Let me think very", None, "length", 4), f, start))
    obj = orjson.loads(raw)
    msg = obj["choices"][0]["message"]
    assert msg["content"] == "Let me think very</think>\n\nThe answer."  # split later
    assert obj["choices"][0]["finish_reason"] == "stop"
    assert obj["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 7,
        "total_tokens": 14,
        "completion_tokens_details": {"reasoning_tokens": 4},
    }
    assert obj["prompt_text"] is None
    assert asked[0][1]["max_tokens"] == 96 and forced == [1]
    # ended within the budget: one request
    done = nonstream("short</think>\n\nok", None, "stop", 3)
    assert (
        orjson.loads(asyncio.run(continue_json(done, f, start)))["choices"][0]["message"]["content"]
        == "short</think>\n\nok"
    )
    assert len(asked) == 1


@pytest.mark.parametrize("rules", [SPLIT, UPSTREAM_SPLIT])
def test_non_stream_budget_zero_drops_the_one_token_vllm_must_generate(
    rules: ReasoningRules,
) -> None:
    """vLLM refuses max_tokens 0, so the first part of a budget of 0 generates one token:
    it is neither shown nor counted, as in the stream, and the continuation starts from an
    empty reasoning."""
    f, forced = force(rules, 0)
    asked: list[dict[str, Any]] = []

    async def start(path: str, body: dict[str, Any]) -> bytes:
        asked.append(body)
        return nonstream("The answer.", None, "stop", 3)

    first = (
        nonstream("Okay", None, "length", 1)
        if rules is SPLIT
        else nonstream(None, "Okay", "length", 1)
    )
    obj = orjson.loads(asyncio.run(continue_json(first, f, start)))
    msg = obj["choices"][0]["message"]
    assert "Okay" not in orjson.dumps(msg).decode()
    assert "Okay" not in orjson.dumps(asked[0]).decode()
    assert msg["content"].endswith("The answer.")
    assert obj["usage"]["completion_tokens"] == 3
    assert obj["usage"]["completion_tokens_details"] == {"reasoning_tokens": 0}
    assert forced == [1]
