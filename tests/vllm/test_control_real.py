"""#17 and #13 item 5 against the real vLLM server (CPU build, tiny random model):

* reasoning control for every client dialect: ``thinking_token_budget`` enforced by vLLM
  (``--reasoning-parser deepseek_r1``), budget forcing by the gateway (no parser; both
  continuations), thinking off, exclude; a ``logit_bias`` on one token forces a long think
  block (the random model would never close it);
* max_tokens the gateway set, capped to a ``--max-model-len 256`` server;
* routing by the real server's ``/metrics``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.helpers import GatewayServer, run_gateway, scrape, value, wait_for
from tests.vllm.conftest import SERVED, VLLMServer

USER = [{"role": "user", "content": "hi"}]
THINK = " think"  # token 300: the bias makes the model write it forever
BIAS = {"logit_bias": {"300": 100}}
ADMIN = "admin-token"
DIALECTS: dict[str, Any] = {
    "reasoning_effort": lambda b: {"reasoning_effort": "low"},  # low -> b in the profiles
    "reasoning": lambda b: {"reasoning": {"max_tokens": b}},
    "thinking": lambda b: {"thinking": {"type": "enabled", "budget_tokens": b}},
    "thinking_token_budget": lambda b: {"thinking_token_budget": b},
}
OFF: dict[str, Any] = {
    "reasoning_effort": {"reasoning_effort": "none"},
    "reasoning": {"reasoning": {"enabled": False}},
    "thinking": {"thinking": {"type": "disabled"}},
}
BACKEND_BUDGET = 5
GATEWAY_BUDGET = 6
MAX = 14


@pytest.fixture(scope="module")
def gw(vllm_flavours: dict[str, VLLMServer]) -> Iterator[GatewayServer]:
    plain, parsed, short = (vllm_flavours[k].url for k in ("plain", "reasoning", "tools"))
    # the tiny template opens "<think>\n" only with enable_thinking: true (as Qwen3's)
    think = "defaults: {chat_template_kwargs: {enable_thinking: true}}"
    text = f"""
health: {{interval: 0}}
routing: {{scrape_interval: 0.5, scrape_timeout: 3, stale_after: 4}}
models:
  budget-backend:
    upstream_model: {SERVED}
    backends: [{{url: "{parsed}"}}]
    {think}
    reasoning:
      parser: none
      control: {{efforts: {{low: {BACKEND_BUDGET}}}, answer_room: 4}}
  budget-gateway:
    upstream_model: {SERVED}
    backends: [{{url: "{plain}"}}]
    {think}
    reasoning:
      starts_in_reasoning: true
      control: {{enforce: gateway, efforts: {{low: {GATEWAY_BUDGET}}}, answer_room: 4}}
  budget-gateway-completions:
    upstream_model: {SERVED}
    backends: [{{url: "{plain}"}}]
    {think}
    reasoning:
      starts_in_reasoning: true
      control:
        enforce: gateway
        continuation: completions
        efforts: {{low: {GATEWAY_BUDGET}}}
        answer_room: 4
  short:
    upstream_model: {SERVED}
    backends: [{{url: "{short}"}}]
    max_tokens_limit: 32768
  balanced:
    upstream_model: {SERVED}
    backends: [{{url: "{plain}", name: a}}, {{url: "{parsed}", name: b}}]
"""
    with run_gateway(text, admin_token=ADMIN) as g:
        yield g


@pytest.fixture
def client(gw: GatewayServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gw.base_url, api_key="t", max_retries=0, timeout=60) as c:
        yield c


def ask(
    client: openai.OpenAI, model: str, stream: bool, extra: dict[str, Any], **kw: Any
) -> tuple[str, str, str | None, Any, str]:
    """(reasoning, answer, finish_reason, usage, id) as an application sees them."""
    fields = {**BIAS, **extra}
    effort = fields.pop("reasoning_effort", None)
    if effort is not None:
        kw["reasoning_effort"] = effort
    kw.setdefault("max_tokens", MAX)
    if not stream:
        resp = client.chat.completions.create(model=model, messages=USER, extra_body=fields, **kw)
        msg = resp.choices[0].message
        return (
            (msg.model_extra or {}).get("reasoning_content") or "",
            msg.content or "",
            resp.choices[0].finish_reason,
            resp.usage,
            resp.id,
        )
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=fields,
            **kw,
        )
    )
    choices = [c.choices[0] for c in chunks if c.choices]
    finishes = [c.finish_reason for c in choices if c.finish_reason]
    assert len(finishes) == 1 and len({c.id for c in chunks}) == 1  # one stream
    return (
        "".join((c.delta.model_extra or {}).get("reasoning_content") or "" for c in choices),
        "".join(c.delta.content or "" for c in choices),
        finishes[0],
        chunks[-1].usage,
        chunks[0].id,
    )


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_vllm_enforces_the_budget_for_each_dialect(
    client: openai.OpenAI, vllm_reasoning: VLLMServer, dialect: str, stream: bool
) -> None:
    reasoning, answer, finish, usage, rid = ask(
        client, "budget-backend", stream, DIALECTS[dialect](BACKEND_BUDGET)
    )
    # vLLM counts the prompt's "\n" after <think>: B - 1 reasoning tokens, then </think>
    assert reasoning == THINK * (BACKEND_BUDGET - 1)
    assert answer == THINK * (MAX - BACKEND_BUDGET) and finish == "length"
    assert f"thinking_token_budget={BACKEND_BUDGET}," in vllm_reasoning.sampling_params(rid)
    assert usage.completion_tokens == MAX
    assert usage.completion_tokens_details.reasoning_tokens > 0  # vLLM says 0: estimated


@pytest.mark.parametrize("model", ["budget-gateway", "budget-gateway-completions"])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_the_gateway_forces_the_budget_for_each_dialect(
    client: openai.OpenAI,
    gw: GatewayServer,
    vllm: VLLMServer,
    dialect: str,
    stream: bool,
    model: str,
) -> None:
    before = value(scrape(gw.url), "gateway_reasoning_forced_stops_total", model=model)
    reasoning, answer, finish, usage, rid = ask(
        client, model, stream, DIALECTS[dialect](GATEWAY_BUDGET)
    )
    thought = reasoning.count(THINK)
    assert reasoning == THINK * thought
    # the budget exactly, or the rest of one streamed chunk when vLLM merged tokens into it
    assert GATEWAY_BUDGET <= thought <= (GATEWAY_BUDGET + 4 if stream else GATEWAY_BUDGET)
    assert answer == THINK * (MAX - thought) and finish == "length"
    assert usage.completion_tokens == MAX  # one total over both requests
    assert usage.completion_tokens_details.reasoning_tokens == thought  # counted, not guessed
    assert usage.prompt_tokens < 30  # the client's prompt, not the continuation's
    # a second request continued the answer (vLLM's own request ids)
    prefix = "cmpl-" if model.endswith("completions") else "chatcmpl-"
    second = vllm.sampling_params(prefix + rid.removeprefix("chatcmpl-") + "-cont")
    assert f"max_tokens={MAX - thought}," in second
    assert "thinking_token_budget=None" in vllm.sampling_params(rid)
    if stream:  # the first stream was cut at the budget: vLLM aborted it
        vllm.wait_log(r"Aborted request\(s\) " + rid)
    after = value(scrape(gw.url), "gateway_reasoning_forced_stops_total", model=model)
    assert after == before + 1


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("dialect", list(OFF))
def test_thinking_off_for_each_dialect(
    client: openai.OpenAI, vllm_reasoning: VLLMServer, dialect: str, stream: bool
) -> None:
    reasoning, answer, finish, usage, _ = ask(client, "budget-backend", stream, OFF[dialect])
    # the template closed the think block: all of it is the answer, streamed or not (vLLM
    # itself puts a non-stream answer in `reasoning` here)
    assert (reasoning, answer, finish) == ("", THINK * MAX, "length")
    assert usage.completion_tokens_details.reasoning_tokens == 0


@pytest.mark.parametrize("stream", [False, True])
def test_exclude_hides_the_reasoning(client: openai.OpenAI, stream: bool) -> None:
    extra = {"reasoning": {"max_tokens": BACKEND_BUDGET, "exclude": True}}
    reasoning, answer, _, usage, _ = ask(client, "budget-backend", stream, extra)
    assert (reasoning, answer) == ("", THINK * (MAX - BACKEND_BUDGET))
    assert usage.completion_tokens_details.reasoning_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
def test_no_max_tokens_against_a_short_context_vllm(
    client: openai.OpenAI, gw: GatewayServer, vllm_flavours: dict[str, VLLMServer], stream: bool
) -> None:
    """#13 item 5: the profile's 32768 is capped to the 256 this vLLM reports."""
    short = vllm_flavours["tools"]
    for asked in ({}, {"max_tokens": 1000}):  # absent, and the client's own (clamp policy)
        _, answer, finish, usage, rid = ask(
            client, "short", stream, {"ignore_eos": True}, max_tokens=asked.get("max_tokens")
        )
        assert finish == "length" and answer
        params = short.sampling_params(rid)
        budget = 256 - usage.prompt_tokens  # vLLM clamps the rest to the context
        assert f"max_tokens={budget}," in params
        assert usage.completion_tokens == budget
    admin = httpx.get(gw.url + "/admin/profiles", headers={"authorization": f"Bearer {ADMIN}"})
    assert admin.json()["backends"]["short/b0"]["max_model_len"] == 256
    assert value(scrape(gw.url), "gateway_backend_max_model_len", model="short") == 256


def test_requests_avoid_the_vllm_whose_metrics_show_it_busy(
    client: openai.OpenAI, gw: GatewayServer, vllm: VLLMServer
) -> None:
    """Two long requests sent straight to server `a` (the gateway never saw them): its
    /metrics shows them running, so the gateway sends its own requests to `b`."""
    body = {"model": SERVED, "messages": USER, "max_tokens": 480, "ignore_eos": True}
    done = threading.Event()

    def busy() -> None:
        httpx.post(vllm.url + "/v1/chat/completions", json=body, timeout=120)

    threads = [threading.Thread(target=busy, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    headers = {"authorization": f"Bearer {ADMIN}"}

    def a_is_busy() -> bool:
        load = httpx.get(gw.url + "/admin/profiles", headers=headers).json()["backends"]
        a, b = load["balanced/a"]["load"], load["balanced/b"]["load"]
        return (
            isinstance(a, dict)
            and isinstance(b, dict)
            and a["running"] >= 1
            and not a["stale"]
            and not b["stale"]
            and b["running"] == 0
        )

    try:
        wait_for(a_is_busy, "a's /metrics to show the running requests", timeout=30)
        before = value(scrape(gw.url), "gateway_routing_decisions_total", model="balanced")
        for _ in range(3):
            r = client.chat.completions.with_raw_response.create(
                model="balanced", messages=USER, max_tokens=2
            )
            assert r.headers["x-gateway-backend"] == "b"
        samples = scrape(gw.url)
        assert value(samples, "gateway_backend_load", backend="a", kind="running") >= 1
        got = value(samples, "gateway_routing_decisions_total", model="balanced", reason="load")
        assert got - before >= 3 or got >= 3
    finally:
        for t in threads:
            t.join(120)
        done.set()
