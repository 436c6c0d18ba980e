"""A real vLLM OpenAI server (CPU build) on a tiny locally built model, for the whole run.

The vLLM venv comes from ``scripts/install-vllm.sh`` (``make test`` runs it); its Python is
``$GATEWAY_VLLM_PYTHON`` or ``~/.cache/gateway/vllm-venv/bin/python``. If it is missing the
tests fail loudly: they are never skipped. Deselect them with ``-m "not vllm"``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers import GatewayServer, free_port, run_gateway

HERE = Path(__file__).resolve().parent
VLLM_PYTHON = os.environ.get("GATEWAY_VLLM_PYTHON") or str(
    Path.home() / ".cache" / "gateway" / "vllm-venv" / "bin" / "python"
)
SERVED = "tiny-qwen"
START_TIMEOUT = 300


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.vllm)
            # the first one's setup builds the model and waits for both servers
            item.add_marker(pytest.mark.timeout(START_TIMEOUT + 300))


@dataclass
class VLLMServer:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    started: float

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_healthy(self) -> None:
        deadline = self.started + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"vLLM exited with {self.proc.returncode}:\n{self.log()[-4000:]}"
                )
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"vLLM not healthy after {START_TIMEOUT}s:\n{self.log()[-4000:]}")

    def sampling_params(self, request_id: str) -> str:
        """The SamplingParams vLLM logged for ``request_id`` (its chat/completion id)."""
        m = re.search(
            re.escape(request_id) + r"\S*: params: SamplingParams\((.*?)\), lora", self.log()
        )
        assert m, f"no SamplingParams logged for {request_id}"
        return m.group(1)

    def wait_log(self, pattern: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log())
            if m:
                return m.group(0)
            time.sleep(0.05)
        raise AssertionError(f"vLLM log never showed {pattern!r}")

    def wait_count(self, text: str, count: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            assert time.monotonic() < deadline, f"vLLM log shows {text!r} fewer than {count} times"
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_vllm(
    model_dir: Path, work: Path, *extra: str, env: dict[str, str] | None = None
) -> VLLMServer:
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        **os.environ,
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_NO_USAGE_STATS": "1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_CACHE_ROOT": str(work / "cache"),
        "TORCHINDUCTOR_CACHE_DIR": str(work / "inductor"),
        "TMPDIR": str(work),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    log_path = work / "vllm.log"
    cmd = [
        VLLM_PYTHON,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        SERVED,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        "512",  # a later --max-model-len in ``extra`` wins
        "--dtype",
        "float32",
        "--enforce-eager",
        "--kv-cache-memory-bytes",
        str(64 * 1024 * 1024),
        "--generation-config",
        "vllm",
        "--enable-log-requests",
        *extra,
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
    return VLLMServer(f"http://127.0.0.1:{port}", proc, log_path, time.monotonic())


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    if not Path(VLLM_PYTHON).exists():
        pytest.fail(
            f"vLLM's Python not found at {VLLM_PYTHON}: run scripts/install-vllm.sh "
            "(make test does) or set GATEWAY_VLLM_PYTHON; deselect with -m 'not vllm'",
            pytrace=False,
        )
    out = tmp_path_factory.mktemp("tiny-model")
    subprocess.run(
        [VLLM_PYTHON, str(HERE / "build_tiny_model.py"), str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out, json.loads((out / "token_ids.json").read_text())


@pytest.fixture(scope="session")
def vllm_servers(
    tiny_model: tuple[Path, dict[str, int]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, VLLMServer]]:
    """The servers start at once (their start-ups overlap); always stopped.

    ``plain`` and ``reasoning`` (``--reasoning-parser deepseek_r1``) have max_model_len 512;
    ``tools`` has a Hermes tool parser with auto tool choice, max_model_len 256 and the
    Responses store (``VLLM_ENABLE_RESPONSES_API_STORE=1``)."""
    model_dir, _ = tiny_model
    base = tmp_path_factory.mktemp("vllm")
    servers: dict[str, VLLMServer] = {}
    try:
        servers["plain"] = start_vllm(model_dir, base / "plain")
        servers["reasoning"] = start_vllm(
            model_dir, base / "reasoning", "--reasoning-parser", "deepseek_r1"
        )
        servers["tools"] = start_vllm(
            model_dir,
            base / "tools",
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "hermes",
            "--max-model-len",
            "256",
            env={"VLLM_ENABLE_RESPONSES_API_STORE": "1"},
        )
        yield servers
    finally:
        for s in servers.values():
            s.stop()


@pytest.fixture(scope="session")
def vllm(vllm_servers: dict[str, VLLMServer]) -> VLLMServer:
    vllm_servers["plain"].wait_healthy()
    return vllm_servers["plain"]


@pytest.fixture(scope="session")
def vllm_flavours(vllm_servers: dict[str, VLLMServer]) -> dict[str, VLLMServer]:
    """Every server, healthy (the flavours of tests/wire_shapes.py)."""
    for server in vllm_servers.values():
        server.wait_healthy()
    return vllm_servers


@pytest.fixture(scope="session")
def vllm_reasoning(vllm_servers: dict[str, VLLMServer]) -> VLLMServer:
    vllm_servers["reasoning"].wait_healthy()
    return vllm_servers["reasoning"]


def profiles(vllm_url: str, reasoning_url: str, ids: dict[str, int]) -> str:
    think = "<think>"
    return f"""
timeouts: {{connect: 5, first_token: 60, idle: 30, total: 120}}
models:
  tiny:
    upstream_model: {SERVED}
    backends: [{{url: "{vllm_url}"}}]
    max_tokens_policy: reject            # a client's own max_tokens reaches vLLM as sent
    stop_token_ids: [300]
    defaults: {{temperature: 0.6, top_p: 0.95, top_k: 20}}
    overrides: {{min_p: 0.05}}
    prompt: {{leading_newline: true, system: merge}}
  tiny-plain:
    upstream_model: {SERVED}
    backends: [{{url: "{vllm_url}"}}]
  tiny-guarded:
    upstream_model: {SERVED}
    backends: [{{url: "{vllm_url}"}}]
    stop_text: ["{think}"]
  tiny-first-token:
    upstream_model: {SERVED}
    backends: [{{url: "{vllm_url}"}}]
    timeouts: {{first_token: 0.001}}
  tiny-idle:
    upstream_model: {SERVED}
    backends: [{{url: "{vllm_url}"}}]
    timeouts: {{idle: 0.001}}
  tiny-unserved:
    upstream_model: not-served-here
    backends: [{{url: "{vllm_url}"}}]
  tiny-r1:
    upstream_model: {SERVED}
    backends: [{{url: "{reasoning_url}"}}]
    stop_token_ids: [{ids["<|im_end|>"]}]
    reasoning: {{parser: none, fields: [reasoning_content, reasoning]}}
"""


@pytest.fixture(scope="session")
def vllm_gateway(
    vllm: VLLMServer, vllm_reasoning: VLLMServer, tiny_model: tuple[Path, dict[str, int]]
) -> Iterator[GatewayServer]:
    with run_gateway(profiles(vllm.url, vllm_reasoning.url, tiny_model[1])) as gw:
        yield gw
