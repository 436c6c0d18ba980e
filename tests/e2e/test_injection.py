"""What the gateway sends upstream: read back from the simulated vLLM's request log."""

from __future__ import annotations

import openai

from tests.helpers import SimProcess


def test_stop_ids_merged_defaults_fill_prompt_rules(
    client: openai.OpenAI, fresh_sim: SimProcess
) -> None:
    client.chat.completions.create(
        model="r1",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "First question"},
            {"role": "assistant", "content": "First answer"},
            {"role": "user", "content": "Second question"},
        ],
        temperature=1.0,
        extra_body={"stop_token_ids": [7, 151643]},
    )
    sent = fresh_sim.last_request()
    assert sent["model"] == "sim-r1"
    assert sent["stop_token_ids"] == [7, 151643]  # client's first, no duplicates
    assert sent["temperature"] == 1.0  # the client's value wins over a default
    assert sent["top_p"] == 0.95  # default filled where the client sent nothing
    assert sent["messages"] == [
        {"role": "user", "content": "Be brief.\n\nFirst question"},  # system merged
        {"role": "assistant", "content": "First answer"},
        {"role": "user", "content": "\nSecond question"},  # leading newline on the last user turn
    ]


def test_overrides_win_and_system_drop(client: openai.OpenAI, fresh_sim: SimProcess) -> None:
    client.chat.completions.create(
        model="strict",
        messages=[
            {"role": "system", "content": "secret rules"},
            {"role": "user", "content": "\nhi"},
        ],
        temperature=1.5,
        extra_body={"top_k": 50},
    )
    sent = fresh_sim.last_request()
    assert sent["temperature"] == 0.1 and sent["top_k"] == 5  # overrides always win
    assert sent["max_tokens"] == 100  # default
    assert sent["stop_token_ids"] == [151643]
    assert sent["messages"] == [{"role": "user", "content": "\nhi"}]


def test_leading_newline_not_doubled_and_content_parts(
    client: openai.OpenAI, fresh_sim: SimProcess
) -> None:
    client.chat.completions.create(model="r1", messages=[{"role": "user", "content": "\nalready"}])
    assert fresh_sim.last_request()["messages"][-1]["content"] == "\nalready"
    client.chat.completions.create(
        model="r1",
        messages=[{"role": "user", "content": [{"type": "text", "text": "parts"}]}],
    )
    assert fresh_sim.last_request()["messages"][-1]["content"] == [
        {"type": "text", "text": "\nparts"}
    ]


def test_plain_profile_passes_request_through(client: openai.OpenAI, fresh_sim: SimProcess) -> None:
    client.chat.completions.create(
        model="plain",
        messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        extra_body={"min_p": 0.05},
    )
    sent = fresh_sim.last_request()
    assert "stop_token_ids" not in sent and "temperature" not in sent
    assert sent["min_p"] == 0.05  # vLLM extra fields pass untouched
    assert sent["messages"] == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
    ]
