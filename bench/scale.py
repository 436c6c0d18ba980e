"""Many slow thinking streams through one gateway worker: memory per open stream, the time to
first token of one more request, and whether health probes keep working.

Starts the simulated vLLM (slow tokens: ``--token-delay``, default 0.5 s = 2 tokens/s per
stream, like a thinking model under load) and the gateway (``--target gateway``) or the bare
pass-through proxy (``--target bare``), opens ``--streams`` concurrent streams that read
everything, and at each step of ``--steps`` reports: streams open, the proxy's RSS and RSS per
stream over its idle RSS, time to first token of one extra request (median of 5), and the
backend's state in ``/health``.

    python bench/scale.py --pin --steps 1000,5000

``--pin``: simulator and load generator on CPU 0, the proxy alone on CPU 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
from common import cpu_seconds, free_port, rss_kib, stop_all, wait_up

ROOT = Path(__file__).resolve().parent.parent


PROFILE = """
health: {{interval: 2, timeout: 2}}
limits: {{max_in_flight: 20000, key_max_in_flight: 20000}}
timeouts: {{first_token: 60, idle: 60, total: 3600}}
models:
  r1:
    upstream_model: sim-r1
    backends: [{{url: "http://127.0.0.1:{port}"}}]
    stop_token_ids: [151643]
    stop_text: ["<｜end▁of▁sentence｜>"]
    reasoning: {{starts_in_reasoning: true}}
"""


async def main_async(args: argparse.Namespace, url: str, proxy_pid: int, health: str) -> None:
    body = {
        "model": args.model,
        "messages": [{"role": "user", "content": "think for a long time"}],
        "stream": True,
        "sim": {"repeat": args.repeat},
    }
    payload = orjson.dumps(body)
    quick = orjson.dumps({**body, "sim": {"token_delay": 0.0}})
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    errors = {"n": 0}
    opened = {"n": 0}
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:

        async def stream() -> None:
            try:
                async with session.post(
                    url, data=payload, headers={"Content-Type": "application/json"}
                ) as r:
                    if r.status != 200:
                        errors["n"] += 1
                        return
                    opened["n"] += 1
                    async for _ in r.content.iter_any():
                        pass
            except (aiohttp.ClientError, OSError):
                errors["n"] += 1

        direct_quick = orjson.dumps({**orjson.loads(quick), "model": "sim-r1"})

        async def ttft(target: str = url, data: bytes = quick) -> float:
            t0 = time.perf_counter()
            async with session.post(
                target, data=data, headers={"Content-Type": "application/json"}
            ) as r:
                async for line in r.content:
                    if b'"reasoning_content"' in line or b'"content":"' in line:
                        return (time.perf_counter() - t0) * 1000
            return float("nan")

        async def state() -> str:
            async with session.get(health) as r:
                if "json" not in r.headers.get("content-type", ""):
                    return "-"
                data = await r.json()
            states = {v.get("state") for v in data.get("backends", {}).values()}
            return ",".join(sorted(s for s in states if s)) or "?"

        idle_rss = rss_kib(proxy_pid)
        idle_ttft = statistics.median([await ttft() for _ in range(5)])
        print(
            f"idle: rss {idle_rss / 1024:.1f} MiB, ttft p50 {idle_ttft:.2f} ms, "
            f"backend {await state()}"
        )
        print(
            f"{'streams':>8}{'rss MiB':>9}{'KiB/stream':>11}{'ttft ms':>9}{'sim ttft':>9}"
            f"{'cpu %':>7}{'us/chunk':>9}{'backend':>9}{'err':>6}"
        )
        tasks: list[asyncio.Task[None]] = []
        for step in (int(s) for s in args.steps.split(",")):
            while len(tasks) < step:
                tasks.append(asyncio.ensure_future(stream()))
                if len(tasks) % 200 == 0:
                    await asyncio.sleep(0.05)  # let connections settle
            deadline = time.monotonic() + 120
            while opened["n"] + errors["n"] < step and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
            c0, t0 = cpu_seconds(proxy_pid), time.monotonic()
            await asyncio.sleep(args.settle)
            cpu = (cpu_seconds(proxy_pid) - c0) / (time.monotonic() - t0)
            chunks = opened["n"] / args.token_delay  # each open stream: one chunk per delay
            rss = rss_kib(proxy_pid)
            t = statistics.median([await ttft() for _ in range(5)])
            d = statistics.median([await ttft(args.sim_url, direct_quick) for _ in range(5)])
            per = (rss - idle_rss) / max(1, opened["n"])
            print(
                f"{opened['n']:>8}{rss / 1024:>9.1f}{per:>11.1f}{t:>9.2f}{d:>9.2f}"
                f"{cpu * 100:>7.1f}{cpu / max(1.0, chunks) * 1e6:>9.1f}"
                f"{await state():>9}{errors['n']:>6}"
            )
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", default="1000,5000")
    ap.add_argument("--token-delay", type=float, default=0.5)
    ap.add_argument("--repeat", type=int, default=20, help="script repeats: the stream length")
    ap.add_argument("--target", choices=["gateway", "bare"], default="gateway")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds at each step")
    ap.add_argument("--pin", action="store_true")
    ap.add_argument("--log", help="write the gateway's log (access log at info) to this file")
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.pin:
        os.sched_setaffinity(0, {0})
    pin0 = ["taskset", "-c", "0"] if args.pin else []
    pin1 = ["taskset", "-c", "1"] if args.pin else []
    sim_port, proxy_port = free_port(), free_port()
    py = sys.executable
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": ROOT}
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "p.yaml"
        cfg.write_text(PROFILE.format(port=sim_port))
        sim = [py, "-m", "gateway", "sim", "--port", str(sim_port), "--model", "sim-r1"]
        sim += ["--token-delay", str(args.token_delay), "--max-num-seqs", "100000"]
        if args.target == "gateway":
            proxy = [py, "-m", "gateway", "serve", "--config", str(cfg), "--port", str(proxy_port)]
            args.model = "r1"
            health = f"http://127.0.0.1:{proxy_port}/health"
        else:
            proxy = [py, "bench/bare_proxy.py", "--port", str(proxy_port)]
            proxy += ["--upstream", f"http://127.0.0.1:{sim_port}"]
            args.model = "sim-r1"
            health = f"http://127.0.0.1:{sim_port}/health"
        level = "info" if args.log else "warning"
        env = {**os.environ, "GATEWAY_LOG_LEVEL": level, "GATEWAY_WATCH": "0"}
        log = open(args.log, "wb") if args.log else subprocess.DEVNULL
        try:
            procs.append(subprocess.Popen([*pin0, *sim], **quiet))  # type: ignore[call-overload]
            procs.append(
                subprocess.Popen(  # type: ignore[call-overload]
                    [*pin1, *proxy], env=env, **{**quiet, "stderr": log}
                )
            )
            wait_up(f"http://127.0.0.1:{sim_port}/health")
            wait_up(f"http://127.0.0.1:{proxy_port}/health")
            print(
                f"target={args.target} token_delay={args.token_delay} repeat={args.repeat} "
                f"pin={args.pin} nofile={hard}"
            )
            url = f"http://127.0.0.1:{proxy_port}/v1/chat/completions"
            args.sim_url = f"http://127.0.0.1:{sim_port}/v1/chat/completions"
            asyncio.run(main_async(args, url, procs[1].pid, health))
        finally:
            stop_all(procs)


if __name__ == "__main__":
    main()
