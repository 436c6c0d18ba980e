"""The fault matrix under load: every stream must end well whatever goes wrong around it.

Starts two simulated vLLM backends and the gateway (``gateway serve``) on loopback, then runs
``--streams`` concurrent clients for ``--seconds``. Each request is a chat completion or a
Responses API stream (``/v1/responses``) and draws a fault at random: upstream stalls before
the first token or mid-stream, drops the connection, sends ``abort``, a ``null`` finish, no
``[DONE]``, a malformed chunk, an error event, a 503; for Responses: no terminal event, two
of them, a stream cut as vLLM cuts it on a generation error; the client may disconnect
mid-stream or read slowly. It checks and prints:

* every stream the client read to its end ended well: one final chunk per choice with an
  OpenAI finish_reason and ``[DONE]``, or an error event and ``[DONE]``; a Responses stream:
  named events numbered from 0, ``response.created`` first and exactly one terminal event
  (``response.completed`` / ``incomplete`` / ``failed``) last;
* every non-200 answer is an OpenAI-style error, and none is a 500;
* afterwards the in-flight gauge is 0 and no upstream stream is left open;
* the gateway's RSS grew less than ``--max-rss-growth-mb``.

Exit status 1 if any check fails. ``--json`` prints the summary as one JSON line.

    python bench/faults.py --streams 200 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

ROOT = Path(__file__).resolve().parent.parent
FINISH = {"stop", "length", "tool_calls", "content_filter"}

FAULTS: dict[str, dict[str, Any]] = {
    "clean": {},
    "stall_first": {"first_token_delay": 3},
    "stall_mid": {"stall_after": 5, "stall_for": 3},
    "drop": {"drop_after": 6},
    "abort": {"finish": "abort"},
    "null_finish": {"finish": "null"},
    "no_finish": {"finish": "omit"},
    "no_done": {"omit_done": True},
    "malformed": {"malformed_after": 4},
    "error_event": {"error_after": 4},
    "status_503": {"status": 503},
    "keepalive": {"stall_after": 3, "stall_for": 0.4, "keepalive": 0.1},
}
RESPONSES_FAULTS: dict[str, dict[str, Any]] = {
    "clean": {},
    "stall_first": {"first_token_delay": 3},
    "stall_mid": {"stall_after": 5, "stall_for": 3},
    "drop": {"drop_after": 6},
    "no_terminal": {"finish": "omit"},
    "two_terminals": {"finish": "twice"},
    "malformed": {"malformed_after": 4},
    "generation_error": {"error_after": 4},
    "status_503": {"status": 503},
    "keepalive": {"stall_after": 3, "stall_for": 0.4, "keepalive": 0.1},
}
CLIENTS = ("read_all", "read_all", "read_all", "disconnect", "slow")
APIS = ("chat", "chat", "responses")
TERMINALS = {"response.completed", "response.incomplete", "response.failed"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_stream(raw: bytes) -> str | None:
    """None if the stream ended well, else what was wrong."""
    if not raw.endswith(b"\n\n"):
        return "truncated frame"
    events = []
    for block in raw.split(b"\n\n")[:-1]:
        lines = [ln for ln in block.split(b"\n") if not ln.startswith(b":")]
        if not lines:
            continue
        if not all(ln.startswith(b"data: ") for ln in lines):
            return "bad SSE line"
        data = b"\n".join(ln[6:] for ln in lines)
        try:
            events.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
        except orjson.JSONDecodeError:
            return "unreadable event"
    if not events or events[-1] != "[DONE]" or events.count("[DONE]") != 1:
        return "no single [DONE] at the end"
    body = events[:-1]
    if any("error" in e for e in body):
        if not ("error" in body[-1] and all("error" not in e for e in body[:-1])):
            return "error event not last"
        return None
    finals = [c for e in body for c in e.get("choices", []) if c.get("finish_reason")]
    if len(finals) != 1 or finals[0]["finish_reason"] not in FINISH:
        return f"{len(finals)} final chunks"
    return None


def check_responses_stream(raw: bytes) -> str | None:
    """None if a Responses stream ended well, else what was wrong."""
    if not raw.endswith(b"\n\n"):
        return "truncated frame"
    events = []
    for block in raw.split(b"\n\n")[:-1]:
        lines = [ln for ln in block.split(b"\n") if not ln.startswith(b":")]
        if not lines:
            continue
        if len(lines) != 2 or not lines[0].startswith(b"event: "):
            return "bad SSE block"
        if not lines[1].startswith(b"data: "):
            return "bad SSE line"
        try:
            event = orjson.loads(lines[1][6:])
        except orjson.JSONDecodeError:
            return "unreadable event"
        if lines[0][7:].decode() != event.get("type"):
            return "event name and type differ"
        events.append(event)
    if not events or events[0].get("type") != "response.created":
        return "no response.created first"
    if [e.get("sequence_number") for e in events] != list(range(len(events))):
        return "sequence numbers not 0, 1, ..."
    terminals = [e for e in events if e["type"] in TERMINALS]
    if len(terminals) != 1 or events[-1] is not terminals[0]:
        return f"{len(terminals)} terminal events"
    return None


async def one(
    session: aiohttp.ClientSession,
    url: str,
    rng: random.Random,
    stats: dict[str, collections.Counter[str]],
) -> None:
    api = rng.choice(APIS)
    table = RESPONSES_FAULTS if api == "responses" else FAULTS
    fault = rng.choice(list(table))
    client = rng.choice(CLIENTS)
    body: dict[str, Any] = {"model": "r1", "stream": True}
    body["sim"] = {**table[fault], "token_delay": 0.01}
    if api == "responses":
        body["input"] = "2+2?"
        target = url + "/v1/responses"
    else:
        body["messages"] = [{"role": "user", "content": "2+2?"}]
        target = url + "/v1/chat/completions"
    stats["api"][api] += 1
    key = f"{api}:{fault}/{client}"
    try:
        async with session.post(target, json=body) as r:
            if r.status != 200:
                payload = await r.read()
                try:
                    err = orjson.loads(payload)["error"]
                    ok = {"message", "type", "code"} <= set(err) and r.status != 500
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    ok = False
                stats["status"][str(r.status)] += 1
                stats["result"]["error_json_ok" if ok else "BAD_error_body"] += 1
                if not ok:
                    stats["bad"][key] += 1
                return
            stats["status"]["200"] += 1
            if client == "disconnect":
                await r.content.readany()
                r.close()
                stats["result"]["client_left"] += 1
                return
            chunks = []
            while True:
                chunk = await r.content.readany()
                if not chunk:
                    break
                chunks.append(chunk)
                if client == "slow":
                    await asyncio.sleep(0.02)
            check = check_responses_stream if api == "responses" else check_stream
            problem = check(b"".join(chunks))
            stats["result"]["well_ended" if problem is None else "BAD_stream"] += 1
            if problem is not None:
                stats["bad"][f"{key}: {problem}"] += 1
    except (TimeoutError, aiohttp.ClientError) as exc:
        stats["result"]["BAD_client_error"] += 1
        stats["bad"][f"{key}: {type(exc).__name__}"] += 1


async def drive(url: str, streams: int, seconds: float, seed: int) -> dict[str, Any]:
    stats: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    rng = random.Random(seed)
    stop_at = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout
    ) as session:

        async def worker() -> None:
            while time.monotonic() < stop_at:
                await one(session, url, rng, stats)

        await asyncio.gather(*(worker() for _ in range(streams)))
    return {k: dict(v) for k, v in stats.items()}


def scrape_in_flight(url: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gateway_in_flight_requests{")
    )


def sim_active(url: str) -> int:
    import urllib.request

    return int(json.loads(urllib.request.urlopen(url + "/sim/stats", timeout=5).read())["active"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-rss-growth-mb", type=float, default=64)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    procs: list[subprocess.Popen[bytes]] = []
    sims = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for _ in range(2):
                port = free_port()
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "gateway",
                            "sim",
                            "--port",
                            str(port),
                            "--model",
                            "sim-r1",
                        ],
                        stdout=subprocess.DEVNULL,
                        cwd=ROOT,
                    )
                )
                sims.append(f"http://127.0.0.1:{port}")
            gw_port = free_port()
            cfg = Path(tmp) / "profiles.yaml"
            backends = ", ".join(f'{{url: "{u}", name: sim{i}}}' for i, u in enumerate(sims))
            cfg.write_text(f"""
timeouts: {{connect: 2, first_token: 1.0, idle: 1.0, total: 20}}
health: {{interval: 1, timeout: 1, eject_after: 50, cooloff: 1}}
limits: {{max_in_flight: 10000, key_max_in_flight: 10000}}
models:
  r1:
    upstream_model: sim-r1
    backends: [{backends}]
    stop_token_ids: [151643]
    stop_text: ["<｜end▁of▁sentence｜>"]
    reasoning: {{starts_in_reasoning: true}}
""")
            env = {**os.environ, "GATEWAY_LOG_LEVEL": "warning", "GATEWAY_WATCH": "0"}
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "gateway",
                        "serve",
                        "--config",
                        str(cfg),
                        "--port",
                        str(gw_port),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=env,
                    cwd=ROOT,
                )
            )
            gw_url = f"http://127.0.0.1:{gw_port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    scrape_in_flight(gw_url)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            gw = psutil.Process(procs[-1].pid)
            asyncio.run(drive(gw_url, min(args.streams, 20), 1.0, args.seed + 1))  # warm-up
            rss0 = gw.memory_info().rss
            t0 = time.monotonic()
            stats = asyncio.run(drive(gw_url, args.streams, args.seconds, args.seed))
            elapsed = time.monotonic() - t0
            time.sleep(1.5)  # let closes and disconnects settle
            rss1 = gw.memory_info().rss
            in_flight = scrape_in_flight(gw_url)
            active = sum(sim_active(u) for u in sims)
            conns = len(
                [
                    c
                    for c in gw.net_connections(kind="tcp")
                    if c.status == psutil.CONN_ESTABLISHED
                    and c.raddr
                    and c.raddr.port in {int(u.rsplit(":", 1)[1]) for u in sims}
                ]
            )
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
    total = sum(stats.get("status", {}).values())
    growth = (rss1 - rss0) / 2**20
    summary = {
        "streams": args.streams,
        "seconds": round(elapsed, 1),
        "requests": total,
        "requests_per_s": round(total / elapsed, 1),
        "status": stats.get("status", {}),
        "apis": stats.get("api", {}),
        "results": stats.get("result", {}),
        "bad": stats.get("bad", {}),
        "in_flight_after": in_flight,
        "upstream_streams_open_after": active,
        "idle_pooled_upstream_connections": conns,
        "rss_mb_before": round(rss0 / 2**20, 1),
        "rss_mb_after": round(rss1 / 2**20, 1),
        "rss_growth_mb": round(growth, 1),
    }
    failures = []
    if stats.get("bad"):
        failures.append("some streams or errors were not well-formed")
    if stats.get("status", {}).get("500"):
        failures.append("the gateway answered 500")
    if in_flight != 0:
        failures.append("in-flight gauge not back to 0")
    if active != 0:
        failures.append("upstream streams left open")
    if growth > args.max_rss_growth_mb:
        failures.append(f"RSS grew {growth:.1f} MB")
    if total < args.streams:
        failures.append("too few requests completed")
    summary["failures"] = failures
    if args.json:
        print(json.dumps(summary))
    else:
        for k, v in summary.items():
            print(f"{k:>36}: {v}")
        print("OK" if not failures else "FAILED: " + "; ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
