"""What each hostile input of issue #12 costs the gateway now: status, RSS growth, CPU.

Starts a simulated vLLM, a few broken backends (raw sockets) and ``gateway serve`` as its own
process, then for each case sends the hostile input and prints what the client got and what
it cost the gateway process (RSS after minus RSS before, CPU seconds).

    python bench/hostile.py
"""

from __future__ import annotations

import contextlib
import os
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
from common import cpu_seconds, free_port, rss_kib, stop_all, wait_up

ROOT = Path(__file__).resolve().parent.parent
USER = [{"role": "user", "content": "hi"}]


@contextlib.contextmanager
def raw_backend(answer: Callable[[socket.socket], None]) -> Iterator[str]:
    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with contextlib.suppress(OSError):
                self.request.recv(65536)
                answer(self.request)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def endless_line(s: socket.socket) -> None:
    s.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: ")
    chunk = b"a" * 65536
    for _ in range(200 * 16):  # 200 MB, or until the gateway closes the connection
        s.sendall(chunk)


def huge_body(s: socket.socket) -> None:
    size = 300 * 2**20
    head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    s.sendall(f"{head}content-length: {size}\r\n\r\n".encode())
    chunk = b" " * 65536
    for _ in range(size // len(chunk)):
        s.sendall(chunk)


def json_choices(choices: object) -> Callable[[socket.socket], None]:
    body = orjson.dumps({"id": "x", "choices": choices})

    def send(s: socket.socket) -> None:
        s.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )

    return send


def headers_attack(url: str) -> str:
    host, port = url.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        line = b"X-Pad: " + b"a" * 8000 + b"\r\n"
        with contextlib.suppress(OSError):
            for _ in range(50_000):  # up to 400 MB
                s.sendall(line)
                sent += len(line)
        answer = b""
        with contextlib.suppress(OSError):
            answer = s.recv(200)
    return f"{answer[:12].decode(errors='replace')} after {sent / 2**20:.1f} MiB sent"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        sim_port = free_port()
        sim = subprocess.Popen(
            [sys.executable, "-m", "gateway", "sim", "--port", str(sim_port), "--model", "m"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        backends = {
            "endless": stack.enter_context(raw_backend(endless_line)),
            "huge": stack.enter_context(raw_backend(huge_body)),
            "choices-null": stack.enter_context(raw_backend(json_choices([None]))),
            "choices-str": stack.enter_context(raw_backend(json_choices("abc"))),
        }
        models = "\n".join(
            f'  {name}: {{upstream_model: m, retries: 0, backends: [{{url: "{url}"}}]}}'
            for name, url in backends.items()
        )
        cfg = Path(tmp) / "p.yaml"
        cfg.write_text(f"""
health: {{interval: 0}}
limits: {{max_prompt_chars: 1000}}
models:
  m: {{upstream_model: m, backends: [{{url: "http://127.0.0.1:{sim_port}"}}]}}
{models}
""")
        port = free_port()
        env = {**os.environ, "GATEWAY_LOG_LEVEL": "warning", "GATEWAY_WATCH": "0"}
        gw = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(cfg), "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_up(f"http://127.0.0.1:{sim_port}/health")
            wait_up(url + "/health")
            chat = url + "/v1/chat/completions"

            def post(body: object, **kw: object) -> str:
                raw = body if isinstance(body, bytes) else orjson.dumps(body)
                r = httpx.post(chat, content=raw, timeout=60, **kw)  # type: ignore[arg-type]
                if r.headers.get("content-type", "").startswith("text/event-stream"):
                    tail = r.content.rstrip().rsplit(b"\n\n", 2)[-2:]
                    return f"{r.status_code} stream ending {b' | '.join(tail)[:90].decode()}"
                code = r.json().get("error", {}).get("code") if r.status_code >= 400 else ""
                return f"{r.status_code} {code}"

            nested = b'{"model":"m","messages":' + b"[" * 1000 + b"]" * 1000 + b"}"
            cases: list[tuple[str, Callable[[], str]]] = [
                ("400 MB of header lines", lambda: headers_attack(url)),
                (
                    '"stream": "false" (a string)',
                    lambda: post({"model": "m", "messages": USER, "stream": "false"}),
                ),
                ('"n": "2"', lambda: post({"model": "m", "messages": USER, "n": "2"})),
                (
                    "text part with text: 5",
                    lambda: post(
                        {
                            "model": "m",
                            "messages": [
                                {"role": "user", "content": [{"type": "text", "text": 5}]}
                            ],
                        }
                    ),
                ),
                ("body nested 1000 levels", lambda: post(nested)),
                (
                    "tools with a 100k description",
                    lambda: post(
                        {
                            "model": "m",
                            "messages": USER,
                            "tools": [
                                {
                                    "type": "function",
                                    "function": {"name": "f", "description": "d" * 100_000},
                                }
                            ],
                        }
                    ),
                ),
                (
                    "two Authorization headers",
                    lambda: post(
                        {"model": "m", "messages": USER},
                        headers=[("authorization", "Bearer a"), ("authorization", "Bearer b")],
                    ),
                ),
                (
                    "backend: SSE line without newline (200 MB)",
                    lambda: post({"model": "endless", "messages": USER, "stream": True}),
                ),
                (
                    "backend: 300 MB non-stream body",
                    lambda: post({"model": "huge", "messages": USER}),
                ),
                (
                    "backend: choices [null]",
                    lambda: post({"model": "choices-null", "messages": USER}),
                ),
                (
                    'backend: choices "abc"',
                    lambda: post({"model": "choices-str", "messages": USER}),
                ),
            ]
            print(f"{'case':<46}{'answer':<60}{'RSS +MiB':>9}{'CPU s':>7}")
            for name, run in cases:
                r0, c0 = rss_kib(gw.pid), cpu_seconds(gw.pid)
                t0 = time.monotonic()
                answer = run()
                took = time.monotonic() - t0
                time.sleep(0.2)
                grown = (rss_kib(gw.pid) - r0) / 1024
                cpu = cpu_seconds(gw.pid) - c0
                print(f"{name:<46}{answer[:58]:<60}{grown:>9.1f}{cpu:>7.2f}  ({took:.1f}s)")
            health = httpx.get(url + "/health").json()
            print(
                "backends after all this:", {k: v["state"] for k, v in health["backends"].items()}
            )
            print(f"gateway RSS at the end: {rss_kib(gw.pid) / 1024:.1f} MiB")
        finally:
            stop_all([gw, sim])


if __name__ == "__main__":
    main()
