"""What an outside attacker found at the HTTP layer (recorded in the #11 attack report),
each now a clear, bounded refusal: protocol upgrades, heads that arrive in one read, input
after a streaming request, HTTP/1.0 streams, pipelined clients that leave, a body still
arriving at shutdown, blank secrets in the environment."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from gateway.settings import Settings
from tests.helpers import (
    GatewayServer,
    SimProcess,
    assert_well_ended,
    run_gateway,
    run_gateway_process,
    scrape,
    sse_events,
    value,
    wait_for,
)

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gw(sim: SimProcess) -> Iterator[GatewayServer]:
    profile = f"""
models:
  r1: {{upstream_model: sim-r1, backends: [{{url: "{sim.url}"}}]}}
"""
    with run_gateway(profile) as g:
        yield g


def exchange(url: str, data: bytes, timeout: float = 10) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := s.recv(65536):
                out += chunk
    return out


def request(body: dict[str, object], *, version: str = "1.1", extra: str = "") -> bytes:
    raw = orjson.dumps(body)
    return (
        f"POST /v1/chat/completions HTTP/{version}\r\nHost: x\r\nContent-Type: application/json"
        f"\r\nContent-Length: {len(raw)}\r\n{extra}\r\n"
    ).encode() + raw


def json_error(answer: bytes) -> dict[str, object]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"application/json" in head, head
    err = orjson.loads(body)["error"]
    assert err["message"] and err["type"]
    return err  # type: ignore[no-any-return]


@pytest.mark.parametrize("upgrade", ["websocket", "h2c"])
def test_protocol_upgrades_are_refused_at_once(gw: GatewayServer, upgrade: str) -> None:
    t0 = time.monotonic()
    answer = exchange(
        gw.url,
        request(
            {"model": "r1", "messages": USER},
            extra=f"Connection: Upgrade\r\nUpgrade: {upgrade}\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        ),
    )
    assert time.monotonic() - t0 < 3  # it held its socket forever before
    assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
    assert json_error(answer)["code"] == "upgrade_not_supported"


def test_a_big_head_in_one_read_is_431(gw: GatewayServer) -> None:
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 120_000 + b"\r\n\r\n"
    answer = exchange(gw.url, head)
    assert answer.startswith(b"HTTP/1.1 431")
    assert json_error(answer)["code"] == "request_header_fields_too_large"


def test_invalid_http_is_an_openai_error(gw: GatewayServer) -> None:
    for bad in (
        b"GET /health HTTP/1.2\r\nHost: x\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"get /health HTTP/1.1\r\n\r\n",
    ):
        answer = exchange(gw.url, bad)
        assert answer.startswith(b"HTTP/1.1 400"), (bad, answer[:80])
        assert json_error(answer)["code"] == "invalid_http_request"


def test_input_after_a_streaming_request_does_not_corrupt_its_stream(gw: GatewayServer) -> None:
    body = {"model": "r1", "messages": USER, "stream": True, "sim": {"token_delay": 0.02}}
    answer = exchange(gw.url, request(body) + b"GARBAGE\r\n\r\n")
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 400" not in rest
    chunks, data = [], rest
    while data:  # undo the chunked transfer encoding
        size, _, data = data.partition(b"\r\n")
        n = int(size, 16)
        chunks.append(data[:n])
        data = data[n + 2 :]
        if n == 0:
            break
    assert_well_ended(sse_events(b"".join(chunks)))


def test_http_1_0_gets_no_chunked_stream(gw: GatewayServer) -> None:
    answer = exchange(
        gw.url, request({"model": "r1", "messages": USER, "stream": True}, version="1.0")
    )
    assert answer.startswith(b"HTTP/1.1 400") and b"chunked" not in answer.split(b"\r\n\r\n")[0]
    assert json_error(answer)["param"] == "stream"
    answer = exchange(gw.url, request({"model": "r1", "messages": USER}, version="1.0"))
    assert answer.startswith(b"HTTP/1.1 200") and b"content-length" in answer.lower()


def test_pipelined_streams_whose_client_leaves_are_a_disconnect_not_an_error(
    gw: GatewayServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    metric = "gateway_stream_terminations_total"
    before = value(scrape(gw.url), metric, cause="client_disconnect")
    host, port = gw.url.removeprefix("http://").split(":")
    body = {"model": "r1", "messages": USER, "stream": True, "sim": {"token_delay": 0.05}}
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(request(body) + request(body))
        got = b""
        while len(got) < 4096:
            got += s.recv(4096)
    wait_for(
        lambda: value(scrape(gw.url), metric, cause="client_disconnect") >= before + 1,
        "the stream counted as a client disconnect",
    )
    time.sleep(0.3)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_a_body_still_arriving_at_sigterm_gets_503(sim: SimProcess, tmp_path: Path) -> None:
    config = tmp_path / "p.yaml"
    config.write_text(f"""
models:
  r1: {{upstream_model: sim-r1, backends: [{{url: "{sim.url}"}}]}}
""")
    with run_gateway_process(config, env={"GATEWAY_SHUTDOWN_GRACE": "0.5"}) as (url, proc):
        host, port = url.removeprefix("http://").split(":")
        answer: list[bytes] = []

        def slow_body() -> None:
            with socket.create_connection((host, int(port)), timeout=10) as s:
                s.sendall(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{"
                )
                out = b""
                with contextlib.suppress(OSError):
                    while chunk := s.recv(65536):
                        out += chunk
                answer.append(out)

        t = threading.Thread(target=slow_body)
        t.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        t.join(timeout=10)
        proc.wait(timeout=10)
        assert time.monotonic() - t0 < 4
    assert answer and answer[0].startswith(b"HTTP/1.1 503"), answer
    assert json_error(answer[0])["code"] == "server_shutting_down"


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("GATEWAY_ADMIN_TOKEN", " "),
        ("GATEWAY_METRICS_TOKEN", "\t"),
        ("GATEWAY_API_KEYS", " "),
        ("GATEWAY_API_KEYS", ",,"),
    ],
)
def test_blank_secrets_in_the_environment_refuse_to_start(
    monkeypatch: pytest.MonkeyPatch, name: str, raw: str
) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(SystemExit, match=name):
        Settings.from_env()
