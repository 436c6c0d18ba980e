"""A client that reads slowly must not make the gateway buffer the stream: backpressure
reaches the upstream, and the gateway's memory stays flat."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from tests.helpers import SimProcess, free_port


def test_slow_reader_against_a_fast_long_stream(tmp_path: Path, sim: SimProcess) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(f"""
timeouts: {{idle: 60, total: 120}}
models:
  r1: {{upstream_model: sim-r1, backends: [{{url: "{sim.url}"}}], stop_text: ["<|im_end|>"]}}
""")
    port = free_port()
    env = {**os.environ, "GATEWAY_LOG_LEVEL": "warning", "GATEWAY_WATCH": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)
        gw = psutil.Process(proc.pid)
        # ~8000 repeats of the 28-token script: about 220k chunks, 35 MB of SSE
        body = {
            "model": "r1",
            "messages": [{"role": "user", "content": "x"}],
            "stream": True,
            "sim": {"repeat": 8000},
        }
        sim.reset()
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as r:
            it = r.iter_raw(4096)
            got = len(next(it))
            baseline = gw.memory_info().rss
            t0 = time.monotonic()
            while time.monotonic() - t0 < 3:  # a slow reader: about 80 KB/s
                got += len(next(it))
                time.sleep(0.05)
            rss = gw.memory_info().rss
            stats = sim.stats()
        growth = (rss - baseline) / 2**20
        print(
            f"read {got / 1024:.0f} KB in 3 s; gateway RSS {baseline / 2**20:.1f} -> "
            f"{rss / 2**20:.1f} MB"
        )
        assert growth < 16, f"the gateway buffered {growth:.1f} MB for a slow reader"
        assert got < 2 * 2**20
        # The upstream was still mid-stream: its writes waited on the gateway, which waited on
        # the client. (A buffering gateway would have drained the whole upstream by now.)
        assert stats["active"] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=20)
