"""The OpenAI Agents SDK's default model (``OpenAIResponsesModel``, the Responses API)
through the gateway (#15): an agent answers, continues a server-side conversation, takes its
history back as items, streams, calls a tool and gets an error when the gateway cuts its
stream. The SDK runs in the clients venv (``scripts/install-clients.sh``; see conftest)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from tests.clients.conftest import DRIVERS, python_of
from tests.helpers import GatewayServer, SimProcess, run_gateway, run_sim

pytestmark = [pytest.mark.clients, pytest.mark.timeout(240)]
DRIVER = DRIVERS / "agents_responses.py"
KEY = "sk-agents"
REASONING = "Okay, the user asks for 2 + 2. That is 4.\n"
ANSWER = "2 + 2 = **4**."


@pytest.fixture(scope="module")
def tool_sim() -> Iterator[SimProcess]:
    with run_sim(
        ["sim-r1"],
        "--enable-responses-store",
        "--tool-call-parser",
        "hermes",
        "--enable-auto-tool-choice",
    ) as s:
        yield s


@pytest.fixture(scope="module")
def agents_gw(tool_sim: SimProcess) -> Iterator[GatewayServer]:
    common = f"""
    upstream_model: sim-r1
    backends: [{{url: "{tool_sim.url}"}}]
    stop_token_ids: [151643]
    prompt: {{leading_newline: true, system: merge}}
    reasoning: {{starts_in_reasoning: true}}"""
    profile = f"""
models:
  r1:{common}
  r1-cut:{common}
    timeouts: {{first_token: 10, idle: 1, total: 30}}
"""
    with run_gateway(profile, api_keys=(KEY,)) as gw:
        yield gw


def test_agents_sdk_default_model_through_the_gateway(
    agents_gw: GatewayServer, tool_sim: SimProcess
) -> None:
    python = python_of("py-openai3")
    tool_sim.reset()
    run = subprocess.run(
        [str(python), str(DRIVER), agents_gw.base_url, KEY, "r1", "r1-cut"],
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["default_model_is_responses"] is True
    assert out["nonstream"]["text"] == ANSWER
    assert out["nonstream"]["reasoning"] == [REASONING]
    assert out["second_turn"]["text"] == ANSWER
    assert out["history_turn"]["text"] == ANSWER
    assert out["stream"]["text"] == ANSWER and out["stream"]["deltas"] == ANSWER
    assert out["stream"]["events"]["response.completed"] == 1
    assert len(out["tool"]["calls"]) == 1 and set(out["tool"]["calls"][0]) == {"a", "b"}
    assert len(out["tool"]["outputs"]) == 1 and out["tool"]["text"] == ANSWER
    assert out["cut"]["raised"] == "ModelBehaviorError", out["cut"]
    assert "response.failed" in out["cut"]["message"] and "idle_timeout" in out["cut"]["message"]
    # what reached vLLM: the Responses API only, the conversation on its stored turn
    sent = tool_sim.requests()
    assert sent and all("input" in r and "messages" not in r for r in sent)
    first, second = sent[0], sent[1]
    assert second["previous_response_id"] == first["request_id"] == out["nonstream"]["response_id"]
    history = sent[2]["input"]
    assert not [i for i in history if i.get("type") == "reasoning"]  # hygiene: not sent back
    calls = [r for r in sent if r.get("tool_choice") == "required"]
    assert len(calls) == 1
    (after,) = [
        r
        for r in sent
        if any(i.get("type") == "function_call_output" for i in r["input"] if isinstance(i, dict))
    ]
    assert after.get("tool_choice") != "required"
