"""Per-request and per-chunk cost of the gateway, against a bare proxy measured in the same run.

Starts the simulated vLLM, a bare aiohttp pass-through proxy (``bench/bare_proxy.py``) and
the gateway (``gateway serve``, full profile: stop ids, defaults, prompt rules, stop-text
guard, reasoning split, metrics, access log at its default level) as separate processes on
loopback. For each mode (stream, non-stream) and concurrency it drives the same load straight
at the simulator, through the bare proxy and through the gateway, and prints requests/s,
latency, time to first token and inter-chunk gap percentiles (as the client sees them), the
proxies' CPU seconds per 1000 requests and per 1000 chunks, and the ratios gateway/bare and
gateway/direct.

    python bench/bench.py --pin --concurrency 1,32 --seconds 10

``--pin`` puts the simulator and this load generator on CPU 0 and each proxy on CPU 1, so a
proxy's cost is measured on a core of its own (the machine has 2). Answers are 64 tokens:
31 of reasoning, ``</think>``, 32 of answer, then the end-of-sentence token.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
from common import cpu_seconds, free_port, stop_all, wait_up

ROOT = Path(__file__).resolve().parent.parent
EOS = 151643
TOKENS = (
    [[1000 + i, f" think{i}"] for i in range(31)]
    + [[151649, "</think>"]]
    + [[2000 + i, f" word{i}"] for i in range(32)]
    + [[EOS, "<｜end▁of▁sentence｜>"]]
)


def generated_text(line: bytes) -> bool:
    """A chunk carrying generated text: answer content or (split off) reasoning."""
    if not line.startswith(b"data: {"):
        return False
    return any(
        f'"{k}":"'.encode() in line and f'"{k}":""'.encode() not in line
        for k in ("content", "reasoning_content", "reasoning")
    )


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    chunks: int = 0
    errors: int = 0
    elapsed: float = 0.0

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
                            first = last = None
                            async for line in r.content:
                                if not generated_text(line):
                                    continue
                                now = time.monotonic()
                                res.chunks += 1
                                if first is None:
                                    first = now - t0
                                elif last is not None:
                                    res.gaps.append(now - last)
                                last = now
                            if first is not None:
                                res.ttfts.append(first)
                        else:
                            await r.read()
                            res.chunks += 1
                except aiohttp.ClientError:
                    res.errors += 1
                    continue
                res.latencies.append(time.monotonic() - t0)

        t_start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        res.elapsed = time.monotonic() - t_start
    return res


PROFILE = """
models:
  r1:
    upstream_model: sim-r1
    backends: [{{url: "http://127.0.0.1:{port}"}}]
    stop_token_ids: [151643]
    defaults: {{temperature: 0.6, top_p: 0.95}}
    prompt: {{leading_newline: true, system: merge}}
    stop_text: ["<｜end▁of▁sentence｜>"]
    reasoning: {{starts_in_reasoning: true}}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--concurrency", default="1,32", help="comma-separated")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--token-delay", type=float, default=0.0, help="simulated seconds per token")
    ap.add_argument("--pin", action="store_true", help="sim+client on CPU 0, proxies on CPU 1")
    ap.add_argument("--modes", default="stream,nonstream")
    ap.add_argument("--targets", default="direct,bare,gateway")
    ap.add_argument("--workers", type=int, default=1, help="gateway worker processes")
    args = ap.parse_args()

    if args.pin:
        os.sched_setaffinity(0, {0})
    pin0 = ["taskset", "-c", "0"] if args.pin else []
    pin1 = ["taskset", "-c", "1"] if args.pin else []
    sim_port, bare_port, gw_port = free_port(), free_port(), free_port()
    py = sys.executable
    procs: dict[str, subprocess.Popen[bytes]] = {}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": ROOT}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "profiles.yaml"
        cfg.write_text(PROFILE.format(port=sim_port))
        # The access log stays on (INFO): it is part of the per-request cost in production.
        env = {**os.environ, "GATEWAY_LOG_LEVEL": "info", "GATEWAY_WATCH": "0"}
        sim = [py, "-m", "gateway", "sim", "--port", str(sim_port), "--model", "sim-r1"]
        sim += ["--token-delay", str(args.token_delay)]
        bare = [py, "bench/bare_proxy.py", "--port", str(bare_port)]
        bare += ["--upstream", f"http://127.0.0.1:{sim_port}"]
        gw = [py, "-m", "gateway", "serve", "--config", str(cfg), "--port", str(gw_port)]
        gw += ["--workers", str(args.workers)]
        try:
            procs["sim"] = subprocess.Popen([*pin0, *sim], **quiet)  # type: ignore[call-overload]
            procs["bare"] = subprocess.Popen([*pin1, *bare], **quiet)  # type: ignore[call-overload]
            procs["gateway"] = subprocess.Popen([*pin1, *gw], env=env, **quiet)  # type: ignore[call-overload]
            for port in (sim_port, bare_port, gw_port):
                wait_up(f"http://127.0.0.1:{port}/health")
            messages = [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is 2 + 2?"},
            ]
            upstream_messages = [{"role": "user", "content": "\nBe brief.\n\nWhat is 2 + 2?"}]
            print(
                f"concurrency={args.concurrency} seconds={args.seconds} workers={args.workers} "
                f"token_delay={args.token_delay} pin={args.pin} cpus={os.cpu_count()} "
                f"answer_tokens={len(TOKENS) - 1}"
            )
            head = (
                f"{'mode':<10}{'c':>4} {'target':<8}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}"
                f"{'ttft50':>8}{'ttft99':>8}{'gap50':>7}{'gap99':>7}{'err':>5}"
                f"{'cpu s/1k req':>13}{'cpu ms/1k chunk':>16}"
            )
            print(head)
            for mode in args.modes.split(","):
                stream = mode == "stream"
                sim_field = {"tokens": TOKENS}
                direct_body = {
                    "model": "sim-r1",
                    "messages": upstream_messages,
                    "stop_token_ids": [EOS],
                    "temperature": 0.6,
                    "top_p": 0.95,
                    "stream": stream,
                    "sim": sim_field,
                }
                if stream:
                    direct_body["stream_options"] = {"include_usage": True}
                gw_body = {"model": "r1", "messages": messages, "stream": stream, "sim": sim_field}
                urls = {
                    "direct": (f"http://127.0.0.1:{sim_port}", direct_body),
                    "bare": (f"http://127.0.0.1:{bare_port}", direct_body),
                    "gateway": (f"http://127.0.0.1:{gw_port}", gw_body),
                }
                for conc in (int(c) for c in args.concurrency.split(",")):
                    results: dict[str, Result] = {}
                    for target in args.targets.split(","):
                        base, body = urls[target]
                        url = base + "/v1/chat/completions"
                        asyncio.run(drive(url, body, min(conc, 4), 1))  # warm-up
                        proc = procs.get(target)
                        c0 = cpu_seconds(proc.pid) if proc and target != "direct" else 0.0
                        r = asyncio.run(drive(url, body, conc, args.seconds))
                        cpu = cpu_seconds(proc.pid) - c0 if proc and target != "direct" else 0.0
                        if target == "gateway" and args.workers > 1:
                            cpu = float("nan")  # the workers are children; see --workers 1
                        results[target] = r
                        per_req = f"{cpu / max(1, len(r.latencies)) * 1000:.3f}" if c0 else ""
                        per_chunk = f"{cpu / max(1, r.chunks) * 1e6:.1f}" if c0 else ""
                        print(
                            f"{mode:<10}{conc:>4} {target:<8}{r.rps:>9.1f}"
                            f"{pct(r.latencies, 0.5):>8.2f}{pct(r.latencies, 0.99):>8.2f}"
                            f"{pct(r.ttfts, 0.5):>8.2f}{pct(r.ttfts, 0.99):>8.2f}"
                            f"{pct(r.gaps, 0.5):>7.2f}{pct(r.gaps, 0.99):>7.2f}"
                            f"{r.errors:>5}{per_req:>13}{per_chunk:>16}"
                        )
                    if {"gateway", "bare", "direct"} <= set(results):
                        g, b, d = results["gateway"], results["bare"], results["direct"]
                        key = "ttfts" if stream else "latencies"
                        added = pct(getattr(g, key), 0.5) - pct(getattr(d, key), 0.5)
                        added_bare = pct(getattr(b, key), 0.5) - pct(getattr(d, key), 0.5)
                        print(
                            f"{mode:<10}{conc:>4} ratio gateway/bare = {g.rps / b.rps:.2f}, "
                            f"gateway/direct = {g.rps / d.rps:.2f}, bare/direct = "
                            f"{b.rps / d.rps:.2f}; added {'TTFT' if stream else 'latency'} "
                            f"p50: gateway {added:+.2f} ms, bare {added_bare:+.2f} ms"
                        )
        finally:
            stop_all(procs.values())


if __name__ == "__main__":
    main()
