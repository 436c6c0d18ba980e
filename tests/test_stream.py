"""StreamNormalizer without sockets: upstream payloads in, client frames out."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.stream import StreamNormalizer, normalize_response
from tests.helpers import assert_well_ended, sse_events


def chunk(
    index: int,
    content: str | None,
    finish: str | None = None,
    delta_override: dict[str, Any] | None = None,
    **extra: Any,
) -> bytes:
    delta = {} if content is None else {"content": content}
    ch: dict[str, Any] = {
        "index": index,
        "delta": delta if delta_override is None else delta_override,
        "logprobs": None,
        "finish_reason": finish,
        **extra,
    }
    return orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "upstream-name",
            "choices": [ch],
        }
    )


def run(norm: StreamNormalizer, payloads: list[bytes], cause: str | None = None) -> list[Any]:
    frames = [f for p in payloads for f in norm.feed(p)]
    return sse_events(b"".join(frames) + norm.close(cause))


def test_two_choices_each_get_one_final_and_usage_comes_after() -> None:
    norm = StreamNormalizer(public_model="pub", endpoint="chat", include_usage=True, n=2)
    usage = orjson.dumps({"id": "chatcmpl-1", "choices": [], "usage": {"completion_tokens": 3}})
    events = run(norm, [chunk(0, "a"), chunk(1, "b"), chunk(0, "", "stop"), usage], cause=None)
    finals = assert_well_ended(events, n=2)
    assert finals[0]["finish_reason"] == "stop"
    assert finals[1]["finish_reason"] == "stop" and finals[1]["upstream_finish_reason"] is None
    assert events[-2]["usage"] == {"completion_tokens": 3}  # after both finals
    assert all(e["model"] == "pub" for e in events[:-1])


def test_second_finish_and_text_after_finish_are_dropped() -> None:
    norm = StreamNormalizer(public_model="pub", endpoint="chat")
    events = run(norm, [chunk(0, "a", "stop"), chunk(0, "late", "length"), b"[DONE]"])
    (final,) = assert_well_ended(events)
    assert final["finish_reason"] == "stop"
    assert "late" not in repr(events)


def test_held_back_prefix_flushed_into_final_chunk() -> None:
    norm = StreamNormalizer(public_model="pub", endpoint="chat", stop_text=("<|im_end|>",))
    events = run(norm, [chunk(0, "answer <|im"), chunk(0, None, "length"), b"[DONE]"])
    (final,) = assert_well_ended(events)
    text = "".join(c["delta"].get("content") or "" for e in events[:-1] for c in e["choices"])
    assert text == "answer <|im" and final["finish_reason"] == "length"


def test_chunk_entirely_held_back_is_not_sent() -> None:
    norm = StreamNormalizer(public_model="pub", endpoint="chat", stop_text=("<|im_end|>",))
    assert norm.feed(chunk(0, "<|im_")) == []
    assert norm.feed(chunk(0, "end|> junk")) != []
    assert norm.ended == "stop_text"  # nothing more is read from the upstream


def test_unknown_finish_reason_and_completions_text() -> None:
    norm = StreamNormalizer(public_model="pub", endpoint="completions")
    payload = orjson.dumps(
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 1,
            "model": "u",
            "choices": [
                {
                    "index": 0,
                    "text": "x",
                    "logprobs": None,
                    "finish_reason": "weird",
                    "stop_reason": None,
                }
            ],
        }
    )
    events = run(norm, [payload, b"[DONE]"])
    (final,) = assert_well_ended(events)
    assert final["finish_reason"] == "stop" and final["upstream_finish_reason"] == "weird"


def test_graceful_close_without_any_chunk_synthesizes_role_and_final() -> None:
    norm = StreamNormalizer(public_model="pub", endpoint="chat", termination="graceful")
    events = run(norm, [], cause="idle_timeout")
    (final,) = assert_well_ended(events)
    assert final["delta"] == {"role": "assistant", "content": ""}
    assert final["finish_reason"] == "length" and final["gateway_termination"] == "idle_timeout"
    assert events[0]["object"] == "chat.completion.chunk" and events[0]["id"].startswith(
        "chatcmpl-"
    )


@pytest.mark.parametrize(
    "cause", ["idle_timeout", "total_timeout", "upstream_disconnect", "shutdown"]
)
def test_a_cut_stream_ends_with_an_error_event_by_default(cause: str) -> None:
    norm = StreamNormalizer(public_model="pub", endpoint="chat", include_usage=True, n=2)
    usage = orjson.dumps({"id": "chatcmpl-1", "choices": [], "usage": {"completion_tokens": 3}})
    events = run(norm, [chunk(0, "partial"), chunk(1, "done", "stop"), usage], cause=cause)
    assert_well_ended(events, n=2)
    err = events[-2]["error"]
    code = "server_shutting_down" if cause == "shutdown" else cause
    assert err["code"] == code and err["message"] and err["type"]
    # no final chunk for the cut choice, and no usage after it: the stream is not complete
    assert not any(c.get("finish_reason") == "length" for e in events[:-2] for c in e["choices"])
    assert not any("usage" in e for e in events[:-1])


@pytest.mark.parametrize("finish", ["abort", "error"])
def test_vllm_abort_finish_is_an_error_event_or_graceful_length(finish: str) -> None:
    norm = StreamNormalizer(public_model="pub", endpoint="chat")
    events = run(norm, [chunk(0, "part"), chunk(0, "ial", finish), chunk(0, "x"), b"[DONE]"])
    assert_well_ended(events)
    text = "".join(c["delta"].get("content") or "" for e in events[:-2] for c in e["choices"])
    assert text == "partial" and events[-2]["error"]["code"] == "upstream_abort"
    assert norm.cause == "upstream_abort"

    norm = StreamNormalizer(public_model="pub", endpoint="chat", termination="graceful")
    events = run(norm, [chunk(0, "part"), chunk(0, "ial", finish), b"[DONE]"])
    (final,) = assert_well_ended(events)
    assert final["finish_reason"] == "length" and final["upstream_finish_reason"] == finish


def test_list_prompts_stream_every_choice_to_its_end() -> None:
    """2 prompts x n=2: 4 choices; a stop string in one must not cut the others."""
    norm = StreamNormalizer(
        public_model="pub", endpoint="completions", n=4, stop_text=("<|im_end|>",)
    )

    def text(index: int, t: str, finish: str | None = None) -> bytes:
        ch = {"index": index, "text": t, "logprobs": None, "finish_reason": finish}
        return orjson.dumps({"id": "cmpl-1", "choices": [ch]})

    payloads = [text(0, "a<|im_end|>junk"), text(1, "b"), text(2, "c"), text(3, "d")]
    payloads += [text(i, "", "length") for i in (1, 2, 3)] + [b"[DONE]"]
    events = run(norm, payloads)
    finals = assert_well_ended(events, n=4)
    got = {i: "" for i in range(4)}
    for e in events[:-1]:
        for c in e["choices"]:
            got[c["index"]] += c["text"]
    assert got == {0: "a", 1: "b", 2: "c", 3: "d"}
    assert [f["finish_reason"] for f in finals] == ["stop", "length", "length", "length"]


def test_choice_index_outside_what_was_asked_is_a_protocol_error() -> None:
    norm = StreamNormalizer(public_model="pub", endpoint="chat", n=1)
    events = run(norm, [chunk(0, "a"), chunk(1023, "b"), chunk(0, "c", "stop")])
    assert_well_ended(events)
    assert events[-2]["error"]["code"] == "upstream_protocol_error"
    assert len(events) == 3  # a, the error, [DONE]: no frame per bogus index


def test_hidden_upstream_split_reasoning_sends_no_empty_chunks() -> None:
    from gateway.profiles import ReasoningRules

    rules = ReasoningRules("think_tags", True, ("reasoning_content",), "hide", True)
    norm = StreamNormalizer(public_model="pub", endpoint="chat", reasoning=rules)
    role = chunk(0, "", delta_override={"role": "assistant", "content": ""})
    payloads = [role] + [
        orjson.dumps({"id": "c", "choices": [{"index": 0, "delta": {"reasoning": f"r{i}"}}]})
        for i in range(5)
    ]
    payloads += [chunk(0, "answer"), chunk(0, None, "stop"), b"[DONE]"]
    events = run(norm, payloads)
    assert_well_ended(events)
    deltas = [c["delta"] for e in events[:-1] for c in e["choices"]]
    assert all(deltas[:-1]), deltas  # no empty {} delta
    assert "reasoning" not in repr(events) and "r3" not in repr(events)


def test_normalize_response_stop_text_and_abort() -> None:
    obj = {
        "model": "u",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok<|im_end|>junk"},
                "finish_reason": "length",
            },
            {
                "index": 1,
                "message": {"role": "assistant", "content": "cut"},
                "finish_reason": "abort",
            },
        ],
    }
    out = normalize_response(obj, public_model="pub", endpoint="chat", stop_text=("<|im_end|>",))
    first, second = out["choices"]
    assert first["message"]["content"] == "ok" and first["finish_reason"] == "stop"
    assert first["upstream_finish_reason"] == "length" and first["stop_reason"] == "<|im_end|>"
    assert second["finish_reason"] == "length" and second["upstream_finish_reason"] == "abort"
    assert out["model"] == "pub"
