"""The stream contract proven through the gateway against a real vLLM server.

Random weights emit no chosen token on their own: ``logit_bias`` forces one. Chunks are not
tokens (vLLM merges them), so nothing here counts chunks or measures timing.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.helpers import GatewayServer, assert_well_ended, sse_events
from tests.vllm.conftest import SERVED, VLLMServer
from tests.wire_shapes import (
    EOS_ID,
    THINK_END_ID,
    TOOL_END_ID,
    TOOL_START_ID,
    WHITESPACE_IDS,
    error_messages,
    load_during_stream,
    recordable,
    same_or_fewer_kinds,
    scenarios,
    semantics,
    union_kinds,
)

TRANSCRIPTS = Path(__file__).resolve().parent / "transcripts.json"
USER = [{"role": "user", "content": "hi"}]
FORCE_STOP = {"logit_bias": {"300": 100}}  # 300 is the tiny profile's injected stop id


@pytest.fixture
def client(vllm_gateway: GatewayServer) -> Any:
    with openai.OpenAI(base_url=vllm_gateway.base_url, api_key="t", max_retries=0, timeout=60) as c:
        yield c


def stream_raw(gw: GatewayServer, body: dict[str, Any]) -> list[Any]:
    r = httpx.post(gw.base_url + "/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return sse_events(r.content)


def test_injected_stop_id_stops_real_generation(client: openai.OpenAI, vllm: VLLMServer) -> None:
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=USER, stream=True, max_tokens=20, extra_body=FORCE_STOP
        )
    )
    final = chunks[-1].choices[0]
    assert final.finish_reason == "stop" and final.model_extra["stop_reason"] == 300  # type: ignore[index]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ""
    params = vllm.sampling_params(chunks[0].id)
    assert "stop_token_ids=[300]" in params
    resp = client.chat.completions.create(
        model="tiny", messages=USER, max_tokens=20, extra_body=FORCE_STOP
    )
    assert resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].model_extra["stop_reason"] == 300  # type: ignore[index]


def test_without_the_profile_the_forced_token_runs_to_length(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model="tiny-plain", messages=USER, max_tokens=5, extra_body=FORCE_STOP
    )
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 5


def test_defaults_client_values_overrides_land_in_sampling_params(
    client: openai.OpenAI, vllm: VLLMServer
) -> None:
    resp = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "system", "content": "be brief"}, *USER],
        max_tokens=2,
        temperature=1.2,
        extra_body={"stop_token_ids": [7], "min_p": 0.5},
    )
    params = vllm.sampling_params(resp.id)
    assert "temperature=1.2," in params  # the client's value beats the default 0.6
    assert "top_p=0.95," in params and "top_k=20," in params  # defaults fill the gaps
    assert "min_p=0.05," in params  # the override beats the client's 0.5
    assert "stop_token_ids=[7, 300]" in params  # merged, the client's first
    assert "max_tokens=2," in params


def test_length_and_eos_stop_finishes(vllm_gateway: GatewayServer, tiny_model: Any) -> None:
    (final,) = assert_well_ended(
        stream_raw(
            vllm_gateway, {"model": "tiny-plain", "messages": USER, "stream": True, "max_tokens": 3}
        )
    )
    assert final["finish_reason"] == "length" and final["stop_reason"] is None
    eos = tiny_model[1]["<|im_end|>"]
    events = stream_raw(
        vllm_gateway,
        {
            "model": "tiny-plain",
            "messages": USER,
            "stream": True,
            "max_tokens": 5,
            "logit_bias": {str(eos): 100},
        },
    )
    (final,) = assert_well_ended(events)
    assert final["finish_reason"] == "stop" and final["stop_reason"] is None
    assert all(e["model"] == "tiny-plain" for e in events[:-1])


@pytest.mark.parametrize("asked", [True, False])
def test_include_usage_with_and_without_the_client_asking(
    vllm_gateway: GatewayServer, asked: bool
) -> None:
    body: dict[str, Any] = {
        "model": "tiny-plain",
        "messages": USER,
        "stream": True,
        "max_tokens": 4,
    }
    if asked:
        body["stream_options"] = {"include_usage": True}
    events = stream_raw(vllm_gateway, body)
    assert_well_ended(events)
    usage = [e for e in events[:-1] if not e["choices"]]
    if asked:
        assert len(usage) == 1 and usage[0]["usage"]["completion_tokens"] == 4
        assert events[-2] is usage[0]
    else:
        assert usage == []


def test_vllm_error_bodies_passed_on(client: openai.OpenAI) -> None:
    # (max_tokens_policy: reject: the gateway leaves the client's value alone)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="tiny", messages=USER, max_tokens=100000)
    assert bad.value.status_code == 400
    assert "max_model_len" in bad.value.message
    assert bad.value.body["type"] == "BadRequestError"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="tiny-unserved", messages=USER)
    assert "not-served-here" in missing.value.message


def test_completions_stream_and_non_stream(client: openai.OpenAI, vllm: VLLMServer) -> None:
    chunks = list(
        client.completions.create(
            model="tiny", prompt="hello", stream=True, max_tokens=8, extra_body=FORCE_STOP
        )
    )
    assert [c.choices[0].finish_reason for c in chunks].count("stop") == 1
    assert chunks[-1].choices[0].finish_reason == "stop"
    resp = client.completions.create(model="tiny-plain", prompt="hello", max_tokens=3, seed=1)
    again = client.completions.create(model="tiny-plain", prompt="hello", max_tokens=3, seed=1)
    assert resp.choices[0].finish_reason == "length" and resp.model == "tiny-plain"
    assert resp.choices[0].text == again.choices[0].text  # seeded: reproducible


def test_stop_text_guard_closes_the_real_upstream(
    vllm_gateway: GatewayServer, vllm: VLLMServer
) -> None:
    # "<think>" is an added, non-special token: vLLM leaves it in the text.
    events = stream_raw(
        vllm_gateway,
        {
            "model": "tiny-guarded",
            "messages": USER,
            "stream": True,
            "max_tokens": 400,
            "ignore_eos": True,
            "logit_bias": {"417": 100},
        },
    )
    (final,) = assert_well_ended(events)
    assert final["finish_reason"] == "stop" and final["gateway_termination"] == "stop_text"
    assert final["stop_reason"] == "<think>"
    assert "".join(c["delta"].get("content") or "" for e in events[:-1] for c in e["choices"]) == ""
    vllm.wait_log(r"Aborted request\(s\) " + events[0]["id"])


def test_client_disconnect_aborts_the_vllm_request(
    vllm_gateway: GatewayServer, vllm: VLLMServer
) -> None:
    body = {
        "model": "tiny-plain",
        "messages": USER,
        "stream": True,
        "max_tokens": 400,
        "ignore_eos": True,
    }
    with httpx.stream(
        "POST", vllm_gateway.base_url + "/chat/completions", json=body, timeout=30
    ) as r:
        first = next(r.iter_lines())
    request_id = json.loads(first[len("data: ") :])["id"]
    vllm.wait_log(r"Aborted request\(s\) " + request_id)


def test_first_token_timeout_with_a_real_server(
    vllm_gateway: GatewayServer, vllm: VLLMServer
) -> None:
    # 1 ms is shorter than any real first token. The gateway may give up before vLLM even read
    # the request, or after vLLM started it; in the second case vLLM must abort it. The request
    # id the gateway forwards (X-Request-Id) is the one vLLM logs.
    rid = f"ft-{uuid.uuid4().hex}"
    body = {
        "model": "tiny-first-token",
        "messages": USER,
        "stream": True,
        "max_tokens": 400,
        "ignore_eos": True,
    }
    r = httpx.post(
        vllm_gateway.base_url + "/chat/completions",
        json=body,
        timeout=60,
        headers={"x-request-id": rid},
    )
    # nothing was sent yet: an HTTP error the SDKs understand, not a finished-looking stream
    assert r.status_code == 504 and r.headers["x-request-id"] == rid
    assert r.json()["error"]["code"] == "first_token_timeout"
    time.sleep(0.5)  # a request that reached vLLM is logged by now
    if f"Received request chatcmpl-{rid}" in vllm.log():
        vllm.wait_log(r"Aborted request\(s\) chatcmpl-" + rid)


def test_request_id_reaches_vllm(client: openai.OpenAI, vllm: VLLMServer) -> None:
    rid = f"id-{uuid.uuid4().hex}"
    resp = client.chat.completions.create(
        model="tiny-plain", messages=USER, max_tokens=2, extra_headers={"x-request-id": rid}
    )
    assert resp.id == f"chatcmpl-{rid}"
    assert f"Received request chatcmpl-{rid}" in vllm.log()


def test_idle_timeout_with_a_real_server(vllm_gateway: GatewayServer, vllm: VLLMServer) -> None:
    events = stream_raw(
        vllm_gateway,
        {
            "model": "tiny-idle",
            "messages": USER,
            "stream": True,
            "max_tokens": 400,
            "ignore_eos": True,
        },
    )
    assert assert_well_ended(events) == []  # cut after the first byte: an error event
    assert events[-2]["error"]["code"] == "idle_timeout"
    vllm.wait_log(r"Aborted request\(s\) " + events[0]["id"])


def test_reasoning_parser_output_passes_normalized(
    client: openai.OpenAI, vllm_gateway: GatewayServer, vllm_reasoning: VLLMServer
) -> None:
    # With deepseek_r1 and no </think> in the output, vLLM puts all text in `reasoning`.
    events = stream_raw(
        vllm_gateway, {"model": "tiny-r1", "messages": USER, "stream": True, "max_tokens": 6}
    )
    (final,) = assert_well_ended(events)
    assert final["finish_reason"] == "length"
    deltas = [c["delta"] for e in events[:-1] for c in e["choices"]]
    thought = "".join(d.get("reasoning") or "" for d in deltas)
    assert thought and thought == "".join(d.get("reasoning_content") or "" for d in deltas)
    assert all(e["model"] == "tiny-r1" for e in events[:-1])
    resp = client.chat.completions.create(model="tiny-r1", messages=USER, max_tokens=6)
    extra = resp.choices[0].message.model_extra or {}
    assert extra["reasoning"] and extra["reasoning_content"] == extra["reasoning"]
    assert resp.choices[0].finish_reason == "length" and resp.model == "tiny-r1"


def test_tiny_tokenizer_ids_match_the_scenarios(tiny_model: Any) -> None:
    ids = tiny_model[1]
    assert (ids["<|im_end|>"], ids["</think>"], ids["<tool_call>"], ids["</tool_call>"]) == (
        EOS_ID,
        THINK_END_ID,
        TOOL_START_ID,
        TOOL_END_ID,
    )
    assert ids["whitespace"] == WHITESPACE_IDS


def test_real_wire_format_matches_recorded_transcripts(
    vllm_flavours: dict[str, VLLMServer],
) -> None:
    """Re-record with GATEWAY_RECORD_TRANSCRIPTS=1 when vLLM's format changes on purpose;
    tests/test_sim_fidelity.py then holds the simulator to the new recording."""
    asked = os.environ.get("GATEWAY_RECORD_TRANSCRIPTS", "")
    # "1": every scenario; "a,b": only those (the others keep their recording)
    only = set(asked.split(",")) if asked and asked != "1" else set()
    record = bool(asked)
    live = {}
    for name, sc in scenarios().items():
        cap = sc.run(vllm_flavours[sc.flavour].url, SERVED)
        semantics(name, cap, SERVED)
        if record and only and name not in only:
            live[name] = json.loads(TRANSCRIPTS.read_text())[name]
            continue
        if record:  # under load vLLM merges tokens: record every chunk kind of 3 runs
            for _ in range(2):
                again = sc.run(vllm_flavours[sc.flavour].url, SERVED)
                semantics(name, again, SERVED)
                cap = union_kinds(cap, again)
        live[name] = recordable(cap)
    if record:
        TRANSCRIPTS.write_text(json.dumps(live, indent=1, ensure_ascii=False) + "\n")
    recorded = json.loads(TRANSCRIPTS.read_text())
    assert sorted(live) == sorted(recorded), "scenarios and recording differ: re-record"
    for name, cap in live.items():
        want = recorded[name]
        assert cap["status"] == want["status"], name
        assert cap["content_type"] == want["content_type"], name
        assert same_or_fewer_kinds(cap["shape"], want["shape"]), f"vLLM's {name} format changed"
        assert error_messages(cap, SERVED) == error_messages(want, SERVED), name


def test_real_metrics_follow_the_load(vllm: VLLMServer) -> None:
    seen = load_during_stream(vllm.url, SERVED)
    assert seen["vllm:num_requests_running"] == 1
    assert seen["vllm:num_requests_waiting"] == 0
    assert 0 < seen["vllm:kv_cache_usage_perc"] <= 1
