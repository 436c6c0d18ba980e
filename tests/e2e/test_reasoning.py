"""Reasoning-aware streams end to end: R1-Distill (no opening tag), Qwen3 (both tags), a
non-thinking answer, upstream-split reasoning, hide mode, forced prefix, multi-turn."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.helpers import GatewayServer, SimProcess

USER = [{"role": "user", "content": "What is 2 + 2?"}]
QWEN_TOKENS = [
    [151667, "<think>"],
    [1, "\nHmm"],
    [2, ", 2+2"],
    [151668, "</th"],
    [3, "ink>\n\n"],
    [4, "Four"],
    [5, "."],
]


@pytest.fixture
def raw_stream(gateway: GatewayServer) -> Any:
    def post(body: dict[str, Any]) -> bytes:
        r = httpx.post(gateway.base_url + "/chat/completions", json=body, timeout=20)
        assert r.status_code == 200, r.text
        return r.content

    return post


def stream(client: openai.OpenAI, model: str, **kw: Any) -> tuple[str, str, Any]:
    chunks = list(client.chat.completions.create(model=model, messages=USER, stream=True, **kw))
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
        for c in chunks
        if c.choices
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c.choices[0] for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1
    return reasoning, content, finals[0]


def test_r1_style_split_stream_and_non_stream(client: openai.OpenAI, fresh_sim: SimProcess) -> None:
    reasoning, content, final = stream(client, "think")
    assert reasoning == "Okay, the user asks for 2 + 2. That is 4.\n"
    assert content == "2 + 2 = **4**."
    assert final.finish_reason == "stop" and "reasoning_unterminated" not in (
        final.model_extra or {}
    )
    resp = client.chat.completions.create(model="think", messages=USER)
    msg = resp.choices[0].message
    assert msg.content == content
    assert msg.model_extra["reasoning_content"] == reasoning  # type: ignore[index]
    assert "reasoning" not in msg.model_extra  # type: ignore[operator]  # one field by default


@pytest.mark.parametrize("merge", [1, 3])
def test_qwen_both_tags_split_even_across_chunks(
    client: openai.OpenAI, fresh_sim: SimProcess, merge: int
) -> None:
    chunks = list(
        client.chat.completions.create(
            model="think-tags",
            messages=USER,
            stream=True,
            extra_body={"sim": {"tokens": QWEN_TOKENS, "merge": merge}},
        )
    )
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning") or "" for c in chunks
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert (reasoning, content) == ("\nHmm, 2+2", "Four.")
    assert all("reasoning_content" not in (c.choices[0].delta.model_extra or {}) for c in chunks)


def test_answer_without_think_block_is_not_lost(
    client: openai.OpenAI, fresh_sim: SimProcess
) -> None:
    tokens = {"sim": {"tokens": [[1, "Just"], [2, " four."]]}}
    _, content, final = stream(client, "think", extra_body=tokens)
    assert content == "Just four." and final.finish_reason == "stop"
    assert final.model_extra["reasoning_unterminated"] is True  # type: ignore[index]
    resp = client.chat.completions.create(model="think", messages=USER, extra_body=tokens)
    assert resp.choices[0].message.content == "Just four."
    assert resp.choices[0].message.model_extra.get("reasoning_content") is None  # type: ignore[union-attr]


def test_length_inside_think_block_is_flagged(client: openai.OpenAI, fresh_sim: SimProcess) -> None:
    reasoning, content, final = stream(client, "think", max_tokens=4)
    assert reasoning == "Okay, the user" and content == ""
    assert final.finish_reason == "length" and final.model_extra["reasoning_truncated"] is True  # type: ignore[index]
    resp = client.chat.completions.create(model="think", messages=USER, max_tokens=4)
    assert resp.choices[0].model_extra["reasoning_truncated"] is True  # type: ignore[index]
    assert resp.choices[0].message.content is None


def test_upstream_split_reasoning_is_normalized(
    client: openai.OpenAI, fresh_sim: SimProcess
) -> None:
    split = {"sim": {"split_reasoning": True}}
    reasoning, content, final = stream(client, "think", extra_body=split)
    assert final.finish_reason == "stop"
    assert reasoning == "Okay, the user asks for 2 + 2. That is 4.\n"
    # vLLM's parser keeps the newlines after </think>; the answer is the same as when the
    # gateway splits the reasoning itself
    own = stream(client, "think")
    assert (reasoning, content) == own[:2] == (reasoning, "2 + 2 = **4**.")
    resp = client.chat.completions.create(model="think", messages=USER, extra_body=split)
    assert resp.choices[0].message.model_extra["reasoning_content"] == reasoning  # type: ignore[index]
    assert resp.choices[0].message.content == content


def test_hide_mode_drops_reasoning(client: openai.OpenAI, fresh_sim: SimProcess) -> None:
    chunks = list(client.chat.completions.create(model="think-hide", messages=USER, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "2 + 2 = **4**."
    assert not any(
        set(c.choices[0].delta.model_extra or {}) & {"reasoning", "reasoning_content"}
        for c in chunks
    )


def test_hide_mode_sends_heartbeats_while_the_model_thinks(
    raw_stream: Any, fresh_sim: SimProcess
) -> None:
    """4 s of hidden thinking would be 4 s of silence: SDK read timeouts and proxies cut such
    streams. Heartbeat comments go out instead; for upstream-split reasoning as well."""
    for split in (False, True):
        tokens = [[i, f" step {i}"] for i in range(10)] + [[151649, "</think>"], [99, "ok"]]
        body = {
            "model": "think-hide-beat",
            "messages": USER,
            "stream": True,
            "sim": {"tokens": tokens, "token_delay": 0.1, "split_reasoning": split},
        }
        raw_body = raw_stream(body)
        assert raw_body.count(b": keep-alive\n\n") >= 3, raw_body[:300]
        assert b"step" not in raw_body and b'"content":"ok"' in raw_body
        assert b"{}" not in raw_body  # no empty deltas either way


def test_forced_prefix_sent_and_accounted(client: openai.OpenAI, fresh_sim: SimProcess) -> None:
    tokens = {
        "sim": {"tokens": [[1, "deep"], [2, " thought"], [151649, "</think>"], [3, "\n\nok"]]}
    }
    reasoning, content, _ = stream(client, "think-prefix", extra_body=tokens)
    sent = fresh_sim.last_request()
    assert sent["messages"][-1] == {"role": "assistant", "content": "<think>\n"}
    assert sent["continue_final_message"] is True and sent["add_generation_prompt"] is False
    assert (reasoning, content) == ("deep thought", "ok")


def test_multi_turn_reasoning_removed_before_upstream(
    client: openai.OpenAI, fresh_sim: SimProcess
) -> None:
    client.chat.completions.create(
        model="think",
        messages=[
            {"role": "user", "content": "first"},
            {
                "role": "assistant",
                "content": "long thought</think>\n\nfirst answer",
                "reasoning_content": "long thought",
            },  # type: ignore[list-item]
            {"role": "user", "content": "second"},
        ],
    )
    sent = fresh_sim.last_request()["messages"]
    assert sent[1] == {"role": "assistant", "content": "first answer"}
    assert sent[2]["content"] == "second"


def test_nested_reasoning_in_history_is_removed(
    client: openai.OpenAI, fresh_sim: SimProcess
) -> None:
    """What litellm and other routers send back: reasoning nested in provider fields."""
    litellm_turn = {
        "role": "assistant",
        "content": "first answer",
        "reasoning_details": [{"type": "reasoning.text", "text": "secret thought"}],
        "thinking_blocks": [{"type": "thinking", "thinking": "secret thought"}],
        "provider_specific_fields": {"reasoning": "secret thought", "refusal": None},
    }
    client.chat.completions.create(
        model="think",
        messages=[{"role": "user", "content": "first"}, litellm_turn, *USER],  # type: ignore[list-item]
    )
    sent = fresh_sim.last_request()["messages"]
    assert "secret thought" not in repr(sent)
    assert sent[1] == {
        "role": "assistant",
        "content": "first answer",
        "provider_specific_fields": {"refusal": None},
    }


def test_non_thinking_profile_untouched(client: openai.OpenAI, fresh_sim: SimProcess) -> None:
    resp = client.chat.completions.create(model="plain", messages=USER, max_tokens=16)
    assert "</think>" in (resp.choices[0].message.content or "")
    assert resp.choices[0].message.model_extra.get("reasoning_content") is None  # type: ignore[union-attr]
