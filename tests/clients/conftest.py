"""The client conformance suite's servers and client environments.

One simulated vLLM and one gateway per test module. The gateway serves the shipped
``model_profiles.yaml`` (every backend pointed at the simulator, as ``gateway demo`` does) plus
copies of its DeepSeek-R1 profile with short timeouts, each stream-termination mode, each
single reasoning field, and hidden reasoning with a short heartbeat.

The client libraries live outside the gateway's venv (``scripts/install-clients.sh``; ``make
test`` passes ``GATEWAY_CLIENTS_DIR``). Missing ones skip with the reason, except under
``CI=true``, where they fail.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import GatewayServer, SimProcess, run_gateway, run_sim

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = Path(__file__).resolve().parent / "drivers"

DEMO = "deepseek-r1-distill-qwen-1.5b"  # the shipped R1 profile, as `gateway demo` serves it
API_KEY = "sk-conformance-suite"
ALLOWED_ORIGIN = "http://app.example"
#: the demo script's answer and reasoning, as every client must show them
ANSWER = "2 + 2 = **4**."
REASONING = "Okay, the user asks for 2 + 2. That is 4.\n"

#: derived from the shipped R1 profile: name -> changes
DERIVED: dict[str, dict[str, Any]] = {
    # a stream cut after its first byte: idle timeout of 1 s (first token: plenty, so a busy
    # machine does not turn the cut into a 504)
    "r1-cut": {"timeouts": {"first_token": 10, "idle": 1, "total": 30}},
    "r1-cut-graceful": {
        "timeouts": {"first_token": 10, "idle": 1, "total": 30},
        "stream_termination": "graceful",
    },
    # nothing before the first token within 1 s: a 504 before any byte
    "r1-slow-start": {"timeouts": {"first_token": 1, "idle": 5, "total": 30}},
    # total deadline hit mid-stream
    "r1-short-total": {"timeouts": {"first_token": 10, "idle": 10, "total": 1.5}},
    # no stop id: vLLM runs on into the end-of-sentence text, which the gateway's stop_text ends
    "r1-textstop": {"stop_token_ids": []},
    "r1-rc": {"reasoning": {"fields": ["reasoning_content"]}},
    "r1-r": {"reasoning": {"fields": ["reasoning"]}},
    "r1-hide": {"reasoning": {"mode": "hide"}, "timeouts": {"heartbeat": 0.25}},
}


#: the shipped R1 profile in front of a vLLM started with --max-model-len 8192 (item 5)
SHORT_CONTEXT = "r1-short-context"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def require(ok: bool, why: str) -> None:
    """Skip with the reason, or fail under CI, where the suite must run."""
    if ok:
        return
    if in_ci():
        pytest.fail(f"{why} (CI=true: the client conformance suite must run)", pytrace=False)
    pytest.skip(why)


def clients_dir() -> Path | None:
    raw = os.environ.get("GATEWAY_CLIENTS_DIR")
    return Path(raw) if raw else None


def python_of(venv: str) -> Path:
    d = clients_dir()
    require(
        d is not None,
        "GATEWAY_CLIENTS_DIR is not set: run scripts/install-clients.sh "
        "(make test does) and pass its output",
    )
    assert d is not None
    py = d / venv / "bin" / "python"
    require(
        py.is_file() and (d / venv / ".complete").is_file(),
        f"the clients venv {d / venv} is missing: run scripts/install-clients.sh",
    )
    return py


def node_setup() -> tuple[str, Path]:
    node = shutil.which("node")
    require(node is not None, "node is not installed: the openai Node SDK cannot be tested")
    d = clients_dir()
    require(d is not None, "GATEWAY_CLIENTS_DIR is not set: run scripts/install-clients.sh")
    assert node is not None and d is not None
    require(
        (d / "node" / "node_modules" / "openai").is_dir(),
        f"the openai npm package is missing under {d / 'node'}: run scripts/install-clients.sh",
    )
    return node, d / "node"


def profile_yaml(sim_url: str, short_sim_url: str) -> str:
    doc = yaml.safe_load((ROOT / "model_profiles.yaml").read_text(encoding="utf-8"))
    for model in doc["models"].values():
        model["backends"] = [{"url": sim_url}]
    r1 = doc["models"][DEMO]
    derived = {**DERIVED, SHORT_CONTEXT: {"backends": [{"url": short_sim_url}]}}
    for name, changes in derived.items():
        m = copy.deepcopy(r1)
        m.pop("variants", None)
        for key, value in changes.items():
            m[key] = {**m.get(key, {}), **value} if isinstance(value, dict) else value
        doc["models"][name] = m
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


def served_models() -> list[str]:
    doc = yaml.safe_load((ROOT / "model_profiles.yaml").read_text(encoding="utf-8"))
    return sorted({m["upstream_model"] for m in doc["models"].values()})


@pytest.fixture(scope="module")
def csim() -> Iterator[SimProcess]:
    with run_sim(served_models()) as s:
        yield s


@pytest.fixture(scope="module")
def csim_short_context() -> Iterator[SimProcess]:
    with run_sim(served_models(), "--max-model-len", "8192") as s:
        yield s


@pytest.fixture(scope="module")
def cgateway(csim: SimProcess, csim_short_context: SimProcess) -> Iterator[GatewayServer]:
    with run_gateway(
        profile_yaml(csim.url, csim_short_context.url),
        api_keys=(API_KEY,),
        cors_origins=(ALLOWED_ORIGIN,),
        api_key_header=True,
        watch=False,
    ) as gw:
        yield gw
