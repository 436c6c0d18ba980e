"""One entrance, one owner per request (issue #11): every spelling of a completion path is
guarded or 404; request heads and bodies are bounded in size and time; whatever a request
does and whenever its client leaves, everything it held is released."""

from __future__ import annotations

import concurrent.futures
import contextlib
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.helpers import (
    GatewayServer,
    SimProcess,
    assert_well_ended,
    free_port,
    run_gateway,
    run_gateway_process,
    run_raw_backend,
    scrape,
    sse_events,
    value,
    wait_for,
)

USER = [{"role": "user", "content": "hi"}]
KEY = "sk-entrance"
ADMIN = "admin-entrance"


@pytest.fixture(scope="module")
def keyed(sim: SimProcess) -> Iterator[GatewayServer]:
    profile = f"""
health: {{interval: 0}}
models:
  r1: {{upstream_model: sim-r1, backends: [{{url: "{sim.url}"}}]}}
"""
    with run_gateway(profile, api_keys=(KEY,), admin_token=ADMIN) as gw:
        yield gw


def raw_request(url: str, head: bytes, body: bytes = b"", timeout: float = 5) -> bytes:
    """Send bytes exactly as given (no client-side normalisation); return the raw answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(head + body)
        out = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := s.recv(65536):
                out += chunk
    return out


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


# The spellings that a router, a proxy or uvicorn's percent-decoding can turn into something
# else: none may reach a handler without admission.
def variants(path: str) -> list[str]:
    return [
        path + "%0A",
        path + "%0D",
        path + "%09",
        path + "%20",
        path + "%00",
        path + "/",
        path + "//",
        path.replace("/v1/", "//v1/"),
        path.replace("/v1/", "/v1/./"),
        path.replace("/v1/", "/v1/x/../"),
        path.upper(),
        path[:-1] + path[-1].upper(),
        path.replace("/", "%2F"),
        path.replace("/v1/", "/v1%2F"),
        path + "?x=1#frag",
        path + ";jsessionid=1",
        "/api" + path,
        # percent-encoded unreserved characters: decoded by uvicorn into the real route,
        # which would let them past a proxy that filters by the raw path
        "/%" + format(ord(path[1]), "02x") + path[2:],
        path[:-1] + "%" + format(ord(path[-1]), "02x"),
    ]


COMPLETIONS = {
    "/v1/chat/completions": {"model": "r1", "messages": USER},
    "/v1/completions": {"model": "r1", "prompt": "hi"},
    "/v1/responses": {"model": "r1", "input": "hi"},
}


@pytest.mark.parametrize("path", list(COMPLETIONS))
@pytest.mark.parametrize("with_key", [False, True])
def test_every_spelling_of_a_completion_path_is_guarded_or_404(
    keyed: GatewayServer, path: str, with_key: bool
) -> None:
    body = orjson.dumps(COMPLETIONS[path])
    auth = f"Authorization: Bearer {KEY}\r\n".encode() if with_key else b""
    for spelling in [path, *variants(path)]:
        head = (
            (
                f"POST {spelling} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n"
            ).encode()
            + auth
            + b"\r\n"
        )
        answer = raw_request(keyed.url, head, body)
        status = status_of(answer)
        if spelling in (path, path + "?x=1#frag"):
            assert status == (200 if with_key else 401), (spelling, answer[:200])
        else:
            # 404, or a 400 from the HTTP parser: never served, never a redirect
            assert status in (400, 404), (spelling, answer[:300])
        if status == 404:
            err = orjson.loads(answer.partition(b"\r\n\r\n")[2])["error"]
            assert err["code"] == "not_found"


@pytest.mark.parametrize("path", ["/admin/profiles", "/admin/reload"])
@pytest.mark.parametrize("with_token", [False, True])
def test_admin_paths_are_guarded_or_404(keyed: GatewayServer, path: str, with_token: bool) -> None:
    method = "GET" if path == "/admin/profiles" else "POST"
    auth = f"Authorization: Bearer {ADMIN}\r\n".encode() if with_token else b""
    for spelling in [path, *variants(path)]:
        head = (
            (
                f"{method} {spelling} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                "Connection: close\r\n"
            ).encode()
            + auth
            + b"\r\n"
        )
        status = status_of(raw_request(keyed.url, head))
        # /admin/reload without a file to reload answers 422: it was admitted
        admitted = (200 if method == "GET" else 422) if with_token else 401
        if spelling in (path, path + "?x=1#frag"):
            assert status == admitted, spelling
        else:
            assert status in (400, 404), (spelling, status)


@pytest.mark.parametrize("tail", ["", "/cancel"])
@pytest.mark.parametrize("with_key", [False, True])
def test_every_spelling_of_a_stored_response_path_is_guarded_or_404(
    keyed: GatewayServer, tail: str, with_key: bool
) -> None:
    made = httpx.post(
        keyed.base_url + "/responses",
        json={"model": "r1", "input": "hi"},
        headers={"authorization": f"Bearer {KEY}"},
    ).json()["id"]
    path = f"/v1/responses/{made}{tail}"
    method = "POST" if tail else "GET"
    auth = f"Authorization: Bearer {KEY}\r\n".encode() if with_key else b""
    for spelling in [path, *variants(path)]:
        head = (
            (
                f"{method} {spelling} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                "Connection: close\r\n"
            ).encode()
            + auth
            + b"\r\n"
        )
        answer = raw_request(keyed.url, head)
        status = status_of(answer)
        body = answer.partition(b"\r\n\r\n")[2]
        if spelling in (path, path + "?x=1#frag"):
            if not with_key:
                assert status == 401, (spelling, answer[:200])
            else:  # admitted, placed, asked of its backend (which stores nothing: vLLM's 404)
                assert status == 404, (spelling, answer[:300])
                assert orjson.loads(body)["error"]["code"] == 404
        else:
            # 404 (no route, or through admission an id nobody minted), a 400 from the HTTP
            # parser, or the key check: never an answer from a backend
            assert status in (400, 401, 404), (spelling, answer[:300])
            if status == 404:
                code = orjson.loads(body)["error"]["code"]
                assert code in ("not_found", "response_not_found"), spelling


def test_a_client_key_is_no_admin_token(keyed: GatewayServer) -> None:
    r = httpx.get(keyed.url + "/admin/profiles", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 401


def test_other_methods_on_completion_paths_are_405(keyed: GatewayServer) -> None:
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        r = httpx.request(method, keyed.base_url + "/chat/completions")
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        assert r.json()["error"]["code"] == "method_not_allowed"


# -- request heads and bodies ---------------------------------------------------------------


@pytest.fixture(scope="module")
def strict(sim: SimProcess) -> Iterator[GatewayServer]:
    profile = f"""
health: {{interval: 0}}
limits: {{body_timeout: 1, max_in_flight: 3, key_max_in_flight: 3}}
models:
  r1: {{upstream_model: sim-r1, backends: [{{url: "{sim.url}"}}]}}
"""
    with run_gateway(profile, header_timeout=1.0, keepalive_timeout=0.5) as gw:
        yield gw


def test_oversized_head_is_431_and_the_connection_closed(strict: GatewayServer) -> None:
    host, port = strict.url.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        line = b"X-Pad: " + b"a" * 8000 + b"\r\n"
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            for _ in range(50_000):  # would be 400 MB
                s.sendall(line)
                sent += len(line)
        answer = b""
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while chunk := s.recv(65536):
                answer += chunk
    assert sent < 16 * 1024 * 1024, f"the gateway kept reading: {sent} bytes"
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]


def test_too_many_headers_is_431(strict: GatewayServer) -> None:
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(
        f"X-H{i}: v\r\n".encode() for i in range(300)
    )
    assert status_of(raw_request(strict.url, head + b"\r\n")) == 431
    few = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert status_of(raw_request(strict.url, few)) == 200


def test_slow_head_gets_408_and_silent_connections_are_closed(strict: GatewayServer) -> None:
    host, port = strict.url.removeprefix("http://").split(":")
    t0 = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n")
        answer = b""
        with contextlib.suppress(OSError):
            for _ in range(20):  # drip a header line every 0.3 s
                s.sendall(b"X-Drip: 1\r\n")
                time.sleep(0.3)
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert time.monotonic() - t0 < 4
    with socket.create_connection((host, int(port)), timeout=5) as s:  # sends nothing at all
        t0 = time.monotonic()
        answer = b""
        while chunk := s.recv(65536):  # until the server closes it
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408")
        assert time.monotonic() - t0 < 3


def test_idle_keepalive_connections_are_closed(strict: GatewayServer) -> None:
    host, port = strict.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        assert s.recv(100) == b""  # closed by the server
        assert time.monotonic() - t0 < 2


def test_slow_bodies_hold_no_slot_and_get_408(strict: GatewayServer) -> None:
    """Four drip-feeding clients against max_in_flight 3: others are still served."""
    host, port = strict.url.removeprefix("http://").split(":")
    body = orjson.dumps({"model": "r1", "messages": USER})
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    slow = [socket.create_connection((host, int(port)), timeout=5) for _ in range(4)]
    try:
        for s in slow:
            s.sendall(head + body[:5])
        for _ in range(3):
            r = httpx.post(
                strict.base_url + "/chat/completions", json={"model": "r1", "messages": USER}
            )
            assert r.status_code == 200
        for s in slow:
            answer = s.recv(65536)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
            assert b'"code":"body_timeout"' in answer
    finally:
        for s in slow:
            s.close()


def test_a_non_stream_client_that_leaves_cancels_upstream(
    strict: GatewayServer, fresh_sim: SimProcess
) -> None:
    body = {"model": "r1", "messages": USER, "sim": {"first_token_delay": 5}}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(strict.base_url + "/chat/completions", json=body, timeout=0.5)
    wait_for(lambda: fresh_sim.stats()["cancelled"] >= 1, "the upstream cancel", timeout=3)
    wait_for(lambda: fresh_sim.stats()["active"] == 0, "no upstream request left", timeout=3)
    m = scrape(strict.url)
    assert value(m, "gateway_in_flight_requests", model="r1") == 0
    assert value(m, "gateway_requests_total", model="r1", code="499") >= 1


# -- broken backends ------------------------------------------------------------------------


def test_backend_redirects_are_not_followed(sim: SimProcess, fresh_sim: SimProcess) -> None:
    target = sim.url + "/v1/chat/completions"

    def redirect(_: bytes) -> bytes:
        return (
            f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n"
        ).encode()

    with run_raw_backend(redirect) as url:
        profile = f"""
health: {{interval: 0}}
models:
  m: {{upstream_model: sim-r1, retries: 0, backends: [{{url: "{url}"}}]}}
"""
        with run_gateway(profile) as gw:
            r = httpx.post(gw.base_url + "/chat/completions", json={"model": "m", "messages": USER})
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "upstream_protocol_error"
    assert fresh_sim.requests() == []  # the prompt never reached the redirect's target


@pytest.mark.parametrize(
    "garbage",
    [
        b"HTTP/1.1 2x0 WHAT\r\n\r\n",
        b"\x00\x01\x02 not http at all\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nbad\r\n",
    ],
)
def test_garbled_backend_is_502_and_fails_over(sim: SimProcess, garbage: bytes) -> None:
    with run_raw_backend(lambda _: garbage) as url:
        alone = f"""
health: {{interval: 0}}
models:
  m: {{upstream_model: sim-r1, retries: 0, backends: [{{url: "{url}"}}]}}
  pair:
    upstream_model: sim-r1
    backends: [{{url: "{url}", name: bad}}, {{url: "{sim.url}", name: good}}]
"""
        with run_gateway(alone) as gw:
            for stream in (False, True):
                body = {"model": "m", "messages": USER, "stream": stream}
                r = httpx.post(gw.base_url + "/chat/completions", json=body, timeout=10)
                assert r.status_code == 502, (garbage, r.status_code, r.text)
                assert r.json()["error"]["type"] == "upstream_error"
                for _ in range(3):
                    body["model"] = "pair"
                    r = httpx.post(gw.base_url + "/chat/completions", json=body, timeout=10)
                    assert r.status_code == 200 and r.headers["x-gateway-backend"] == "good"


# -- leaks ----------------------------------------------------------------------------------


def _depart_before_body(url: str) -> str:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{")
    return "left-before-body"


def _depart_mid_stream(url: str, body: dict[str, Any], events: int) -> str:
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=10) as r:
        got = b""
        for chunk in r.iter_raw():
            got += chunk
            if got.count(b"\n\n") >= events:
                break
    return "left-mid-stream"


def _depart_waiting(url: str, body: dict[str, Any]) -> str:
    with contextlib.suppress(httpx.ReadTimeout):
        httpx.post(url + "/v1/chat/completions", json=body, timeout=0.3)
    return "left-waiting"


def _full(url: str, body: dict[str, Any]) -> str:
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=15)
    if body.get("stream") and r.status_code == 200:
        assert_well_ended(sse_events(r.content), n=1) if "error" not in r.text else None
    return str(r.status_code)


def test_nothing_leaks_after_a_storm_of_every_failure_and_departure(
    sim: SimProcess, fresh_sim: SimProcess
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with run_raw_backend(lambda _: b"HTTP/1.1 2x0 WHAT\r\n\r\n") as garbled:
        profile = f"""
health: {{interval: 0, eject_after: 1000}}
timeouts: {{first_token: 0.6, idle: 0.6, total: 4}}
limits: {{body_timeout: 1}}
models:
  r1:
    upstream_model: sim-r1
    stop_text: ["<|im_end|>"]
    backends:
      - {{url: "{sim.url}", name: s}}
      - {{url: "{dead}", name: d}}
      - {{url: "{garbled}", name: g}}
  solo: {{upstream_model: sim-r1, retries: 0, backends: [{{url: "{sim.url}", name: s}}]}}
"""
        with run_gateway(profile) as gw:
            url = gw.url

            def chat(model: str = "r1", stream: bool = True, **sim_: Any) -> dict[str, Any]:
                return {"model": model, "messages": USER, "stream": stream, "sim": sim_}

            jobs: list[tuple[Any, ...]] = []
            for _ in range(3):
                jobs += [
                    (_full, url, chat()),
                    (_full, url, chat(stream=False)),
                    (_full, url, chat(drop_after=3)),
                    (_full, url, chat(model="solo", stall_after=2, stall_for=3)),
                    (_full, url, chat(model="solo", first_token_delay=3)),
                    (_full, url, chat(model="solo", stream=False, first_token_delay=6)),
                    (_full, url, chat(finish="abort")),
                    (_full, url, chat(error_after=2)),
                    (_full, url, chat(malformed_after=2)),
                    (_full, url, chat(model="solo", status=503)),
                    (_full, url, chat(model="solo", status=400)),
                    (_full, url, chat(tokens=[[1, "a"], [2, "<|im_end|>"], [3, "b"]])),
                    (_full, url, {"model": "nope", "messages": USER}),
                    (_depart_before_body, url),
                    (_depart_mid_stream, url, chat(model="solo", token_delay=0.1), 3),
                    (_depart_mid_stream, url, chat(model="solo", stall_after=2, stall_for=5), 2),
                    (_depart_waiting, url, chat(model="solo", first_token_delay=3)),
                    (_depart_waiting, url, chat(model="solo", stream=False, first_token_delay=3)),
                ]
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                results = [f.result() for f in [pool.submit(*job) for job in jobs]]
            assert "500" not in results

            gateway = gw.gateway

            def settled() -> bool:
                m = scrape(url)
                return (
                    value(m, "gateway_in_flight_requests") == 0
                    and gateway.admission.gate.total == 0
                    and all(st.outstanding == 0 for st in gateway.pool._states.values())
                )

            wait_for(settled, "in-flight gauge, slots and backend leases back to 0", timeout=10)
            assert gateway.admission.gate.per_key == {}
            health = httpx.get(url + "/health").json()
            assert all(b["outstanding"] == 0 for b in health["backends"].values())
    wait_for(lambda: fresh_sim.stats()["active"] == 0, "no upstream stream left open")


# -- shutdown -------------------------------------------------------------------------------


def test_sigterm_ends_streams_in_flight_well_and_exits(sim: SimProcess, tmp_path: Path) -> None:
    config = tmp_path / "p.yaml"
    config.write_text(f"""
models:
  r1: {{upstream_model: sim-r1, backends: [{{url: "{sim.url}"}}]}}
""")
    env = {"GATEWAY_SHUTDOWN_GRACE": "0.5"}
    with run_gateway_process(config, env=env) as (url, proc):
        body = {
            "model": "r1",
            "messages": USER,
            "stream": True,
            "sim": {"token_delay": 0.1, "repeat": 50},
        }
        slow = {"model": "r1", "messages": USER, "sim": {"first_token_delay": 30}}
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            streams = [
                pool.submit(httpx.post, url + "/v1/chat/completions", json=body, timeout=20)
                for _ in range(3)
            ]
            waiting = pool.submit(httpx.post, url + "/v1/chat/completions", json=slow, timeout=20)
            wait_for(lambda: sim.stats()["active"] >= 4, "4 requests in flight upstream")
            time.sleep(0.3)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            for f in streams:
                r = f.result()
                events = sse_events(r.content)
                assert_well_ended(events)
                assert events[-2]["error"]["code"] == "server_shutting_down"
                assert len(events) > 3  # the partial answer went out before the end
            r = waiting.result()
            assert r.status_code == 503 and r.json()["error"]["code"] == "server_shutting_down"
            proc.wait(timeout=10)
            assert time.monotonic() - t0 < 6
            # uvicorn re-raises the signal after its clean shutdown: exit status 143
            assert proc.returncode in (0, -signal.SIGTERM)
    wait_for(lambda: sim.stats()["active"] == 0, "upstream requests closed")


def test_refusals_on_side_routes_log_no_traceback(
    keyed: GatewayServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A 401 or 404 is an answer, not an application error for uvicorn to report."""
    import logging

    caplog.set_level(logging.ERROR)
    assert httpx.get(keyed.base_url + "/models").status_code == 401
    assert httpx.get(keyed.url + "/admin/profiles").status_code == 401
    assert httpx.get(keyed.url + "/nope").status_code == 404
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
