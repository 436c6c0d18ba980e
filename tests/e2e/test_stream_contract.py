"""Every point of the stream contract, through the official SDK and on the wire."""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest

from tests.conftest import R1_STOP_TEXT
from tests.helpers import SimProcess, assert_well_ended

USER = [{"role": "user", "content": "What is 2 + 2?"}]


def chat_text(events: list[Any]) -> str:
    return "".join(
        c["delta"].get("content") or "" for e in events[:-1] if "choices" in e for c in e["choices"]
    )


def test_injected_stop_id_ends_stream_before_run_on(
    client: openai.OpenAI, fresh_sim: SimProcess
) -> None:
    chunks = list(client.chat.completions.create(model="r1", messages=USER, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.endswith("2 + 2 = **4**.")
    assert R1_STOP_TEXT not in text and "Thanks" not in text
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0] is chunks[-1]
    assert finals[0].choices[0].finish_reason == "stop"
    assert finals[0].choices[0].model_extra["stop_reason"] == 151643  # type: ignore[index]
    assert all(c.model == "r1" for c in chunks)


def test_without_stop_id_the_upstream_runs_on(raw: Any, fresh_sim: SimProcess) -> None:
    # The failure the gateway exists for: no stop id, so the stop token leaks as text.
    status, _, events = raw(
        "/chat/completions", {"model": "plain", "messages": USER, "stream": True}
    )
    assert status == 200
    assert_well_ended(events)
    assert R1_STOP_TEXT in chat_text(events) and "Thanks" in chat_text(events)


def test_stream_wire_format_role_first_done_last(raw: Any, fresh_sim: SimProcess) -> None:
    status, headers, events = raw(
        "/chat/completions", {"model": "r1", "messages": USER, "stream": True}
    )
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert headers["x-gateway-profile-version"]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    (final,) = assert_well_ended(events)
    assert final["finish_reason"] == "stop" and final["stop_reason"] == 151643
    assert "upstream_finish_reason" not in final  # nothing was repaired
    assert not any(e != "[DONE]" and not e["choices"] for e in events)  # no usage: not asked


@pytest.mark.parametrize("asked", [True, False])
def test_usage_chunk_only_when_client_asked(raw: Any, fresh_sim: SimProcess, asked: bool) -> None:
    body: dict[str, Any] = {"model": "r1", "messages": USER, "stream": True}
    if asked:
        body["stream_options"] = {"include_usage": True}
    _, _, events = raw("/chat/completions", body)
    assert_well_ended(events)
    usage = [e for e in events[:-1] if not e["choices"]]
    assert fresh_sim.last_request()["stream_options"]["include_usage"] is True  # always asked
    if asked:
        assert len(usage) == 1 and events[-2] is usage[0]
        assert usage[0]["usage"]["completion_tokens"] > 0 and usage[0]["model"] == "r1"
    else:
        assert usage == []


def split_stop_script(stall_after: int) -> dict[str, Any]:
    return {
        "tokens": [
            [1, "Hello"],
            [2, " world<｜end"],
            [3, "▁of▁sen"],
            [4, "tence｜>"],
            [5, "LEAKED"],
        ],
        "stall_after": stall_after,
        "stall_for": 30,
    }


def test_stop_text_split_across_chunks_is_withheld_and_upstream_closed(
    raw: Any, fresh_sim: SimProcess
) -> None:
    # The upstream stalls right after the stop text: the gateway must not wait for it.
    t0 = time.monotonic()
    body = {"model": "guarded", "messages": USER, "stream": True, "sim": split_stop_script(4)}
    _, _, events = raw("/chat/completions", body)
    assert time.monotonic() - t0 < 5
    (final,) = assert_well_ended(events)
    assert chat_text(events) == "Hello world"
    assert final["finish_reason"] == "stop" and final["stop_reason"] == R1_STOP_TEXT
    assert final["gateway_termination"] == "stop_text"
    assert final["upstream_finish_reason"] is None
    deadline = time.monotonic() + 5
    while fresh_sim.stats()["cancelled"] < 1:
        assert time.monotonic() < deadline, "the upstream stream was not closed"
        time.sleep(0.05)


def test_stop_text_prefix_that_does_not_complete_is_released(
    raw: Any, fresh_sim: SimProcess
) -> None:
    tokens = [[1, "a <｜end"], [2, " of story"], [3, "."]]
    _, _, events = raw(
        "/chat/completions",
        {"model": "guarded", "messages": USER, "stream": True, "sim": {"tokens": tokens}},
    )
    (final,) = assert_well_ended(events)
    assert chat_text(events) == "a <｜end of story."
    assert final["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("script", "finish", "upstream", "termination"),
    [
        ({"finish": "abort"}, "length", "abort", None),
        ({"finish": "null"}, "stop", None, None),
        ({"finish": "omit"}, "stop", None, None),
        ({"finish": "omit", "omit_done": True}, "length", None, "upstream_disconnect"),
        ({"drop_after": 5}, "length", None, "upstream_disconnect"),
    ],
)
def test_broken_upstream_endings_are_repaired_gracefully(
    raw: Any,
    fresh_sim: SimProcess,
    script: dict[str, Any],
    finish: str,
    upstream: Any,
    termination: Any,
) -> None:
    """stream_termination: graceful -- every stream ends with a final chunk."""
    _, _, events = raw(
        "/chat/completions", {"model": "graceful", "messages": USER, "stream": True, "sim": script}
    )
    (final,) = assert_well_ended(events)
    assert final["finish_reason"] == finish
    assert final["upstream_finish_reason"] == upstream
    assert final.get("gateway_termination") == termination
    if "drop_after" in script:  # the sim's abort may lose the last chunk in flight
        assert "Okay, the user asks".startswith(chat_text(events)) and chat_text(events)


@pytest.mark.parametrize(
    ("script", "code"),
    [
        ({"finish": "abort"}, "upstream_abort"),
        ({"finish": "null"}, None),
        ({"finish": "omit"}, None),
        ({"finish": "omit", "omit_done": True}, "upstream_disconnect"),
        ({"drop_after": 5}, "upstream_disconnect"),
    ],
)
def test_broken_upstream_endings_are_honest_by_default(
    raw: Any, client: openai.OpenAI, fresh_sim: SimProcess, script: dict[str, Any], code: Any
) -> None:
    """The default: a stream the gateway had to cut ends with an error event, so SDKs raise
    instead of returning a partial answer that looks finished."""
    _, _, events = raw(
        "/chat/completions", {"model": "plain", "messages": USER, "stream": True, "sim": script}
    )
    finals = assert_well_ended(events)
    if code is None:
        assert finals[0]["finish_reason"] == "stop"
        return
    assert events[-2]["error"]["code"] == code and not finals
    if "drop_after" in script:  # the partial text went out (the drop may lose the last chunk)
        assert "Okay, the user asks".startswith(chat_text(events[:-2])) and chat_text(events[:-2])
    got = []
    with pytest.raises(openai.APIError) as exc:
        for chunk in client.chat.completions.create(
            model="plain", messages=USER, stream=True, extra_body={"sim": script}
        ):
            got.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    assert exc.value.body["code"] == code  # type: ignore[index]
    assert "".join(got)  # a UI has already shown the partial text


def test_missing_done_after_finish_is_added(raw: Any, fresh_sim: SimProcess) -> None:
    _, _, events = raw(
        "/chat/completions",
        {"model": "r1", "messages": USER, "stream": True, "sim": {"omit_done": True}},
    )
    (final,) = assert_well_ended(events)
    assert final["finish_reason"] == "stop" and final["stop_reason"] == 151643


def test_keepalive_comments_are_understood(raw: Any, fresh_sim: SimProcess) -> None:
    sim = {"first_token_delay": 0.3, "stall_after": 3, "stall_for": 0.3, "keepalive": 0.05}
    _, _, events = raw(
        "/chat/completions", {"model": "r1", "messages": USER, "stream": True, "sim": sim}
    )
    (final,) = assert_well_ended(events)
    assert chat_text(events).endswith("**4**.") and final["finish_reason"] == "stop"


def test_upstream_error_event_reaches_client_as_error_then_done(
    client: openai.OpenAI, raw: Any, fresh_sim: SimProcess
) -> None:
    body = {"model": "r1", "messages": USER, "stream": True, "sim": {"error_after": 3}}
    _, _, events = raw("/chat/completions", body)
    assert_well_ended(events)
    assert events[-2]["error"]["message"] == "simulated engine error"
    with pytest.raises(openai.APIError, match="simulated engine error"):
        list(
            client.chat.completions.create(
                model="r1", messages=USER, stream=True, extra_body={"sim": {"error_after": 3}}
            )
        )


def test_malformed_upstream_event_ends_with_error_event(raw: Any, fresh_sim: SimProcess) -> None:
    body = {"model": "r1", "messages": USER, "stream": True, "sim": {"malformed_after": 2}}
    _, _, events = raw("/chat/completions", body)
    assert_well_ended(events)
    assert events[-2]["error"]["code"] == "upstream_protocol_error"


def test_merged_chunks_keep_text_and_single_final(raw: Any, fresh_sim: SimProcess) -> None:
    # vLLM merges tokens into one chunk under load; the finish chunk then carries text too.
    _, _, events = raw(
        "/chat/completions",
        {"model": "r1", "messages": USER, "stream": True, "max_tokens": 7, "sim": {"merge": 3}},
    )
    (final,) = assert_well_ended(events)
    assert final["finish_reason"] == "length"
    assert chat_text(events) == "Okay, the user asks for 2"


def test_completions_stream_and_non_stream(client: openai.OpenAI, fresh_sim: SimProcess) -> None:
    # vLLM's /v1/completions defaults max_tokens to 16: ask for room
    chunks = list(client.completions.create(model="r1", prompt="2+2=", stream=True, max_tokens=64))
    assert "".join(c.choices[0].text for c in chunks).endswith("**4**.")
    assert [c.choices[0].finish_reason for c in chunks].count("stop") == 1
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert fresh_sim.last_request()["prompt"] == "2+2="  # prompt rules are chat-only
    resp = client.completions.create(model="guarded", prompt="2+2=", max_tokens=64)
    assert resp.choices[0].text.endswith("**4**.") and R1_STOP_TEXT not in resp.choices[0].text
    assert resp.choices[0].finish_reason == "stop" and resp.model == "guarded"


def test_non_stream_normalization(client: openai.OpenAI, fresh_sim: SimProcess) -> None:
    resp = client.chat.completions.create(model="guarded", messages=USER)
    assert resp.choices[0].message.content.endswith("2 + 2 = **4**.")  # type: ignore[union-attr]
    assert resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].model_extra["gateway_termination"] == "stop_text"  # type: ignore[index]
    assert resp.model == "guarded" and resp.usage is not None
    # vLLM's abort: see test_client_facing (an error by default, `length` when graceful)


async def test_async_sdk_stream(aclient: openai.AsyncOpenAI, fresh_sim: SimProcess) -> None:
    stream = await aclient.chat.completions.create(
        model="r1", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_models_list_and_health(client: openai.OpenAI, raw: Any) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids[:9] == [
        "r1",
        "plain",
        "graceful",
        "guarded",
        "strict",
        "hasty",
        "hasty-graceful",
        "unserved",
        "dead",
    ]
