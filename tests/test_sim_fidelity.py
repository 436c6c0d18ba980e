"""The simulated vLLM must produce the wire format recorded from the real vLLM server.

Each scenario of ``tests/wire_shapes.py`` runs against a simulator started like the real
server flavour it was recorded from; shapes, statuses, content types and error messages must
match the recording in ``tests/vllm/transcripts.json``, and the value-level facts
(``semantics``) must hold.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import SimProcess, run_sim
from tests.wire_shapes import fidelity_check, load_during_stream, scenarios, semantics

RECORDED = json.loads((Path(__file__).parent / "vllm" / "transcripts.json").read_text())
REAL_MODEL = "tiny-qwen"
MODEL = "sim-r1"
FLAVOURS = {
    "plain": ["--max-model-len", "512"],
    "reasoning": ["--max-model-len", "512", "--reasoning-parser", "deepseek_r1"],
    "tools": [
        "--max-model-len",
        "256",
        "--tool-call-parser",
        "hermes",
        "--enable-auto-tool-choice",
        "--enable-responses-store",
    ],
}
SCENARIOS = scenarios()


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, SimProcess]]:
    with contextlib.ExitStack() as stack:
        yield {
            name: stack.enter_context(run_sim([MODEL], *flags)) for name, flags in FLAVOURS.items()
        }


def test_every_scenario_is_recorded() -> None:
    assert sorted(SCENARIOS) == sorted(RECORDED), "re-record: GATEWAY_RECORD_TRANSCRIPTS=1"


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_simulator_matches_real_vllm_transcript(sims: dict[str, SimProcess], name: str) -> None:
    sc = SCENARIOS[name]
    cap = sc.run(sims[sc.flavour].url, MODEL)
    semantics(name, cap, MODEL)
    fidelity_check(name, sc, cap, RECORDED[name], (MODEL, REAL_MODEL))


def test_simulator_metrics_follow_the_load(sims: dict[str, SimProcess]) -> None:
    seen = load_during_stream(sims["plain"].url, MODEL)
    assert seen["vllm:num_requests_running"] == 1
    assert seen["vllm:num_requests_waiting"] == 0
    assert 0 < seen["vllm:kv_cache_usage_perc"] <= 1
