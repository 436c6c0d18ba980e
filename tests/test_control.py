"""Reasoning control and per-backend max_tokens without sockets: every dialect, the 400s, the
per-request rules, the caps, the reasoning-token count."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.backend_info import BackendInfo
from gateway.control import Control, capped, fit_budget, fix_thinking_off, merge_asks, read_asks
from gateway.control_spec import ReasoningControl
from gateway.errors import RequestError, UpstreamStatusError
from gateway.profiles import Backend, ProfileSet, parse_profiles
from gateway.security import Ticket
from gateway.transform import build_upstream_body, check_request
from gateway.usage import fill_reasoning_tokens

PROFILES = """
models:
  qwen:                                   # a hybrid model: its template has the switch
    upstream_model: up-qwen
    backends: [{url: "http://q:1"}]
    max_tokens_limit: 32768
    reasoning:
      starts_in_reasoning: true
      control: {efforts: {low: 100, medium: 400, high: 1600}, answer_room: 50}
  r1:                                     # no switch: thinking off is a budget of 0
    upstream_model: up-r1
    backends: [{url: "http://r:1"}]
    reasoning:
      starts_in_reasoning: true
      control: {off_switch: null, enforce: gateway, short_max_tokens: raise, answer_room: 50}
  r1-prefix:                              # the gateway sends the <think> prefix itself
    upstream_model: up-r1
    backends: [{url: "http://r:1"}]
    prompt: {assistant_prefix: "<think>\\n"}
    reasoning: {control: {default_budget: 300}}
  strict:
    upstream_model: up-s
    backends: [{url: "http://s:1"}]
    max_tokens_limit: 1000
    max_tokens_policy: reject
    reasoning: {}
  llama:
    upstream_model: up-llama
    backends: [{url: "http://l:1"}]
"""
SET: ProfileSet = parse_profiles(PROFILES, "<test>")
USER = [{"role": "user", "content": "hi"}]


def plan_for(model: str, endpoint: str = "chat", **fields: Any) -> Any:
    body: dict[str, Any] = {"model": model, **fields}
    if endpoint == "chat":
        body.setdefault("messages", USER)
    else:
        body.setdefault("prompt", "hi")
    profile = SET.models[model]
    check_request(body, endpoint, profile, SET.limits, 10)
    ticket = Ticket(SET, profile, None, body, {}, endpoint)  # type: ignore[arg-type]
    upstream, _ = build_upstream_body(body, profile, endpoint)
    return Control(None).plan(ticket, upstream)


# -- the dialects ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "budget"),
    [
        ({"reasoning_effort": "low"}, 100),
        ({"reasoning_effort": "high"}, 1600),
        ({"reasoning": {"effort": "medium"}}, 400),
        ({"reasoning": {"max_tokens": 77}}, 77),
        ({"reasoning": {"enabled": True}}, 400),  # OpenRouter: enabled alone means medium
        ({"thinking": {"type": "enabled", "budget_tokens": 1234}}, 1234),
        ({"thinking_token_budget": 55}, 55),
        ({"reasoning_effort": "low", "reasoning": {"max_tokens": 100}}, 100),  # they agree
    ],
)
def test_each_dialect_becomes_a_thinking_token_budget(fields: dict[str, Any], budget: int) -> None:
    plan = plan_for("qwen", **fields)
    body = plan.body
    assert body["thinking_token_budget"] == budget
    assert not {"reasoning_effort", "reasoning", "thinking"} & body.keys()  # translated
    switch = body.get("chat_template_kwargs")
    if "thinking_token_budget" in fields:  # vLLM's own field: no switch implied
        assert switch is None
    else:
        assert switch == {"enable_thinking": True}
    assert plan.profile.reasoning.mode == "split"


@pytest.mark.parametrize(
    "fields",
    [
        {"reasoning_effort": "none"},
        {"reasoning": {"enabled": False}},
        {"reasoning": {"effort": "none"}},
        {"thinking": {"type": "disabled"}},
        {"chat_template_kwargs": {"enable_thinking": False}},
    ],
)
def test_thinking_off_sets_the_template_switch_and_the_rules(fields: dict[str, Any]) -> None:
    plan = plan_for("qwen", **fields)
    assert plan.body["chat_template_kwargs"] == {"enable_thinking": False}
    assert "thinking_token_budget" not in plan.body
    assert plan.thinking_off and plan.profile.reasoning.starts_in_reasoning is False


def test_thinking_off_without_a_switch_is_a_budget_of_zero() -> None:
    plan = plan_for("r1", reasoning_effort="none", stream=True)
    assert plan.budget == 0 and plan.force and not plan.thinking_off
    assert "chat_template_kwargs" not in plan.body
    assert plan.body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}


def test_thinking_off_drops_the_gateways_own_think_prefix() -> None:
    plain = plan_for("r1-prefix")
    assert plain.body["messages"][-1] == {"role": "assistant", "content": "<think>\n"}
    assert plain.body["thinking_token_budget"] == 300  # the default budget
    off = plan_for("r1-prefix", reasoning={"enabled": False})
    assert off.body["messages"] == USER and "continue_final_message" not in off.body
    assert off.profile.assistant_prefix == ""


def test_exclude_hides_the_reasoning_for_that_request_only() -> None:
    for fields in (
        {"reasoning": {"exclude": True}},
        {"reasoning": {"effort": "low", "exclude": True}},
        {"thinking": {"type": "enabled", "budget_tokens": 10, "display": "omitted"}},
    ):
        plan = plan_for("qwen", **fields)
        assert plan.profile.reasoning.mode == "hide", fields
    assert SET.models["qwen"].reasoning.mode == "split"  # the profile itself is untouched


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"reasoning_effort": 3}, "reasoning_effort"),
        ({"reasoning": "high"}, "reasoning"),
        ({"reasoning": {"effort": "low", "max_tokens": 5}}, "reasoning"),
        ({"reasoning": {"max_tokens": -1}}, "reasoning.max_tokens"),
        ({"reasoning": {"max_tokens": True}}, "reasoning.max_tokens"),
        ({"reasoning": {"exclude": "yes"}}, "reasoning.exclude"),
        ({"reasoning": {"enabled": False, "effort": "low"}}, "reasoning"),
        ({"reasoning": {"verbosity": 1}}, "reasoning.verbosity"),
        ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
        ({"thinking": {"type": "maybe"}}, "thinking.type"),
        ({"thinking": []}, "thinking"),
        ({"thinking_token_budget": -2}, "thinking_token_budget"),
        ({"thinking_token_budget": 1.5}, "thinking_token_budget"),
        ({"thinking_token_budget": 2**63}, "thinking_token_budget"),
        ({"thinking": {"type": "enabled", "budget_tokens": 2**31}}, "thinking.budget_tokens"),
        ({"reasoning": {"max_tokens": 10**30}}, "reasoning.max_tokens"),
        (
            {"reasoning_effort": "none", "thinking": {"type": "enabled", "budget_tokens": 9}},
            "thinking",
        ),
        ({"reasoning_effort": "low", "thinking_token_budget": 5}, "thinking_token_budget"),
        (
            {"reasoning_effort": "high", "chat_template_kwargs": {"enable_thinking": False}},
            "chat_template_kwargs.enable_thinking",
        ),
    ],
)
def test_bad_or_conflicting_asks_are_a_400_naming_the_field(
    fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(RequestError) as err:
        plan_for("qwen", **fields)
    assert err.value.status == 400 and err.value.param == param, err.value.message


def test_a_model_that_does_not_reason_ignores_the_dialects() -> None:
    plan = plan_for("llama", reasoning_effort="high", reasoning={"effort": "low"})
    assert not {"reasoning_effort", "reasoning", "thinking"} & plan.body.keys()
    assert plan.budget is None


# -- room for the answer ---------------------------------------------------------------------


def test_a_client_max_tokens_at_or_below_the_budget_is_refused() -> None:
    with pytest.raises(RequestError, match=r"max_tokens \(400\) must be larger"):
        plan_for("qwen", reasoning_effort="medium", max_tokens=400)
    with pytest.raises(RequestError, match="max_completion_tokens"):
        plan_for("qwen", reasoning_effort="medium", max_completion_tokens=100)
    # both sent: vLLM uses max_completion_tokens, and the message quotes its value
    with pytest.raises(RequestError, match=r"max_completion_tokens \(2\) must be larger"):
        plan_for("qwen", thinking_token_budget=4, max_completion_tokens=2, max_tokens=100)
    assert plan_for("qwen", reasoning_effort="medium", max_tokens=401).body["max_tokens"] == 401


def test_or_raised_by_policy_and_the_gateways_own_value_always_is() -> None:
    raised = plan_for("r1", reasoning={"max_tokens": 500}, max_tokens=200, stream=True)
    assert raised.body["max_tokens"] == 550  # budget + answer_room
    own = plan_for("strict", thinking={"type": "enabled", "budget_tokens": 1000})
    assert own.body["max_tokens"] == 2024  # max_tokens_limit 1000 was the gateway's value
    assert own.cap  # and may be capped per backend


def test_non_stream_forcing_limits_the_first_part_to_the_budget() -> None:
    plan = plan_for("r1", reasoning={"max_tokens": 30}, max_tokens=100)
    assert plan.force and plan.body["max_tokens"] == 30 and plan.answer_max == 100
    with pytest.raises(RequestError, match="n = 1"):
        plan_for("r1", reasoning={"max_tokens": 30}, n=2)
    with pytest.raises(RequestError, match="chat/completions only"):
        plan_for("r1", "completions", reasoning={"max_tokens": 30})


# -- max_tokens each backend accepts ---------------------------------------------------------


def test_the_limit_fills_max_tokens_upstream_only() -> None:
    plan = plan_for("qwen")
    assert plan.body["max_tokens"] == 32768 and "max_tokens" not in plan.ticket.body
    assert plan.cap


def test_capped_lowers_both_spellings_and_keeps_room_for_the_answer() -> None:
    profile = SET.models["qwen"]
    body = {"max_tokens": 32768, "max_completion_tokens": 9000, "thinking_token_budget": 9000}
    assert capped(body, 8192, profile) == {
        "max_tokens": 8192,
        "max_completion_tokens": 8192,
        "thinking_token_budget": 8142,  # 8192 - answer_room 50
    }
    fits = {"max_tokens": 32768, "thinking_token_budget": 8000}
    assert capped(fits, 8192, profile)["thinking_token_budget"] == 8000  # still below
    small = {"max_tokens": 100}
    assert capped(small, 8192, profile) is small  # nothing to change: no copy
    assert fit_budget(100, None, 50) == 100
    assert fit_budget(100, 101, 50) == 100
    assert fit_budget(100, 100, 50) == 50  # fewer than twice the room: half for each
    assert fit_budget(500, 400, 50) == 350


def test_payload_caps_per_backend_and_a_refusal_teaches_the_limit() -> None:
    info = BackendInfo(None)
    ctl = Control(info)
    short = Backend(name="short", url="http://short:1")
    info.learn_max_model_len(short, "up-qwen", 8192)
    plan = plan_for("qwen")
    plan = ctl.plan(plan.ticket, build_upstream_body(plan.ticket.body, plan.profile, "chat")[0])
    (long,) = plan.profile.backends  # b0: nothing learned of it yet

    def sent(b: Backend) -> Any:
        return orjson.loads(ctl.payload(plan, b))["max_tokens"]

    assert sent(short) == 8192 and sent(long) == 32768  # unknown: as configured
    refusal = UpstreamStatusError(
        400, "max_tokens=32768 cannot be greater than max_model_len=4096. Please request fewer."
    )
    assert ctl.relearn(plan, "b0", refusal)
    assert sent(long) == 4096
    assert not ctl.relearn(plan, "b0", refusal)  # once per backend and request
    assert not ctl.relearn(plan, "other-model's-backend", refusal)
    other = UpstreamStatusError(400, "something else")
    fresh = plan_for("qwen")
    assert not ctl.relearn(fresh, "b0", other)
    # a broken or hostile backend's message teaches nothing absurd (and never raises)
    for bogus in ("max_model_len=0.", "max_model_len=" + "9" * 5000 + ".", "max_model_len=-5."):
        refusal = UpstreamStatusError(400, f"max_tokens=1 cannot be greater than {bogus}")
        assert not ctl.relearn(plan_for("qwen"), "b0", refusal)


def test_a_clients_explicit_value_is_capped_only_under_clamp() -> None:
    info = BackendInfo(None)
    ctl = Control(info)
    b = Backend(name="b", url="http://b:1")
    info.learn_max_model_len(b, "up-s", 256)
    for model, want in (("qwen", 256), ("strict", 900)):
        first = plan_for(model, max_tokens=900)
        plan = ctl.plan(
            first.ticket, build_upstream_body(first.ticket.body, first.profile, "chat")[0]
        )
        assert orjson.loads(ctl.payload(plan, b))["max_tokens"] == (
            want if model == "strict" else 900
        )
    strict = plan_for("strict")  # no client value: the gateway's limit is capped
    strict = ctl.plan(
        strict.ticket, build_upstream_body(strict.ticket.body, strict.profile, "chat")[0]
    )
    assert orjson.loads(ctl.payload(strict, b))["max_tokens"] == 256


# -- quirks and usage ------------------------------------------------------------------------


def test_thinking_off_non_stream_answer_moves_from_reasoning_to_content() -> None:
    obj = {"choices": [{"message": {"content": None, "reasoning": "4"}}]}
    fix_thinking_off(obj)
    assert obj["choices"][0]["message"] == {"content": "4"}
    kept = {"choices": [{"message": {"content": "4", "reasoning": "r"}}]}
    fix_thinking_off(kept)
    assert kept["choices"][0]["message"] == {"content": "4", "reasoning": "r"}


def test_reasoning_tokens_are_filled_kept_or_estimated() -> None:
    reported = {"completion_tokens": 10, "completion_tokens_details": {"reasoning_tokens": 4}}
    fill_reasoning_tokens(reported, 999, 1)
    assert reported["completion_tokens_details"] == {"reasoning_tokens": 4}
    zero = {"completion_tokens": 10, "completion_tokens_details": {"reasoning_tokens": 0}}
    fill_reasoning_tokens(zero, 30, 10)  # vLLM's 0 for a template-opened block
    assert zero["completion_tokens_details"] == {
        "reasoning_tokens": 8,  # round(10 * 30 / 40)
        "reasoning_tokens_estimated": True,
    }
    none: dict[str, Any] = {"completion_tokens": 10}
    fill_reasoning_tokens(none, 0, 50)
    assert none["completion_tokens_details"] == {"reasoning_tokens": 0}
    tiny: dict[str, Any] = {"completion_tokens": 100, "completion_tokens_details": None}
    fill_reasoning_tokens(tiny, 1, 100000)
    assert tiny["completion_tokens_details"]["reasoning_tokens"] == 1  # some reasoning: >= 1
    fill_reasoning_tokens("not a dict", 1, 1)


def test_read_asks_ignores_a_switch_the_profile_set() -> None:
    control = ReasoningControl()
    body = {"chat_template_kwargs": {"enable_thinking": True}}
    assert read_asks(body, control) == []  # from the profile's defaults: no ask
    asks = read_asks(body, control, {"enable_thinking": False})
    assert merge_asks(asks).enabled is False
