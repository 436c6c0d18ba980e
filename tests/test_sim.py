"""The simulated vLLM's own knobs: what the recordings cannot show (scripted load, faults,
per-choice scripts, budgets on the R1 demo script), and the openai SDK reading its output."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway import sim_checks as chk
from gateway import sim_plan as sp
from tests.helpers import SimProcess, run_sim
from tests.wire_shapes import metric_values, sse

MODEL = "sim-r1"
USER = [{"role": "user", "content": "2+2?"}]
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, SimProcess]]:
    flavours = {
        "plain": ["--max-num-seqs", "1", "--kv-cache-tokens", "1000"],
        "r1": ["--reasoning-parser", "deepseek_r1", "--eos-token-id", "151643"],
        "tools": ["--tool-call-parser", "hermes", "--enable-auto-tool-choice",
                  "--enable-responses-store", "--eos-token-id", "151643"],
    }  # fmt: skip
    with contextlib.ExitStack() as stack:
        yield {n: stack.enter_context(run_sim([MODEL], *f)) for n, f in flavours.items()}


def post(sim: SimProcess, path: str, body: dict[str, Any], timeout: float = 30) -> httpx.Response:
    return httpx.post(sim.url + path, json={"model": MODEL, **body}, timeout=timeout)


def metrics(sim: SimProcess) -> dict[str, float]:
    text = httpx.get(sim.url + "/metrics", timeout=10).text
    names = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
    return {n.split(":")[1]: metric_values(text, n)[0][1] for n in names}


# -- pure rules ---------------------------------------------------------------------------------

R1 = [(1, "Okay"), (2, ","), (3, " so"), (151649, "</think>"), (4, "\n\n4"), (151643, "")]


@pytest.mark.parametrize(
    ("budget", "want"),
    [
        (None, R1),
        (0, [(151649, "</think>"), *R1[4:]]),
        (1, [(151649, "</think>"), *R1[4:]]),  # the prompt's "\n" after <think> counts
        (3, [*R1[:2], (151649, "</think>"), *R1[4:]]),
        (4, R1),  # room for all three reasoning tokens
    ],
)
def test_budget_keeps_b_minus_one_reasoning_tokens(budget: int | None, want: Any) -> None:
    assert sp.shape_thinking(R1, off=False, budget=budget) == want


def test_thinking_off_generates_only_the_answer() -> None:
    assert sp.shape_thinking(R1, off=True, budget=None) == R1[4:]
    assert sp.thinking_off({"chat_template_kwargs": {"enable_thinking": False}})
    assert sp.thinking_off({"reasoning_effort": "none"})
    assert not sp.thinking_off(
        {"reasoning_effort": "none", "chat_template_kwargs": {"enable_thinking": True}}
    )


def test_prompt_plus_max_tokens_is_clamped_and_only_no_room_refused() -> None:
    caps = chk.Caps(max_model_len=100)
    assert chk.check_lengths(10, False, 100, "max_tokens", caps) == 90
    assert chk.check_lengths(10, False, None, "max_tokens", caps) == 90
    refused = chk.check_lengths(100, False, 5, "max_tokens", caps)
    assert isinstance(refused, chk.Refusal) and "at least 1, got 0" in refused.message
    refused = chk.check_lengths(10, False, 101, "max_tokens", caps)
    assert isinstance(refused, chk.Refusal) and refused.param == "max_tokens"
    refused = chk.check_lengths(150, True, 5, "max_tokens", caps)
    assert isinstance(refused, chk.Refusal) and "contains 150 input tokens" in refused.message


def test_schema_instance_satisfies_required_fields() -> None:
    schema = TOOL["function"]["parameters"]  # type: ignore[index]
    assert sp.schema_instance(schema) == {"city": "", "days": 0}
    assert sp.schema_instance({"type": "array", "items": {"enum": ["x"]}, "minItems": 2}) == [
        "x",
        "x",
    ]
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(100):  # a hostile schema: bounded
        node["properties"] = {"a": {}}
        node["required"] = ["a"]
        node = node["properties"]["a"]
    assert json.dumps(sp.schema_instance(deep)).count("{") <= 34


def test_tool_call_tokens_parse_back_and_a_cut_call_does_not() -> None:
    tokens = sp.tool_call_tokens([("f", '{"a": 1}'), ("g", "{}")])
    assert sp.parse_tool_calls(tokens) == ("", [("f", '{"a": 1}'), ("g", "{}")])
    assert sp.parse_tool_calls(tokens[:3]) is None
    assert sp.parse_tool_calls([(1, "text")]) is None


def test_reasoning_tokens_count_only_a_generated_think_block() -> None:
    assert sp.count_reasoning_tokens(R1) == 0  # the template opened <think>
    assert (
        sp.count_reasoning_tokens([(9, "<think>"), (1, "a"), (2, "b"), (151649, "</think>")]) == 2
    )


# -- load and /metrics --------------------------------------------------------------------------


def test_scripted_load_overrides_and_clears(sims: dict[str, SimProcess]) -> None:
    sim = sims["plain"]
    try:
        r = httpx.post(sim.url + "/sim/load", json={"waiting": 5, "kv": 0.9, "running": 3})
        assert r.status_code == 200 and r.json()["waiting"] == 5
        assert metrics(sim) == {
            "num_requests_running": 3,
            "num_requests_waiting": 5,
            "kv_cache_usage_perc": 0.9,
        }
        httpx.post(sim.url + "/sim/load", json={"waiting": None})
        assert metrics(sim)["num_requests_waiting"] == 0
        assert httpx.post(sim.url + "/sim/load", json={"kv": "high"}).status_code == 400
    finally:
        sim.reset()
    assert metrics(sim) == {
        "num_requests_running": 0,
        "num_requests_waiting": 0,
        "kv_cache_usage_perc": 0,
    }


def test_metrics_can_stall_fail_or_drop(sims: dict[str, SimProcess]) -> None:
    sim = sims["plain"]
    try:
        httpx.post(sim.url + "/sim/load", json={"metrics_delay": 5})
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(sim.url + "/metrics", timeout=0.5)
        httpx.post(sim.url + "/sim/load", json={"metrics_delay": 0, "metrics_status": 503})
        assert httpx.get(sim.url + "/metrics").status_code == 503
        httpx.post(sim.url + "/sim/load", json={"metrics_status": None, "metrics_drop": True})
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(sim.url + "/metrics")
    finally:
        sim.reset()
    assert httpx.get(sim.url + "/metrics").status_code == 200


def test_requests_beyond_max_num_seqs_wait_and_are_reported(sims: dict[str, SimProcess]) -> None:
    sim = sims["plain"]  # --max-num-seqs 1 --kv-cache-tokens 1000
    slow = {"messages": USER, "stream": True, "sim": {"token_delay": 0.05}}
    started = threading.Event()
    results: list[float] = []

    def run(body: dict[str, Any]) -> None:
        with httpx.stream(
            "POST", sim.url + "/v1/chat/completions", json={"model": MODEL, **body}, timeout=30
        ) as r:
            for _ in r.iter_lines():
                started.set()
        results.append(time.monotonic())

    first = threading.Thread(target=run, args=(slow,))
    first.start()
    assert started.wait(10)
    second = threading.Thread(target=run, args=({"messages": USER, "stream": True},))
    second.start()
    deadline = time.monotonic() + 5
    while metrics(sim)["num_requests_waiting"] != 1:
        assert time.monotonic() < deadline, "the second request never waited"
        time.sleep(0.02)
    m = metrics(sim)
    assert m["num_requests_running"] == 1 and 0 < m["kv_cache_usage_perc"] < 1
    first.join(30)
    second.join(30)
    assert len(results) == 2 and metrics(sim)["num_requests_waiting"] == 0


# -- chat and completions -------------------------------------------------------------------------


def test_a_choice_that_ends_early_finishes_while_the_others_stream(
    sims: dict[str, SimProcess],
) -> None:
    short = [[1, "a"], [2, "."]]
    long_ = [[1, "x"], [2, "y"], [3, "z"], [4, "w"]]
    r = post(sims["plain"], "/v1/completions", {
        "prompt": ["p", "q"], "n": 2, "stream": True, "max_tokens": 10,
        "sim": {"choices": [short, long_, long_, long_]},
    })  # fmt: skip
    order = [(c["index"], c["finish_reason"]) for e in sse(r.content)[:-1] for c in e["choices"]]
    assert order.index((0, "stop")) < order.index((1, None), 3)  # 0 ended, 1 still streams
    texts: dict[int, str] = {}
    for e in sse(r.content)[:-1]:
        for c in e["choices"]:
            texts[c["index"]] = texts.get(c["index"], "") + c["text"]
    assert texts == {0: "a.", 1: "xyzw", 2: "xyzw", 3: "xyzw"}


def test_budget_on_the_r1_script(sims: dict[str, SimProcess]) -> None:
    body = {"messages": USER, "max_tokens": 100, "thinking_token_budget": 3}
    msg = post(sims["r1"], "/v1/chat/completions", body).json()["choices"][0]["message"]
    assert msg["reasoning"] == "Okay," and msg["content"] == "\n\n2 + 2 = **4**."
    r = post(
        sims["r1"],
        "/v1/chat/completions",
        {**body, "stream": True, "stream_options": {"include_usage": True}},
    )
    events = sse(r.content)
    deltas = [c["delta"] for e in events[:-1] for c in e["choices"]][1:]
    assert "".join(d.get("reasoning", "") for d in deltas) == "Okay,"
    assert {} in deltas  # the forced </think> alone, as vLLM sends it
    assert events[-2]["usage"]["completion_tokens_details"] == {"reasoning_tokens": 0}


def test_thinking_off_streams_content_but_non_stream_reports_reasoning(
    sims: dict[str, SimProcess],
) -> None:
    body = {"messages": USER, "max_tokens": 100, "chat_template_kwargs": {"enable_thinking": False}}
    msg = post(sims["r1"], "/v1/chat/completions", body).json()["choices"][0]["message"]
    assert (msg["reasoning"], msg["content"]) == ("\n\n2 + 2 = **4**.", None)  # vLLM 0.32's parser
    events = sse(post(sims["r1"], "/v1/chat/completions", {**body, "stream": True}).content)
    deltas = [c["delta"] for e in events[:-1] for c in e["choices"]][1:]
    assert "".join(d.get("content", "") for d in deltas) == "\n\n2 + 2 = **4**."
    assert not any("reasoning" in d for d in deltas)


def test_auto_tool_calls_can_be_scripted_and_run_in_parallel(sims: dict[str, SimProcess]) -> None:
    calls = [{"name": "get_weather", "arguments": {"city": "Oslo", "days": 1}},
             {"name": "get_weather", "arguments": {"city": "Rome", "days": 2}}]  # fmt: skip
    body = {"messages": USER, "tools": [TOOL], "sim": {"tool_calls": calls}}
    choice = post(sims["tools"], "/v1/chat/completions", body).json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    got = [
        (c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in choice["message"]["tool_calls"]
    ]
    assert got == [(c["name"], c["arguments"]) for c in calls]
    events = sse(post(sims["tools"], "/v1/chat/completions", {**body, "stream": True}).content)
    heads = [
        t
        for e in events[:-1]
        for c in e["choices"]
        for t in c["delta"].get("tool_calls") or ()
        if "id" in t
    ]
    assert [h["index"] for h in heads] == [0, 1]


def test_the_sdk_reads_n_tools_and_structured_output(sims: dict[str, SimProcess]) -> None:
    with openai.OpenAI(base_url=sims["tools"].url + "/v1", api_key="t", max_retries=0) as client:
        resp = client.chat.completions.create(model=MODEL, messages=USER, n=3)  # type: ignore[arg-type]
        assert [c.index for c in resp.choices] == [0, 1, 2]
        named = client.chat.completions.create(
            model=MODEL, messages=USER, tools=[TOOL],  # type: ignore[list-item]
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
        )  # fmt: skip
        call = named.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert json.loads(call.function.arguments) == {"city": "", "days": 0}  # type: ignore[union-attr]
        chunks = list(client.chat.completions.create(
            model=MODEL, messages=USER, stream=True,  # type: ignore[arg-type]
            response_format={"type": "json_object"}, extra_body={"sim": {"json": {"answer": 4}}},
        ))  # fmt: skip
        assert json.loads("".join(c.choices[0].delta.content or "" for c in chunks)) == {
            "answer": 4
        }


# -- the Responses API ---------------------------------------------------------------------------


def test_responses_with_the_sdk_stream_store_and_continue(sims: dict[str, SimProcess]) -> None:
    with openai.OpenAI(base_url=sims["tools"].url + "/v1", api_key="t", max_retries=0) as client:
        first = client.responses.create(model=MODEL, input="2+2?", instructions="be brief")
        assert first.output_text.endswith("2 + 2 = **4**.") and first.status == "completed"
        with client.responses.stream(
            model=MODEL, input="and 3+3?", previous_response_id=first.id
        ) as stream:
            kinds = [e.type for e in stream]
            final = stream.get_final_response()
        assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
        assert final.previous_response_id == first.id
        assert client.responses.retrieve(first.id).id == first.id
        assert final.usage is not None and first.usage is not None
        assert final.usage.input_tokens > first.usage.input_tokens  # the history is in the prompt


def test_responses_reasoning_split_and_items(sims: dict[str, SimProcess]) -> None:
    r = post(sims["r1"], "/v1/responses", {"input": "2+2?"}).json()
    assert [i["type"] for i in r["output"]] == ["reasoning", "message"]
    assert r["output"][0]["content"][0]["text"].startswith("Okay,")
    names = [
        e["event"]
        for e in sse(post(sims["r1"], "/v1/responses", {"input": "2+2?", "stream": True}).content)
    ]
    assert names.index("response.reasoning_text.delta") < names.index("response.output_text.delta")
    assert names.count("response.output_item.done") == 2


@pytest.mark.parametrize(
    ("fault", "completed", "cut"),
    [({}, 1, False), ({"finish": "omit"}, 0, False), ({"finish": "twice"}, 2, False),
     ({"drop_after": 3}, 0, True), ({"error_after": 3}, 0, True)],
)  # fmt: skip
def test_responses_stream_faults(
    sims: dict[str, SimProcess], fault: dict[str, Any], completed: int, cut: bool
) -> None:
    body = {"model": MODEL, "input": "hi", "stream": True, "sim": fault}
    chunks: list[bytes] = []
    with httpx.stream("POST", sims["plain"].url + "/v1/responses", json=body, timeout=10) as r:
        try:
            for chunk in r.iter_raw():
                chunks.append(chunk)
            was_cut = False
        except httpx.RemoteProtocolError:
            was_cut = True
    assert was_cut == cut
    raw = b"".join(chunks)
    assert raw.count(b"event: response.completed\n") == completed


def test_responses_stall_sends_keepalives(sims: dict[str, SimProcess]) -> None:
    body = {"model": MODEL, "input": "hi", "stream": True,
            "sim": {"stall_after": 2, "stall_for": 0.5, "keepalive": 0.1}}  # fmt: skip
    t0 = time.monotonic()
    raw = httpx.post(sims["plain"].url + "/v1/responses", json=body, timeout=10).content
    assert time.monotonic() - t0 >= 0.5
    assert raw.count(b": keep-alive\n\n") >= 3 and b"event: response.completed" in raw


def test_responses_cancel_a_background_response(sims: dict[str, SimProcess]) -> None:
    sim = sims["tools"]
    r = post(
        sim, "/v1/responses", {"input": "hi", "background": True, "sim": {"first_token_delay": 30}}
    ).json()
    assert r["status"] == "queued"
    assert httpx.post(f"{sim.url}/v1/responses/{r['id']}/cancel").json()["status"] == "cancelled"
    assert httpx.get(f"{sim.url}/v1/responses/{r['id']}").json()["status"] == "cancelled"
    done = post(sim, "/v1/responses", {"input": "hi", "background": True}).json()
    deadline = time.monotonic() + 5
    while httpx.get(f"{sim.url}/v1/responses/{done['id']}").json()["status"] == "queued":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert httpx.get(f"{sim.url}/v1/responses/{done['id']}").json()["status"] == "completed"


def test_the_request_is_named_after_x_request_id(sims: dict[str, SimProcess]) -> None:
    sim = sims["plain"]
    r = httpx.post(sim.url + "/v1/chat/completions", json={"model": MODEL, "messages": USER},
                   headers={"X-Request-Id": "abc"})  # fmt: skip
    assert r.json()["id"] == "chatcmpl-abc"
    r = post(sim, "/v1/completions", {"prompt": "hi", "request_id": "r1"})
    assert r.json()["id"] == "cmpl-r1"
