"""A client that reads slowly must not make the gateway buffer the stream: backpressure
reaches the upstream, and the gateway's memory stays flat."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import psutil

from tests.helpers import SimProcess, run_gateway_process


def test_slow_reader_against_a_fast_long_stream(tmp_path: Path, sim: SimProcess) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(f"""
timeouts: {{idle: 60, total: 120}}
models:
  r1: {{upstream_model: sim-r1, backends: [{{url: "{sim.url}"}}], stop_text: ["<|im_end|>"]}}
""")
    with run_gateway_process(path) as (url, proc):
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
