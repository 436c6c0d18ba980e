"""Throughput and added latency of the gateway against the simulated vLLM, measured directly.

Starts the simulated vLLM and the gateway (``gateway serve``, full profile: stop ids,
defaults, prompt rules, stop_text guard, reasoning split) as separate processes on loopback,
then drives N concurrent clients for a fixed time, first straight at the simulator, then
through the gateway, for streams and non-streams. Prints requests/s, p50/p99 latency, time to first
token, the ratio gateway/direct, and the gateway's CPU seconds per 1000 requests.

    python bench/bench.py --concurrency 32 --seconds 10 --pin

``--pin`` puts the simulator and this load generator on CPU 0 and the gateway on CPU 1, so
the gateway's cost is measured on a core of its own (the machine has 2).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_up(url: str, timeout: float = 20) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def generated_text(line: bytes) -> bool:
    """A chunk carrying generated text: answer content or (split off) reasoning."""
    if not line.startswith(b"data: {"):
        return False
    return any(f'"{k}":"'.encode() in line and f'"{k}":""'.encode() not in line
               for k in ("content", "reasoning_content"))


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0

    def pct(self, values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        values = sorted(values)
        return values[min(len(values) - 1, int(q * len(values)))] * 1000

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0


async def drive(url: str, body: dict[str, object], concurrency: int, seconds: float) -> Result:
    res = Result()
    payload = orjson.dumps(body)
    stream = bool(body.get("stream"))
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        stop_at = time.monotonic() + seconds

        async def worker() -> None:
            while time.monotonic() < stop_at:
                t0 = time.monotonic()
                try:
                    async with session.post(
                        url, data=payload, headers={"Content-Type": "application/json"}
                    ) as r:
                        if r.status != 200:
                            res.errors += 1
                            await r.read()
                            continue
                        if stream:
                            first = None
                            async for line in r.content:
                                if first is None and generated_text(line):
                                    first = time.monotonic() - t0
                            if first is not None:
                                res.ttfts.append(first)
                        else:
                            await r.read()
                except aiohttp.ClientError:
                    res.errors += 1
                    continue
                res.latencies.append(time.monotonic() - t0)

        t_start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        res.elapsed = time.monotonic() - t_start
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument(
        "--token-delay",
        type=float,
        default=0.005,
        help="simulated seconds per token (0.005 = 200 tokens/s per stream)",
    )
    ap.add_argument("--pin", action="store_true", help="sim+client on CPU 0, gateway on CPU 1")
    ap.add_argument("--modes", default="stream,nonstream")
    args = ap.parse_args()

    if args.pin:
        os.sched_setaffinity(0, {0})
    sim_port, gw_port = free_port(), free_port()
    sim_cmd = [
        sys.executable,
        "-m",
        "gateway",
        "sim",
        "--port",
        str(sim_port),
        "--model",
        "sim-r1",
        "--token-delay",
        str(args.token_delay),
    ]
    if args.pin:
        sim_cmd = ["taskset", "-c", "0", *sim_cmd]
    profile = f"""
models:
  r1:
    upstream_model: sim-r1
    backends: [{{url: "http://127.0.0.1:{sim_port}"}}]
    stop_token_ids: [151643]
    defaults: {{temperature: 0.6, top_p: 0.95}}
    prompt: {{leading_newline: true, system: merge}}
    stop_text: ["<｜end▁of▁sentence｜>"]
    reasoning: {{starts_in_reasoning: true}}
"""
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "profiles.yaml"
        cfg.write_text(profile)
        gw_cmd = [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(cfg),
            "--port",
            str(gw_port),
        ]
        if args.pin:
            gw_cmd = ["taskset", "-c", "1", *gw_cmd]
        # The access log stays on (INFO): it is part of the per-request cost in production.
        env = {**os.environ, "GATEWAY_LOG_LEVEL": "info", "GATEWAY_WATCH": "0"}
        try:
            procs.append(subprocess.Popen(sim_cmd, stdout=subprocess.DEVNULL, cwd=ROOT))
            procs.append(
                subprocess.Popen(
                    gw_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT
                )
            )
            wait_up(f"http://127.0.0.1:{sim_port}/health")
            wait_up(f"http://127.0.0.1:{gw_port}/health")
            gw_pid = procs[1].pid
            messages = [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is 2 + 2?"},
            ]
            upstream_messages = [{"role": "user", "content": "\nBe brief.\n\nWhat is 2 + 2?"}]
            print(
                f"concurrency={args.concurrency} seconds={args.seconds} "
                f"token_delay={args.token_delay} pin={args.pin} cpus={os.cpu_count()}"
            )
            print(
                f"{'mode':<10}{'target':<9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
                f"{'ttft p50':>10}{'ttft p99':>10}{'errors':>8}{'cpu s/1k':>10}"
            )
            for mode in args.modes.split(","):
                stream = mode == "stream"
                direct_body = {
                    "model": "sim-r1",
                    "messages": upstream_messages,
                    "stop_token_ids": [151643],
                    "temperature": 0.6,
                    "top_p": 0.95,
                    "stream": stream,
                }
                if stream:
                    direct_body["stream_options"] = {"include_usage": True}
                gw_body = {"model": "r1", "messages": messages, "stream": stream}
                # warm-up both paths
                asyncio.run(
                    drive(f"http://127.0.0.1:{sim_port}/v1/chat/completions", direct_body, 4, 1)
                )
                asyncio.run(drive(f"http://127.0.0.1:{gw_port}/v1/chat/completions", gw_body, 4, 1))
                direct = asyncio.run(
                    drive(
                        f"http://127.0.0.1:{sim_port}/v1/chat/completions",
                        direct_body,
                        args.concurrency,
                        args.seconds,
                    )
                )
                c0 = cpu_seconds(gw_pid)
                via = asyncio.run(
                    drive(
                        f"http://127.0.0.1:{gw_port}/v1/chat/completions",
                        gw_body,
                        args.concurrency,
                        args.seconds,
                    )
                )
                cpu_per_k = (cpu_seconds(gw_pid) - c0) / max(1, len(via.latencies)) * 1000
                for name, r, cpu in (("direct", direct, ""), ("gateway", via, f"{cpu_per_k:.2f}")):
                    print(
                        f"{mode:<10}{name:<9}{r.rps:>9.1f}{r.pct(r.latencies, 0.5):>9.1f}"
                        f"{r.pct(r.latencies, 0.99):>9.1f}{r.pct(r.ttfts, 0.5):>10.1f}"
                        f"{r.pct(r.ttfts, 0.99):>10.1f}{r.errors:>8}{cpu:>10}"
                    )
                added = (
                    statistics.median(via.latencies) - statistics.median(direct.latencies)
                ) * 1000
                print(
                    f"{mode:<10}ratio gateway/direct throughput = {via.rps / direct.rps:.2f}; "
                    f"added p50 latency = {added:.1f} ms"
                )
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    main()
