"""The simulated vLLM must produce the wire format recorded from the real vLLM server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import SimProcess
from tests.wire_shapes import capture, scenarios, semantics

RECORDED = json.loads((Path(__file__).parent / "vllm" / "transcripts.json").read_text())


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_simulator_matches_real_vllm_transcript(sim: SimProcess, name: str) -> None:
    path, body = scenarios("sim-r1")[name]
    cap = capture(sim.url, path, body)
    semantics(name, cap)
    want = RECORDED[name]
    assert (cap["status"], cap["content_type"]) == (want["status"], want["content_type"])
    assert cap["shape"] == want["shape"], f"simulator drifted from vLLM for {name}"
