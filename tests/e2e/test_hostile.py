"""Hostile clients and broken backends (issue #12): every case is a clear refusal (right
status, OpenAI-style body), never a 500, and a client's mistake never counts against a
backend's health."""

from __future__ import annotations

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
    run_gateway,
    run_raw_backend,
    scrape,
    sse_events,
    value,
)

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def tight(sim: SimProcess) -> Iterator[GatewayServer]:
    profile = f"""
health: {{interval: 0, eject_after: 1, cooloff: 60}}
limits: {{max_prompt_chars: 1000, key_rate: "40/minute", auth_failure_rate: "5/minute"}}
models:
  r1: {{upstream_model: sim-r1, backends: [{{url: "{sim.url}"}}]}}
"""
    with run_gateway(profile, api_keys=("sk-good",), metrics_token="scrape-me") as gw:
        yield gw


def post(
    gw: GatewayServer, body: Any, path: str = "/chat/completions", **kw: Any
) -> httpx.Response:
    headers = {"Authorization": "Bearer sk-good", **kw.pop("headers", {})}
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return httpx.post(
        gw.base_url + path,
        content=content,
        headers={"content-type": "application/json", **headers},
        timeout=10,
        **kw,
    )


def nested(depth: int) -> bytes:
    return (
        b'{"model": "r1", "messages": [{"role": "user", "content": "x"}], "x": '
        + (b"[" * depth + b"]" * depth)
        + b"}"
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "r1", "messages": USER, "stream": "false"}, "stream"),
        ({"model": "r1", "messages": USER, "stream": "true"}, "stream"),
        ({"model": "r1", "messages": USER, "n": "2"}, "n"),
        ({"model": "r1", "messages": USER, "max_tokens": "5"}, "max_tokens"),
        ({"model": "r1", "messages": USER, "temperature": "0.5"}, "temperature"),
        (
            {
                "model": "r1",
                "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}],
            },
            "messages.0.content.0.text",
        ),
        (
            {
                "model": "r1",
                "messages": [{"role": "user", "content": [{"type": "text", "text": None}]}],
            },
            "messages.0.content.0",
        ),
        ({"model": "r1", "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"model": 5, "messages": USER}, "model"),
        ({"model": "r1", "messages": USER, "stream_options": {"include_usage": "yes"}}, None),
        (nested(300), None),
        (nested(1023), None),
        (nested(5000), None),
    ],
)
def test_wrong_types_and_deep_nesting_are_400(tight: GatewayServer, body: Any, param: Any) -> None:
    r = post(tight, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    if param is not None:
        assert err["param"] == param


def test_a_clients_mistake_never_ejects_a_backend(tight: GatewayServer) -> None:
    for _ in range(5):  # eject_after: 1
        assert post(tight, {"model": "r1", "messages": USER, "stream": "false"}).status_code == 400
    assert httpx.get(tight.url + "/ready").status_code == 200
    assert post(tight, {"model": "r1", "messages": USER}).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {
            "model": "r1",
            "messages": USER,
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "f", "description": "d" * 100_000, "parameters": {}},
                }
            ],
        },
        {"model": "r1", "messages": [{"role": "user", "content": "x", "name": "n" * 5000}]},
        {
            "model": "r1",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64," + "A" * 5000},
                        }
                    ],
                }
            ],
        },
        {"model": "r1", "prompt": list(range(500))},
        {"model": "r1", "prompt": [[1, 2, 3] * 100, [4] * 300]},
    ],
)
def test_prompt_limit_counts_everything_that_reaches_the_model(
    tight: GatewayServer, body: dict[str, Any]
) -> None:
    path = "/completions" if "prompt" in body else "/chat/completions"
    r = post(tight, body, path)
    assert r.status_code == 400 and "characters" in r.json()["error"]["message"], r.text


def test_duplicate_authorization_is_400_everywhere(tight: GatewayServer) -> None:
    two = [("Authorization", "Bearer sk-good"), ("Authorization", "Bearer sk-other")]
    r = httpx.post(
        tight.base_url + "/chat/completions",
        json={"model": "r1", "messages": USER},
        headers=two,
    )
    assert r.status_code == 400 and "authorization" in r.json()["error"]["message"]
    r = httpx.get(tight.base_url + "/models", headers=two)
    assert r.status_code == 400


def test_overlong_request_id_is_replaced(tight: GatewayServer) -> None:
    r = post(tight, {"model": "r1", "messages": USER}, headers={"x-request-id": "a" * 5000})
    assert r.status_code == 200
    assert len(r.headers["x-request-id"]) == 32 and r.headers["x-request-id"] != "a" * 32
    r = post(tight, {"model": "r1", "messages": USER}, headers={"x-request-id": "trace-42"})
    assert r.headers["x-request-id"] == "trace-42"


def test_failed_authentication_is_rate_limited_per_address(sim: SimProcess) -> None:
    profile = f"""
limits: {{auth_failure_rate: "3/minute"}}
models:
  r1: {{upstream_model: sim-r1, backends: [{{url: "{sim.url}"}}]}}
"""
    with run_gateway(profile, api_keys=("sk-good",)) as gw:
        url = gw.base_url + "/chat/completions"
        body = {"model": "r1", "messages": USER}
        codes = [
            httpx.post(url, json=body, headers={"Authorization": f"Bearer guess-{i}"}).status_code
            for i in range(5)
        ]
        assert codes == [401, 401, 401, 429, 429]
        locked = httpx.post(url, json=body, headers={"Authorization": "Bearer sk-good"})
        assert locked.status_code == 429 and int(locked.headers["retry-after"]) >= 1
        models = httpx.get(gw.base_url + "/models", headers={"Authorization": "Bearer x"})
        assert models.status_code == 429


def test_forwarded_headers_are_not_trusted_by_default(sim: SimProcess) -> None:
    profile = f"""
limits: {{key_rate: "2/minute"}}
models:
  r1: {{upstream_model: sim-r1, backends: [{{url: "{sim.url}"}}]}}
"""
    with run_gateway(profile) as gw:
        codes = [
            httpx.post(
                gw.base_url + "/chat/completions",
                json={"model": "r1", "messages": USER},
                headers={"X-Forwarded-For": f"10.0.0.{i}", "Forwarded": f"for=10.0.1.{i}"},
            ).status_code
            for i in range(3)
        ]
        assert codes == [200, 200, 429]  # rotating the header does not make a new client


def test_health_shows_no_internal_urls_and_metrics_need_their_token(
    tight: GatewayServer, sim: SimProcess
) -> None:
    health = httpx.get(tight.url + "/health")
    assert health.status_code == 200
    assert sim.url not in health.text and "127.0.0.1" not in health.text
    assert list(health.json()["backends"]) == ["r1/b0"]
    assert httpx.get(tight.url + "/metrics").status_code == 401
    ok = httpx.get(tight.url + "/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert ok.status_code == 200 and "gateway_requests_total" in ok.text


# -- broken backends ------------------------------------------------------------------------

SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
FIRST = b'data: {"id":"x","choices":[{"index":0,"delta":{"role":"assistant","content":"hi"}}]}\n\n'


def one_backend(url: str, **extra: Any) -> str:
    limits = extra.pop("limits", "")
    return f"""
health: {{interval: 0}}
{limits}
models:
  m: {{upstream_model: m, retries: 0, backends: [{{url: "{url}"}}]}}
"""


def test_an_endless_sse_line_is_a_protocol_error(sim: SimProcess) -> None:
    with run_raw_backend(lambda _: SSE_HEAD + FIRST + b"data: " + b"a" * 12_000_000) as url:
        with run_gateway(one_backend(url)) as gw:
            r = httpx.post(
                gw.base_url + "/chat/completions",
                json={"model": "m", "messages": USER, "stream": True},
                timeout=20,
            )
    events = sse_events(r.content)
    assert_well_ended(events)
    assert events[-2]["error"]["code"] == "upstream_protocol_error"
    assert len(r.content) < 10_000  # none of it reached the client


def test_an_oversized_non_stream_answer_is_502() -> None:
    big = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5000000\r\n\r\n"

    with run_raw_backend(lambda _: big + b"{" + b" " * 4_999_999) as url:
        cfg = one_backend(url, limits="limits: {max_upstream_body_bytes: 1048576}")
        with run_gateway(cfg) as gw:
            r = httpx.post(gw.base_url + "/chat/completions", json={"model": "m", "messages": USER})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_protocol_error"


@pytest.mark.parametrize("choices", [[None], "abc", {"a": 1}, [1, 2], [[]]])
def test_malformed_non_stream_choices_are_502(choices: Any) -> None:
    body = orjson.dumps({"id": "x", "object": "chat.completion", "choices": choices})
    answer = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with run_raw_backend(lambda _: answer) as url, run_gateway(one_backend(url)) as gw:
        r = httpx.post(gw.base_url + "/chat/completions", json={"model": "m", "messages": USER})
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "upstream_protocol_error"


def test_upstream_error_bodies_pass_only_openai_fields() -> None:
    leaky = orjson.dumps(
        {
            "error": {"message": "bad request", "type": "BadRequestError", "code": 400},
            "echo": {"authorization": "Bearer backend-secret"},
        }
    )
    raw = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
    answers = [
        raw + f"content-length: {len(leaky)}\r\n\r\n".encode() + leaky,
        b"HTTP/1.1 500 Oops\r\ncontent-length: 36\r\n\r\nheaders: Bearer backend-secret ....",
    ]
    for answer in answers:
        with run_raw_backend(lambda _, a=answer: a) as url, run_gateway(one_backend(url)) as gw:
            r = httpx.post(gw.base_url + "/chat/completions", json={"model": "m", "messages": USER})
        assert "backend-secret" not in r.text
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert r.status_code in (400, 500)


def test_finish_reason_labels_stay_bounded(sim: SimProcess) -> None:
    def weird(i: int) -> bytes:
        chunk = {
            "id": "x",
            "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": f"w{i}"}],
        }
        return SSE_HEAD + b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\n"

    counter = iter(range(100))
    with (
        run_raw_backend(lambda _: weird(next(counter))) as url,
        run_gateway(one_backend(url)) as gw,
    ):
        for _ in range(5):
            r = httpx.post(
                gw.base_url + "/chat/completions",
                json={"model": "m", "messages": USER, "stream": True},
            )
            assert_well_ended(sse_events(r.content))
        m = scrape(gw.url)
    labels = {dict(lab).get("upstream") for (n, lab) in m if n == "gateway_finish_reason_total"}
    assert labels == {"other"}
    assert value(m, "gateway_finish_reason_total", upstream="other") == 5


def test_a_turn_of_a_million_think_tags_is_stripped_in_linear_time(tight: GatewayServer) -> None:
    """Removing earlier reasoning was super-linear: 3.2 M characters of `</think>` froze
    the event loop for 54 s. Now a generous bound holds (this is a hang guard, not a
    benchmark)."""
    from tests.helpers import run_gateway as _run  # noqa: F401  (the module's fixture is used)

    turn = {"role": "assistant", "content": "</think>" * 100_000}
    t0 = time.monotonic()
    r = post(tight, {"model": "r1", "messages": [*USER, turn, *USER]})
    assert r.status_code == 400  # over the fixture's 1000-character limit: refused first
    big = {"model": "r1", "messages": [*USER, turn, *USER]}
    from gateway.profiles import parse_profiles
    from gateway.transform import build_upstream_body

    profile = parse_profiles(
        'models: {r: {backends: [{url: "http://x:1"}], reasoning: {}}}', "<test>"
    ).models["r"]
    t0 = time.monotonic()
    out, _ = build_upstream_body(big, profile, "chat")
    assert time.monotonic() - t0 < 5
    assert out["messages"][1]["content"] == ""


# -- the gateway's own limits say so ----------------------------------------------------------


def test_limits_refuse_at_once_with_a_metric(sim: SimProcess) -> None:
    """Concurrency caps and the upstream connection cap answer at once (429 / 503 with
    Retry-After), never queue silently, and each refusal is counted by limit."""
    import concurrent.futures

    from tests.helpers import wait_for

    slow = {"model": "r1", "messages": USER, "stream": True, "sim": {"token_delay": 0.1}}

    def profile(limits: str) -> str:
        return f"""
health: {{interval: 0}}
limits: {{{limits}}}
models:
  r1: {{upstream_model: sim-r1, backends: [{{url: "{sim.url}"}}]}}
"""

    cases = [
        (
            profile("max_in_flight: 100"),
            {"max_upstream_connections": 2},
            503,
            "upstream_connections",
        ),
        (profile("max_in_flight: 2"), {}, 429, "max_in_flight"),
    ]
    for yaml_, settings, status, limit in cases:
        with run_gateway(yaml_, **settings) as gw, concurrent.futures.ThreadPoolExecutor(2) as pool:
            url = gw.base_url + "/chat/completions"
            held = [pool.submit(httpx.post, url, json=slow, timeout=30) for _ in range(2)]
            wait_for(lambda gw=gw: gw.gateway.pool.leased == 2, "two requests upstream")
            t0 = time.monotonic()
            refused = httpx.post(url, json=slow, timeout=10)
            assert time.monotonic() - t0 < 1  # at once, not queued
            assert refused.status_code == status and refused.headers["retry-after"] == "1"
            err = refused.json()["error"]
            assert limit in err["message"] or limit.upper() in err["message"] or status == 503
            for f in held:
                assert f.result().status_code == 200
            assert value(scrape(gw.url), "gateway_limit_rejections_total", limit=limit) == 1


def test_out_of_file_descriptors_is_a_503_not_the_backends_fault(
    sim: SimProcess, tmp_path: Path
) -> None:
    """A gateway with a tiny open-file limit. Once descriptors run out, new connections are
    reset at once (uvloop's reserved-descriptor trick: a refusal, not a queue); a request
    whose connection took the last descriptor, so that its upstream connection cannot be
    opened, gets 503 gateway_overloaded; and the backend stays healthy throughout."""
    import socket as socket_

    from tests.helpers import run_gateway_process

    config = tmp_path / "p.yaml"
    config.write_text(f"""
health: {{interval: 0, eject_after: 1, cooloff: 60}}
models:
  r1: {{upstream_model: sim-r1, backends: [{{url: "{sim.url}"}}]}}
""")
    body = orjson.dumps(
        {"model": "r1", "messages": USER, "stream": True, "sim": {"token_delay": 0.2}}
    )
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    streams: list[socket_.socket] = []
    with run_gateway_process(config, nofile=64) as (url, _proc):
        host, port = url.removeprefix("http://").split(":")

        def stream() -> bytes:
            s = socket_.create_connection((host, int(port)), timeout=3)
            streams.append(s)  # every socket is closed at the end, whatever happened
            s.sendall(request)
            try:
                return s.recv(4096)
            except (TimeoutError, ConnectionResetError) as exc:
                return repr(exc).encode()

        try:
            for _ in range(60):  # ~2 descriptors per stream
                head = stream()
                if not head.startswith(b"HTTP/1.1 200"):
                    break
            # out of descriptors: the connection is reset or closed at once, not queued
            assert head == b"" or b"ConnectionResetError" in head, head[:80]
            streams.pop().close()  # the refused one
            streams.pop().close()  # a stream: frees two (client and upstream)
            time.sleep(0.5)
            idle = socket_.create_connection((host, int(port)), timeout=3)  # takes one
            streams.append(idle)
            time.sleep(0.3)
            head = stream()  # its connection takes the last one: no upstream socket
            while b"}}" not in head and head.startswith(b"HTTP/1.1 503"):
                more = streams[-1].recv(4096)  # the JSON body may come in a second read
                if not more:
                    break
                head += more
            assert head.startswith(b"HTTP/1.1 503"), head[:200]
            assert b"gateway_overloaded" in head and b"Too many open files" in head
        finally:
            for s in streams:
                s.close()
        time.sleep(0.5)
        health = httpx.get(url + "/health").json()
        assert all(b["state"] == "up" for b in health["backends"].values()), health
        r = httpx.post(url + "/v1/chat/completions", json={"model": "r1", "messages": USER})
        assert r.status_code == 200  # and it serves again
