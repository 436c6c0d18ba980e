"""``rate_storage: redis://``: two gateway processes share one rate limit through a real
``redis-server`` (Debian's package; ``scripts/install-redis.sh`` installs it, ``make test``
runs it), and a Redis that goes away fails open instead of failing every request."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import SimProcess, free_port, run_gateway_process, stop_process, wait_for

USER = [{"role": "user", "content": "hi"}]


def redis_server_binary() -> str:
    found = os.environ.get("GATEWAY_REDIS_SERVER") or shutil.which("redis-server")
    if not found and Path("/usr/bin/redis-server").exists():
        found = "/usr/bin/redis-server"
    if not found:
        pytest.fail(
            "redis-server not installed: run scripts/install-redis.sh (make test does)",
            pytrace=False,
        )
    return found


@contextlib.contextmanager
def run_redis(port: int | None = None) -> Iterator[str]:
    """A throw-away ``redis-server`` on a free loopback port, nothing saved; always stopped.
    Yields its URL."""
    port = port or free_port()
    proc = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def answers() -> bool:
            with contextlib.suppress(OSError):
                import socket

                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            return False

        wait_for(answers, "redis-server to answer")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_process(proc)


def profile(sim_url: str, storage: str, rate: str = "6/minute") -> str:
    return f"""
limits: {{key_rate: "{rate}", rate_storage: "{storage}"}}
models:
  r1: {{upstream_model: sim-r1, backends: [{{url: "{sim_url}"}}]}}
"""


def post(url: str) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions", json={"model": "r1", "messages": USER}, timeout=10
    )


def test_two_gateway_processes_share_one_rate_limit_through_redis(
    tmp_path: Path, sim: SimProcess
) -> None:
    with run_redis() as redis_url:
        path = tmp_path / "p.yaml"
        path.write_text(profile(sim.url, redis_url))
        check = subprocess.run(
            [sys.executable, "-m", "gateway", "check", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert check.returncode == 0 and "cannot reach Redis" not in check.stderr
        with run_gateway_process(path) as (a, _), run_gateway_process(path) as (b, _):
            statuses = [post(url).status_code for url in (a, b) * 5]
            assert statuses == [200] * 6 + [429] * 4  # one budget of 6, whichever replica
            refused = post(b)
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
            assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    # without Redis each replica counts alone: the same traffic gets twice the budget
    memory = tmp_path / "m.yaml"
    memory.write_text(profile(sim.url, "memory://"))
    with run_gateway_process(memory) as (a, _), run_gateway_process(memory) as (b, _):
        assert [post(url).status_code for url in (a, b) * 5] == [200] * 10


def test_redis_going_away_fails_open_and_coming_back_limits_again(
    tmp_path: Path, sim: SimProcess
) -> None:
    port = free_port()
    path = tmp_path / "p.yaml"
    path.write_text(profile(sim.url, f"redis://127.0.0.1:{port}/0", "3/minute"))
    with contextlib.ExitStack() as redis, run_gateway_process(path) as (url, _):
        redis.enter_context(run_redis(port))
        assert [post(url).status_code for _ in range(4)] == [200, 200, 200, 429]
        redis.close()  # Redis goes away under a running gateway
        started = time.monotonic()
        assert [post(url).status_code for _ in range(5)] == [200] * 5  # served, not 500
        assert time.monotonic() - started < 5  # a refused connection costs no hang
        with run_redis(port):  # back (empty): limits apply again
            wait_for(lambda: post(url).status_code == 429, "limits to apply again", timeout=20)


def test_gateway_check_warns_when_redis_does_not_answer(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    port = free_port()
    path.write_text(profile("http://127.0.0.1:9", f"redis://:hunter2@127.0.0.1:{port}/0"))
    r = subprocess.run(
        [sys.executable, "-m", "gateway", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr  # a warning, not a refusal: Redis may start later
    assert "cannot reach Redis" in r.stderr and f"127.0.0.1:{port}" in r.stderr
    assert "hunter2" not in r.stderr + r.stdout
