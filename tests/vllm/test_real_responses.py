"""The Responses API (#15) through the gateway against real vLLM servers (CPU build, tiny
random model): the profile lands in vLLM's SamplingParams, the stream contract holds on the
real wire, the stop-text guard and the timeouts abort the real request, conversations and
background responses live on vLLM's store (``VLLM_ENABLE_RESPONSES_API_STORE=1``), vLLM's own
reasoning items pass, and the Agents SDK runs on its default (Responses) model.

Random weights say nothing chosen: ``logit_bias`` forces a token where one matters.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.clients.conftest import DRIVERS, python_of
from tests.helpers import GatewayServer, run_gateway, wait_for
from tests.vllm.conftest import SERVED, VLLMServer

TERMINALS = {"response.completed", "response.incomplete", "response.failed"}
DRIVER = DRIVERS / "agents_responses.py"


@pytest.fixture(scope="module")
def rgw(vllm_flavours: dict[str, VLLMServer]) -> Iterator[GatewayServer]:
    plain = vllm_flavours["plain"].url
    store = vllm_flavours["tools"].url
    reasoning = vllm_flavours["reasoning"].url
    profile = f"""
timeouts: {{connect: 5, first_token: 60, idle: 30, total: 120}}
models:
  tiny:
    upstream_model: {SERVED}
    backends: [{{url: "{plain}"}}]
    stop_token_ids: [300]
    defaults: {{temperature: 0.6, top_p: 0.95, top_k: 20, max_tokens: 6}}
    overrides: {{min_p: 0.05}}
    prompt: {{leading_newline: true, system: merge}}
  tiny-plain:
    upstream_model: {SERVED}
    backends: [{{url: "{plain}"}}]
  tiny-guarded:
    upstream_model: {SERVED}
    backends: [{{url: "{plain}"}}]
    stop_text: ["<think>"]
  tiny-first-token:
    upstream_model: {SERVED}
    backends: [{{url: "{plain}"}}]
    timeouts: {{first_token: 0.001}}
  tiny-idle:
    upstream_model: {SERVED}
    backends: [{{url: "{plain}"}}]
    timeouts: {{idle: 0.001}}
  tiny-idle-graceful:
    upstream_model: {SERVED}
    backends: [{{url: "{plain}"}}]
    timeouts: {{idle: 0.001}}
    stream_termination: graceful
  tiny-store:
    upstream_model: {SERVED}
    backends: [{{url: "{store}"}}]
    defaults: {{max_tokens: 4}}
  tiny-agent:
    upstream_model: {SERVED}
    backends: [{{url: "{store}"}}]
    stop_token_ids: [300]
    defaults: {{logit_bias: {{"300": 100}}}}
  tiny-agent-cut:
    upstream_model: {SERVED}
    backends: [{{url: "{store}"}}]
    defaults: {{max_tokens: 200, ignore_eos: true}}
    timeouts: {{idle: 0.001}}
  tiny-r1:
    upstream_model: {SERVED}
    backends: [{{url: "{reasoning}"}}]
    defaults: {{max_tokens: 8}}
    reasoning: {{parser: none}}
  tiny-r1-hide:
    upstream_model: {SERVED}
    backends: [{{url: "{reasoning}"}}]
    defaults: {{max_tokens: 8}}
    reasoning: {{parser: none, mode: hide}}
"""
    with run_gateway(profile) as gw:
        yield gw


@pytest.fixture
def client(rgw: GatewayServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=rgw.base_url, api_key="t", max_retries=0, timeout=60) as c:
        yield c


def check_stream(events: list[Any], model: str) -> Any:
    assert events[0].type == "response.created"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    terminals = [e for e in events if e.type in TERMINALS]
    assert len(terminals) == 1 and terminals[0] is events[-1], [e.type for e in events]
    assert {e.response.model for e in events if hasattr(e, "response")} == {model}
    texts: dict[str, str] = {}
    for e in events:
        if e.type == "response.output_text.delta":
            texts[e.item_id] = texts.get(e.item_id, "") + e.delta
        elif e.type == "response.output_text.done":
            assert e.text == texts.get(e.item_id, "")
    return terminals[0]


def test_the_profile_lands_in_vllms_sampling_params(
    client: openai.OpenAI, vllm: VLLMServer
) -> None:
    r = client.responses.create(
        model="tiny",
        instructions="be brief",
        input="hi",
        temperature=1.2,
        extra_body={"stop_token_ids": [7], "min_p": 0.5},
    )
    assert r.model == "tiny" and r.id.startswith("resp_") and len(r.id) == 53
    params = vllm.sampling_params(r.id)  # the id the gateway minted is vLLM's request id
    assert "temperature=1.2," in params  # the client's value beats the default 0.6
    assert "top_p=0.95," in params and "top_k=20," in params  # defaults fill the gaps
    assert "min_p=0.05," in params  # the override beats the client's 0.5
    assert "stop_token_ids=[7, 300]" in params  # merged, the client's first
    assert "max_tokens=6," in params  # profile max_tokens became max_output_tokens
    forced = client.responses.create(
        model="tiny", input="hi", extra_body={"logit_bias": {"300": 100}}
    )
    assert forced.status == "completed" and forced.output_text == ""


def test_stream_contract_on_the_real_wire(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model="tiny-plain",
            input="hi",
            stream=True,
            max_output_tokens=3,
            extra_body={"ignore_eos": True},
        )
    )
    terminal = check_stream(events, "tiny-plain")
    assert terminal.type == "response.incomplete"  # max_output_tokens: vLLM says completed
    assert terminal.response.incomplete_details.reason == "max_output_tokens"
    with client.responses.stream(
        model="tiny", input="hi", extra_body={"logit_bias": {"300": 100}}
    ) as stream:
        list(stream)
        final = stream.get_final_response()
    assert final.status == "completed" and final.model == "tiny"


def test_stop_text_guard_aborts_the_real_request(client: openai.OpenAI, vllm: VLLMServer) -> None:
    # "<think>" (417) is an added, non-special token: vLLM leaves it in the text
    body = {
        "max_output_tokens": 400,
        "extra_body": {"ignore_eos": True, "logit_bias": {"417": 100}},
    }
    events = list(client.responses.create(model="tiny-guarded", input="hi", stream=True, **body))
    terminal = check_stream(events, "tiny-guarded")
    assert terminal.type == "response.completed"
    assert terminal.response.model_extra["gateway_termination"] == "stop_text"  # type: ignore[index]
    assert "<think>" not in "".join(getattr(e, "delta", "") for e in events)
    vllm.wait_log(r"Aborted request\(s\) " + terminal.response.id)
    whole = client.responses.create(model="tiny-guarded", input="hi", **body)
    assert whole.output_text == "" and whole.status == "completed"


@pytest.mark.parametrize("graceful", [False, True])
def test_idle_timeout_after_the_first_byte(
    client: openai.OpenAI, vllm: VLLMServer, graceful: bool
) -> None:
    model = "tiny-idle-graceful" if graceful else "tiny-idle"
    events = list(
        client.responses.create(
            model=model,
            input="hi",
            stream=True,
            max_output_tokens=400,
            extra_body={"ignore_eos": True},
        )
    )
    terminal = check_stream(events, model)
    if graceful:
        assert terminal.type == "response.incomplete"
        assert terminal.response.incomplete_details.reason == "idle_timeout"
    else:
        assert terminal.type == "response.failed"
        assert terminal.response.error.code == "idle_timeout"
    vllm.wait_log(r"Aborted request\(s\) " + events[0].response.id)


def test_first_token_timeout_is_a_504(rgw: GatewayServer) -> None:
    body = {"model": "tiny-first-token", "input": "hi", "stream": True, "max_output_tokens": 400}
    r = httpx.post(rgw.base_url + "/responses", json=body, timeout=60)
    assert r.status_code == 504 and r.json()["error"]["code"] == "first_token_timeout"


def test_client_disconnect_aborts_the_vllm_request(rgw: GatewayServer, vllm: VLLMServer) -> None:
    body = {
        "model": "tiny",
        "input": "hi",
        "stream": True,
        "max_output_tokens": 400,
        "ignore_eos": True,
    }
    with httpx.stream("POST", rgw.base_url + "/responses", json=body, timeout=30) as r:
        first = next(line for line in r.iter_lines() if line.startswith("data: "))
    response_id = json.loads(first[len("data: ") :])["response"]["id"]
    vllm.wait_log(r"Aborted request\(s\) " + response_id)


def test_conversations_and_background_on_vllms_store(client: openai.OpenAI) -> None:
    first = client.responses.create(model="tiny-store", input="hi", instructions="be brief")
    # the follow-up's own input outgrows the first's instructions (not carried over), so
    # with the history its input is longer than the first's whatever the random model
    # wrote (its output may be reasoning that the template drops from the history)
    again = "again, and this time say it in more words please"
    second = client.responses.create(model="tiny-store", input=again, previous_response_id=first.id)
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens > first.usage.input_tokens  # type: ignore[union-attr]
    events = list(
        client.responses.create(
            model="tiny-store", input="more", previous_response_id=second.id, stream=True
        )
    )
    third = check_stream(events, "tiny-store").response
    got = client.responses.retrieve(third.id)
    assert got.id == third.id and got.model == "tiny-store"
    assert got.previous_response_id == second.id
    with pytest.raises(openai.BadRequestError, match="Cannot cancel a synchronous response"):
        client.responses.cancel(first.id)
    slow = client.responses.create(
        model="tiny-store",
        input="hi",
        background=True,
        max_output_tokens=250,
        extra_body={"ignore_eos": True},
    )
    assert slow.status in ("queued", "in_progress") and slow.model == "tiny-store"
    cancelled = client.responses.cancel(slow.id)
    assert cancelled.status == "cancelled"
    assert client.responses.retrieve(slow.id).status == "cancelled"
    done = client.responses.create(model="tiny-store", input="hi", background=True)
    ended = ("completed", "incomplete")  # 4 tokens: incomplete, or a stop token before them
    wait_for(lambda: client.responses.retrieve(done.id).status in ended, "background end", 60)


def test_a_background_stream_resumes_on_real_vllm(client: openai.OpenAI) -> None:
    first: list[Any] = []
    with client.responses.create(
        model="tiny-store",
        input="hi",
        background=True,
        stream=True,
        max_output_tokens=40,
        extra_body={"ignore_eos": True},
    ) as stream:
        for event in stream:
            first.append(event)
            if len(first) == 6:
                break
    response_id = first[0].response.id
    rest = list(
        client.responses.retrieve(
            response_id, stream=True, starting_after=first[-1].sequence_number
        )
    )
    terminal = check_stream(first + rest, "tiny-store")
    assert terminal.type == "response.incomplete"  # 40 tokens, eos ignored
    again = list(client.responses.retrieve(response_id, stream=True))
    assert [e.model_dump() for e in again] == [e.model_dump() for e in first + rest]


def test_vllms_reasoning_items_pass_or_hide(client: openai.OpenAI) -> None:
    # random text without </think>: vLLM's deepseek_r1 parser makes it all reasoning
    for model in ("tiny-r1", "tiny-r1-hide"):
        events = list(
            client.responses.create(model=model, input="hi", stream=True, extra_body={"seed": 1})
        )
        terminal = check_stream(events, model)
        kinds = [i.type for i in terminal.response.output]
        whole = client.responses.create(model=model, input="hi", extra_body={"seed": 1})
        if model == "tiny-r1-hide":
            assert "reasoning" not in kinds and "reasoning" not in [i.type for i in whole.output]
            assert not [e for e in events if "reasoning" in e.type]
        else:
            assert "reasoning" in kinds and "reasoning" in [i.type for i in whole.output]
        indexes = sorted({e.output_index for e in events if hasattr(e, "output_index")})
        assert indexes == list(range(len(kinds)))


@pytest.mark.timeout(300)
def test_agents_sdk_default_model_on_real_vllm(rgw: GatewayServer) -> None:
    python = python_of("py-openai3")
    run = subprocess.run(
        [str(python), str(DRIVER), rgw.base_url, "t", "tiny-agent", "tiny-agent-cut", "notools"],
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "OPENAI_AGENTS_DISABLE_TRACING": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["default_model_is_responses"] is True
    # the stop id is forced at once: every answer is complete and empty
    assert out["nonstream"]["text"] == "" and out["nonstream"]["response_id"].startswith("resp_")
    assert out["second_turn"]["text"] == "" and out["history_turn"]["text"] == ""
    assert out["stream"]["text"] == out["stream"]["deltas"] == ""
    assert out["stream"]["events"].get("response.completed") == 1
    assert out["cut"]["raised"] == "ModelBehaviorError"
    assert "idle_timeout" in out["cut"]["message"]
