"""Reasoning control for every client dialect (#17 part 1) and max_tokens each backend accepts
(#13 item 5), with the openai SDK against simulated vLLM servers: one with vLLM's reasoning
parser (it enforces ``thinking_token_budget``), one without (the gateway forces the budget),
one with a short context."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.helpers import GatewayServer, SimProcess, run_gateway, run_sim, scrape, value

USER = [{"role": "user", "content": "What is 2 + 2?"}]
ANSWER = "2 + 2 = **4**."
#: the simulated R1's reasoning, token by token (the template opened <think>)
THOUGHT = ["Okay", ",", " the", " user", " asks", " for", " 2", " +", " 2", "."]


def thought(tokens: int) -> str:
    return "".join(THOUGHT[:tokens])


#: each dialect asking for a budget of ``b`` tokens
DIALECTS: dict[str, Any] = {
    "reasoning_effort": lambda b: {"reasoning_effort": "low"},  # the profiles map low -> b
    "reasoning": lambda b: {"reasoning": {"max_tokens": b}},
    "thinking": lambda b: {"thinking": {"type": "enabled", "budget_tokens": b}},
    "thinking_token_budget": lambda b: {"thinking_token_budget": b},
}
OFF: dict[str, Any] = {
    "reasoning_effort": {"reasoning_effort": "none"},
    "reasoning": {"reasoning": {"enabled": False}},
    "thinking": {"thinking": {"type": "disabled"}},
}
BACKEND_BUDGET = 6  # vLLM keeps B - 1 reasoning tokens (the prompt's "\n" after <think> counts)
GATEWAY_BUDGET = 5


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, SimProcess]]:
    served = ["sim-r1"]
    with (
        run_sim(served, "--reasoning-parser", "deepseek_r1") as parsed,
        run_sim(served) as plain,
        run_sim(served, "--max-model-len", "8192") as short,
    ):
        yield {"parsed": parsed, "plain": plain, "short": short}


@pytest.fixture(scope="module")
def gw(sims: dict[str, SimProcess]) -> Iterator[GatewayServer]:
    r1 = """
    upstream_model: sim-r1
    stop_token_ids: [151643]
    reasoning:
      parser: think_tags
      starts_in_reasoning: true"""
    text = f"""
health: {{interval: 0}}
models:
  qwen:                       # vLLM with --reasoning-parser: it enforces the budget
    backends: [{{url: "{sims["parsed"].url}"}}]{r1}
      control: {{efforts: {{low: {BACKEND_BUDGET}}}, answer_room: 8}}
  r1:                         # vLLM without a parser: the gateway forces the budget
    backends: [{{url: "{sims["plain"].url}"}}]{r1}
      control: {{enforce: gateway, off_switch: null, efforts: {{low: {GATEWAY_BUDGET}}}}}
  r1-completions:
    backends: [{{url: "{sims["plain"].url}"}}]{r1}
      control:
        enforce: gateway
        continuation: completions
        efforts: {{low: {GATEWAY_BUDGET}}}
  short:                      # the shipped R1 limit in front of --max-model-len 8192
    backends: [{{url: "{sims["short"].url}"}}]
    max_tokens_limit: 32768{r1}
"""
    with run_gateway(text) as g:
        yield g


@pytest.fixture
def client(gw: GatewayServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gw.base_url, api_key="t", max_retries=0, timeout=20) as c:
        yield c


def ask(
    client: openai.OpenAI, model: str, stream: bool, extra: dict[str, Any], **kw: Any
) -> tuple[str, str, str | None, Any]:
    """(reasoning, answer, finish_reason, usage) as an application sees them."""
    fields = dict(extra)
    effort = fields.pop("reasoning_effort", None)
    if effort is not None:
        kw["reasoning_effort"] = effort  # the SDK's own parameter
    if not stream:
        resp = client.chat.completions.create(model=model, messages=USER, extra_body=fields, **kw)
        msg = resp.choices[0].message
        extra_fields = msg.model_extra or {}
        return (
            extra_fields.get("reasoning_content") or "",
            msg.content or "",
            resp.choices[0].finish_reason,
            resp.usage,
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
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
        for c in chunks
        if c.choices
    )
    answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert len(finishes) == 1, finishes
    assert len({c.id for c in chunks}) == 1  # one stream
    return reasoning, answer, finishes[0], chunks[-1].usage


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_backend_enforced_budget_for_each_dialect(
    client: openai.OpenAI, sims: dict[str, SimProcess], dialect: str, stream: bool
) -> None:
    sim = sims["parsed"]
    sim.reset()
    reasoning, answer, finish, usage = ask(
        client, "qwen", stream, DIALECTS[dialect](BACKEND_BUDGET)
    )
    assert reasoning == thought(BACKEND_BUDGET - 1)
    assert answer == ANSWER and finish == "stop"
    sent = sim.last_request()
    assert sent["thinking_token_budget"] == BACKEND_BUDGET
    assert not {"reasoning_effort", "reasoning", "thinking"} & sent.keys()
    if dialect != "thinking_token_budget":
        assert sent["chat_template_kwargs"] == {"enable_thinking": True}
    # vLLM counts 0 for a template-opened block: the gateway fills an honest estimate
    details = usage.completion_tokens_details
    assert details.reasoning_tokens > 0
    assert (details.model_extra or {}).get("reasoning_tokens_estimated") is True


@pytest.mark.parametrize("model", ["r1", "r1-completions"])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_gateway_forced_budget_for_each_dialect(
    client: openai.OpenAI,
    gw: GatewayServer,
    sims: dict[str, SimProcess],
    dialect: str,
    stream: bool,
    model: str,
) -> None:
    sim = sims["plain"]
    sim.reset()
    before = value(scrape(gw.url), "gateway_reasoning_forced_stops_total", model=model)
    reasoning, answer, finish, usage = ask(client, model, stream, DIALECTS[dialect](GATEWAY_BUDGET))
    assert reasoning == thought(GATEWAY_BUDGET)  # exactly the budget, then the answer
    assert answer == ANSWER and finish == "stop"
    assert usage.completion_tokens_details.reasoning_tokens == GATEWAY_BUDGET  # counted
    first, second = sim.requests()
    assert "thinking_token_budget" not in first  # this vLLM would refuse it
    if model == "r1":
        assert second["messages"][-1]["content"] == (
            "<think>\n" + thought(GATEWAY_BUDGET) + "\n</think>\n\n"
        )
    else:
        assert second["prompt"].endswith("<think>\n" + thought(GATEWAY_BUDGET) + "\n</think>\n\n")
    after = value(scrape(gw.url), "gateway_reasoning_forced_stops_total", model=model)
    assert after == before + 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_budget_the_reasoning_stays_within_needs_one_request(
    client: openai.OpenAI, sims: dict[str, SimProcess], stream: bool
) -> None:
    sim = sims["plain"]
    sim.reset()
    reasoning, answer, _, usage = ask(client, "r1", stream, {"reasoning": {"max_tokens": 500}})
    assert answer == ANSWER and reasoning.startswith("Okay, the user asks for 2 + 2.")
    assert len(sim.requests()) == 1
    details = usage.completion_tokens_details
    if stream:  # counted from vLLM's per-chunk usage
        assert details.reasoning_tokens == 15
        assert not (details.model_extra or {}).get("reasoning_tokens_estimated")
    else:  # one non-stream answer: estimated from the text
        assert (details.model_extra or {}).get("reasoning_tokens_estimated") is True


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("dialect", list(OFF))
def test_thinking_off_for_each_dialect(
    client: openai.OpenAI, sims: dict[str, SimProcess], dialect: str, stream: bool
) -> None:
    sim = sims["parsed"]
    sim.reset()
    reasoning, answer, finish, usage = ask(client, "qwen", stream, OFF[dialect])
    # vLLM streams the answer as content but puts it all in `reasoning` without streaming:
    # the gateway gives the same answer both ways (the simulated model starts it with the
    # "\n\n" it writes after </think>)
    assert (reasoning, answer, finish) == ("", "\n\n" + ANSWER, "stop")
    assert sim.last_request()["chat_template_kwargs"] == {"enable_thinking": False}
    assert usage.completion_tokens_details.reasoning_tokens == 0


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_off_without_a_template_switch_is_forced_at_once(
    client: openai.OpenAI, sims: dict[str, SimProcess], stream: bool
) -> None:
    sims["plain"].reset()
    reasoning, answer, _, usage = ask(client, "r1", stream, {"reasoning_effort": "none"})
    # a non-stream first part has at least one token (vLLM's minimum max_tokens): it is
    # dropped, so both ways show no reasoning
    assert (reasoning, answer) == ("", ANSWER)
    assert usage.completion_tokens_details.reasoning_tokens == 0


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "extra",
    [
        {"reasoning": {"exclude": True}},
        {"reasoning": {"effort": "low", "exclude": True}},
        {"thinking": {"type": "enabled", "budget_tokens": 6, "display": "omitted"}},
    ],
)
def test_exclude_hides_the_reasoning(
    client: openai.OpenAI, extra: dict[str, Any], stream: bool
) -> None:
    reasoning, answer, _, usage = ask(client, "qwen", stream, extra)
    assert (reasoning, answer) == ("", ANSWER)
    assert usage.completion_tokens_details.reasoning_tokens > 0  # it still happened


def test_max_tokens_must_leave_room_for_the_answer(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="qwen", messages=USER, max_tokens=6, extra_body={"reasoning": {"max_tokens": 6}}
        )
    assert "must be larger than the reasoning budget" in bad.value.message
    assert bad.value.body["param"] == "max_tokens"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError, match="conflicting reasoning"):
        client.chat.completions.create(
            model="qwen",
            messages=USER,
            reasoning_effort="none",
            extra_body={"thinking": {"type": "enabled", "budget_tokens": 100}},
        )


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_tokens_are_filled_without_any_control(
    client: openai.OpenAI, stream: bool
) -> None:
    _, answer, _, usage = ask(client, "short", stream, {})
    assert answer == ANSWER
    details = usage.completion_tokens_details
    assert 0 < details.reasoning_tokens < usage.completion_tokens
    assert (details.model_extra or {}).get("reasoning_tokens_estimated") is True


@pytest.mark.parametrize("stream", [False, True])
def test_no_max_tokens_against_a_short_context_vllm(
    client: openai.OpenAI, sims: dict[str, SimProcess], stream: bool
) -> None:
    """#13 item 5: the profile's 32768 would be refused by a vLLM with max_model_len 8192."""
    sim = sims["short"]
    sim.reset()
    _, answer, finish, _ = ask(client, "short", stream, {})
    assert answer == ANSWER and finish == "stop"
    assert sim.last_request()["max_tokens"] == 8192
    # a client's own value above it is clamped too (max_tokens_policy: clamp)
    _, answer, _, _ = ask(client, "short", stream, {}, max_tokens=20000)
    assert answer == ANSWER and sim.last_request()["max_tokens"] == 8192
    completion = client.completions.create(model="short", prompt="2 + 2 =")
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert sim.last_request()["max_tokens"] == 8192
