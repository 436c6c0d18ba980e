"""Test servers on loopback: the simulated vLLM as a subprocess, the gateway under uvicorn."""

from __future__ import annotations

import contextlib
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.profiles import parse_profiles
from gateway.server import config as server_config
from gateway.settings import Settings


def bound_socket() -> socket.socket:
    """A listening-ready socket on a free loopback port (no bind/close race)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def free_port() -> int:
    with contextlib.closing(bound_socket()) as s:
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """Terminate, then kill if it does not exit; always reaped."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class SimProcess:
    url: str
    proc: subprocess.Popen[str]
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10))

    def requests(self) -> list[dict[str, Any]]:
        return orjson.loads(self.client.get(self.url + "/sim/requests").content)  # type: ignore[no-any-return]

    def last_request(self) -> dict[str, Any]:
        reqs = self.requests()
        assert reqs, "the simulated vLLM received no request"
        return reqs[-1]

    def stats(self) -> dict[str, int]:
        return self.client.get(self.url + "/sim/stats").json()  # type: ignore[no-any-return]

    def reset(self) -> None:
        self.client.post(self.url + "/sim/reset")


@contextlib.contextmanager
def run_sim(models: list[str], *extra: str) -> Iterator[SimProcess]:
    """Start ``gateway sim`` in its own process on a free port; always stopped."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "sim",
            "--port",
            "0",
            *(arg for m in models for arg in ("--model", m)),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "http://" not in line:
            raise RuntimeError(f"simulated vLLM did not start: {line!r}")
        url = line.strip().rsplit(" ", 1)[-1]
        sim = SimProcess(url=url, proc=proc)
        yield sim
        sim.client.close()
    finally:
        stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()


@dataclass
class GatewayServer:
    url: str
    server: uvicorn.Server

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def gateway(self) -> Any:
        """The in-process ``handler.Gateway`` (for leak checks)."""
        return self.server.config.app.api.state.gateway


@contextlib.contextmanager
def run_gateway(
    profile_yaml: str | None = None,
    *,
    config: Path | None = None,
    admin_token: str | None = None,
    watch: bool = True,
    api_keys: tuple[str, ...] = (),
    **overrides: Any,
) -> Iterator[GatewayServer]:
    """The gateway app under uvicorn in a thread, on a free loopback port; always stopped.

    Serves ``profile_yaml`` (no file, nothing to reload) or loads and watches ``config``."""
    profiles = parse_profiles(profile_yaml, "<test>") if profile_yaml is not None else None
    sock = bound_socket()
    port = sock.getsockname()[1]
    settings = Settings(
        host="127.0.0.1",
        port=port,
        config=str(config or "<test>"),
        admin_token=admin_token,
        watch=watch,
        api_keys=api_keys,
        **overrides,
    )
    config_ = server_config(
        create_app(settings, profiles), settings, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config_)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("gateway did not start")
            time.sleep(0.01)
        yield GatewayServer(url=f"http://127.0.0.1:{port}", server=server)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def sse_events(raw: bytes) -> list[Any]:
    """Split a raw SSE body into decoded events (``"[DONE]"`` stays a string); checks framing."""
    assert raw.endswith(b"\n\n"), f"stream does not end with a complete event: {raw[-80:]!r}"
    events: list[Any] = []
    for block in raw.split(b"\n\n")[:-1]:
        lines = [ln for ln in block.split(b"\n") if not ln.startswith(b":")]
        if not lines:
            continue
        assert all(ln.startswith(b"data: ") for ln in lines), f"bad SSE block {block!r}"
        data = b"\n".join(ln[6:] for ln in lines)
        events.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return events


def assert_well_ended(events: list[Any], n: int = 1) -> list[dict[str, Any]]:
    """The stream contract: ``[DONE]`` last and once; one finish per choice (or one error
    event), from OpenAI's set. Returns the final choices by index."""
    assert events and events[-1] == "[DONE]", f"stream must end with [DONE]: {events[-3:]}"
    assert events.count("[DONE]") == 1
    errors = [e for e in events[:-1] if "error" in e]
    if errors:
        # one OpenAI error event, last before [DONE]; nothing after it
        assert len(errors) == 1 and events[-2] is errors[0], events[-4:]
        err = errors[0]["error"]
        assert isinstance(err, dict) and err.get("message"), err
        return []
    finals: dict[int, dict[str, Any]] = {}
    for e in events[:-1]:
        for c in e["choices"]:
            if c.get("finish_reason") is not None:
                assert c["index"] not in finals, f"two final chunks for choice {c['index']}"
                assert c["finish_reason"] in {"stop", "length", "tool_calls", "content_filter"}
                finals[c["index"]] = c
            else:
                assert c["index"] not in finals, "a chunk after the final chunk"
    assert sorted(finals) == list(range(n)), f"final chunks for {sorted(finals)}, want {n}"
    return [finals[i] for i in range(n)]


@contextlib.contextmanager
def run_gateway_process(
    config: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 40,
    nofile: int | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``gateway serve`` as its own process on a free port (for RSS, signals, workers);
    waits for ``/health``; always stopped."""
    port = free_port()
    full_env = {**os.environ, "GATEWAY_LOG_LEVEL": "warning", "GATEWAY_WATCH": "0", **(env or {})}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
            *args,
        ],
        env=full_env,
        preexec_fn=None if nofile is None else lambda: _limit_files(nofile),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the gateway process did not come up")
            time.sleep(0.1)
        yield url, proc
    finally:
        stop_process(proc)


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The gateway's /metrics as {(sample name, sorted labels): value}."""
    text = httpx.get(url + "/metrics").text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


@contextlib.contextmanager
def run_raw_backend(answer: Callable[[bytes], bytes]) -> Iterator[str]:
    """A broken backend on loopback: reads a request head (and body, if it said how long)
    and writes ``answer(request)`` verbatim, then closes. Yields its URL; always stopped."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data = b""
            self.request.settimeout(5)
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in data:
                    got = self.request.recv(65536)
                    if not got:
                        return
                    data += got
                head, _, rest = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, val = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(val.strip())
                while len(rest) < length:
                    got = self.request.recv(65536)
                    if not got:
                        break
                    rest += got
                self.request.sendall(answer(head + b"\r\n\r\n" + rest))

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _limit_files(n: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
