from __future__ import annotations

from typing import Any

from gateway.profiles import parse_profiles
from gateway.transform import apply_leading_newline, apply_system_rule, build_upstream_body

PROFILES = parse_profiles("""
models:
  r1:
    upstream_model: up-r1
    backends: [{url: "http://127.0.0.1:1"}]
    stop_token_ids: [151643, 151643]
    defaults: {temperature: 0.6, top_p: 0.95}
    overrides: {max_tokens: 10}
    prompt: {leading_newline: true, system: merge}
""")
R1 = PROFILES.models["r1"]


def test_build_body_does_not_modify_the_client_body() -> None:
    body: dict[str, Any] = {
        "model": "r1",
        "messages": [{"role": "user", "content": "q"}],
        "temperature": None,
        "stream": True,
    }
    snapshot = repr(body)
    out, wants_usage = build_upstream_body(body, R1, "chat")
    assert repr(body) == snapshot
    assert out["model"] == "up-r1" and out["temperature"] == 0.6 and out["max_tokens"] == 10
    assert out["stop_token_ids"] == [151643]
    assert out["stream_options"] == {"include_usage": True} and wants_usage is False
    assert out["messages"] == [{"role": "user", "content": "\nq"}]


def test_client_usage_request_remembered() -> None:
    body = {"model": "r1", "prompt": "p", "stream": True, "stream_options": {"include_usage": True}}
    out, wants_usage = build_upstream_body(body, R1, "completions")
    assert wants_usage is True and out["prompt"] == "p"


def test_system_merge_without_user_turn_becomes_user() -> None:
    msgs = [{"role": "system", "content": "only system"}]
    assert apply_system_rule(msgs, "merge") == [{"role": "user", "content": "only system"}]


def test_system_merge_several_and_developer() -> None:
    msgs = [
        {"role": "system", "content": "a"},
        {"role": "developer", "content": "b"},
        {"role": "user", "content": [{"type": "image_url"}, {"type": "text", "text": "q"}]},
    ]
    assert apply_system_rule(msgs, "merge") == [
        {
            "role": "user",
            "content": [{"type": "image_url"}, {"type": "text", "text": "a\n\nb\n\nq"}],
        }
    ]
    assert apply_system_rule(msgs, "drop") == msgs[2:]
    assert apply_system_rule(msgs, "keep") is msgs


def test_leading_newline_targets_last_user_turn_only() -> None:
    msgs = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "partial"},
    ]
    out = apply_leading_newline(msgs)
    assert [m["content"] for m in out] == ["a", "b", "\nc", "partial"]
    assert msgs[2]["content"] == "c"
