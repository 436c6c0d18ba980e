from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import GatewayServer, SimProcess, free_port, run_gateway, run_sim

R1_EOS = 151643
R1_STOP_TEXT = "<｜end▁of▁sentence｜>"


def profiles_for(sim_url: str, dead_url: str) -> str:
    """Profiles that exercise every rule, all pointed at the simulated vLLM."""
    return f"""
timeouts: {{connect: 2, first_token: 10, idle: 10, total: 30}}
models:
  r1:
    upstream_model: sim-r1
    backends: [{{url: "{sim_url}"}}]
    stop_token_ids: [{R1_EOS}]
    defaults: {{temperature: 0.6, top_p: 0.95}}
    overrides: {{}}
    prompt: {{leading_newline: true, system: merge}}
    stop_text: ["{R1_STOP_TEXT}"]
  plain:
    upstream_model: sim-r1
    backends: [{{url: "{sim_url}"}}]
  graceful:
    upstream_model: sim-r1
    backends: [{{url: "{sim_url}"}}]
    stream_termination: graceful
  guarded:
    upstream_model: sim-r1
    backends: [{{url: "{sim_url}"}}]
    stop_text: ["{R1_STOP_TEXT}", "<|im_end|>"]
  strict:
    upstream_model: sim-r1
    backends: [{{url: "{sim_url}"}}]
    stop_token_ids: [{R1_EOS}]
    defaults: {{temperature: 0.6, max_tokens: 100}}
    overrides: {{temperature: 0.1, top_k: 5}}
    prompt: {{system: drop}}
  hasty:
    upstream_model: sim-r1
    backends: [{{url: "{sim_url}"}}]
    timeouts: {{first_token: 0.5, idle: 0.5, total: 2}}
  hasty-graceful:
    upstream_model: sim-r1
    backends: [{{url: "{sim_url}"}}]
    timeouts: {{first_token: 0.5, idle: 0.5, total: 2}}
    stream_termination: graceful
  unserved:
    upstream_model: not-on-this-server
    backends: [{{url: "{sim_url}"}}]
  dead:
    backends: [{{url: "{dead_url}"}}]
  think:
    upstream_model: sim-r1
    backends: [{{url: "{sim_url}"}}]
    stop_token_ids: [{R1_EOS}]
    reasoning: {{starts_in_reasoning: true}}
  think-hide:
    upstream_model: sim-r1
    backends: [{{url: "{sim_url}"}}]
    stop_token_ids: [{R1_EOS}]
    reasoning: {{starts_in_reasoning: true, mode: hide}}
  think-hide-beat:
    upstream_model: sim-r1
    backends: [{{url: "{sim_url}"}}]
    stop_token_ids: [{R1_EOS}]
    reasoning: {{starts_in_reasoning: true, mode: hide}}
    timeouts: {{heartbeat: 0.25}}
  think-prefix:
    upstream_model: sim-r1
    backends: [{{url: "{sim_url}"}}]
    stop_token_ids: [{R1_EOS}]
    prompt: {{assistant_prefix: "<think>\\n"}}
    reasoning: {{fields: [reasoning_content]}}
  think-tags:
    upstream_model: sim-r1
    backends: [{{url: "{sim_url}"}}]
    reasoning: {{starts_in_reasoning: false, fields: [reasoning]}}
"""


@pytest.fixture(scope="session")
def sim() -> Iterator[SimProcess]:
    with run_sim(["sim-r1"]) as s:
        yield s


@pytest.fixture(scope="session")
def gateway(sim: SimProcess) -> Iterator[GatewayServer]:
    dead = f"http://127.0.0.1:{free_port()}"
    with run_gateway(profiles_for(sim.url, dead)) as gw:
        yield gw


@pytest.fixture
def fresh_sim(sim: SimProcess) -> SimProcess:
    sim.reset()
    return sim


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The numbers the container tests measured (build, size, start, RSS, stop)."""
    from tests.containers import MEASURED

    if MEASURED:
        terminalreporter.section("container measurements")
        for what, value in MEASURED.items():
            terminalreporter.write_line(f"{what}: {value}")
