"""StreamNormalizer without sockets: upstream payloads in, client frames out."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.stream import StreamNormalizer, normalize_response
from tests.helpers import assert_well_ended, sse_events


def chunk(index: int, content: str | None, finish: str | None = None, **extra: Any) -> bytes:
    ch: dict[str, Any] = {
        "index": index,
        "delta": {} if content is None else {"content": content},
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
    assert norm.stop_reading


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


def test_close_without_any_chunk_synthesizes_role_and_final() -> None:
    norm = StreamNormalizer(public_model="pub", endpoint="chat")
    events = run(norm, [], cause="first_token_timeout")
    (final,) = assert_well_ended(events)
    assert final["delta"] == {"role": "assistant", "content": ""}
    assert (
        final["finish_reason"] == "length" and final["gateway_termination"] == "first_token_timeout"
    )
    assert events[0]["object"] == "chat.completion.chunk" and events[0]["id"].startswith(
        "chatcmpl-"
    )


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
