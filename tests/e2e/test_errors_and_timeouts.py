"""Errors before the first byte are OpenAI-style JSON; timeouts end streams by the contract."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from tests.helpers import GatewayServer, SimProcess, assert_well_ended

USER = [{"role": "user", "content": "hi"}]


def assert_openai_error(body: Any, code: Any = None) -> None:
    assert set(body) == {"error"}
    assert {"message", "type", "param", "code"} <= set(body["error"])
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code


def test_invalid_json_is_400(gateway: GatewayServer) -> None:
    r = httpx.post(
        gateway.base_url + "/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400
    assert_openai_error(r.json(), "invalid_request")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "r1"}, "messages"),
        ({"model": "r1", "messages": []}, "messages"),
        ({"model": "r1", "messages": [{"role": "", "content": "x"}]}, "messages.0.role"),
        ({"model": "r1", "messages": [{"content": "x"}]}, "messages.0.role"),
        ({"model": "r1", "messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"messages": USER}, "model"),
        ([1, 2], None),
    ],
)
def test_schema_errors_are_400_naming_the_field(
    gateway: GatewayServer, body: Any, param: Any
) -> None:
    r = httpx.post(gateway.base_url + "/chat/completions", json=body)
    assert r.status_code == 400
    assert_openai_error(r.json())
    assert r.json()["error"]["param"] == param


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="gpt-9", messages=USER)  # type: ignore[arg-type]
    assert exc.value.status_code == 404
    assert exc.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_unreachable_upstream_is_502(client: openai.OpenAI) -> None:
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as exc:  # refused before the stream starts
            client.chat.completions.create(model="dead", messages=USER, stream=stream)
        assert exc.value.status_code == 502
        assert exc.value.body["code"] == "upstream_unavailable"  # type: ignore[index]


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_error_status_passed_on_with_body(
    client: openai.OpenAI, fresh_sim: SimProcess, stream: bool
) -> None:
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(
            model="r1", messages=USER, stream=stream, extra_body={"sim": {"status": 503}}
        )
    assert exc.value.status_code == 503
    assert exc.value.body["message"] == "simulated failure"  # type: ignore[index]
    assert exc.value.body["type"] == "InternalServerError"  # type: ignore[index]


def test_vllm_404_for_unserved_upstream_model_passed_on(
    client: openai.OpenAI, fresh_sim: SimProcess
) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="unserved", messages=USER)
    assert "not-on-this-server" in exc.value.message


def test_vllm_400_passed_on(client: openai.OpenAI, fresh_sim: SimProcess) -> None:
    # The gateway's own checks allow this; the backend refuses it with vLLM's 400 body.
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(
            model="r1", prompt="x", max_tokens=5, extra_body={"max_tokens": -3}
        )
    assert exc.value.status_code == 400


def test_unknown_path_and_method(gateway: GatewayServer) -> None:
    r = httpx.get(gateway.url + "/v1/nope")
    assert r.status_code == 404
    assert_openai_error(r.json(), "not_found")
    r = httpx.get(gateway.base_url + "/chat/completions")
    assert r.status_code == 405
    assert_openai_error(r.json(), "method_not_allowed")
    r = httpx.get(gateway.url + "/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


@pytest.mark.parametrize(
    ("script", "termination", "text"),
    [
        ({"stall_after": 2, "stall_for": 5}, "idle_timeout", "Okay,"),
        ({"token_delay": 0.3}, "total_timeout", None),
    ],
)
@pytest.mark.parametrize("model", ["hasty", "hasty-graceful"])
def test_stream_timeouts_after_the_first_byte(
    raw: Any,
    fresh_sim: SimProcess,
    script: dict[str, Any],
    termination: str,
    text: Any,
    model: str,
) -> None:
    t0 = time.monotonic()
    _, _, events = raw(
        "/chat/completions", {"model": model, "messages": USER, "stream": True, "sim": script}
    )
    assert time.monotonic() - t0 < 4  # profile: first_token 0.5, idle 0.5, total 2
    finals = assert_well_ended(events)
    if model == "hasty":  # the default: an error event the SDKs raise
        assert events[-2]["error"]["code"] == termination and finals == []
        sent = events[:-2]
    else:
        (final,) = finals
        assert final["finish_reason"] == "length"
        assert final["gateway_termination"] == termination
        sent = events[:-1]
    got = "".join(c["delta"].get("content") or "" for e in sent for c in e["choices"])
    if text is not None:
        assert got == text
    deadline = time.monotonic() + 5
    while fresh_sim.stats()["cancelled"] < 1:  # the upstream request was closed
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_stream_first_token_timeout_is_504_before_the_first_byte(
    raw: Any, fresh_sim: SimProcess
) -> None:
    """Nothing reached the client and no backend produced a first token in time: an HTTP
    error the SDKs understand (and may retry), not a stream that looks finished."""
    t0 = time.monotonic()
    status, headers, body = raw(
        "/chat/completions",
        {"model": "hasty", "messages": USER, "stream": True, "sim": {"first_token_delay": 5}},
    )
    assert time.monotonic() - t0 < 4
    assert status == 504 and headers["content-type"] == "application/json"
    assert_openai_error(body, "first_token_timeout")
    deadline = time.monotonic() + 5
    while fresh_sim.stats()["cancelled"] < 1:  # the upstream request was closed
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_non_stream_timeout_is_504(client: openai.OpenAI, fresh_sim: SimProcess) -> None:
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(
            model="hasty", messages=USER, extra_body={"sim": {"first_token_delay": 5}}
        )
    assert time.monotonic() - t0 < 4
    assert exc.value.status_code == 504
    assert exc.value.body["code"] == "total_timeout"  # type: ignore[index]


def test_client_disconnect_cancels_upstream_at_once(
    gateway: GatewayServer, fresh_sim: SimProcess
) -> None:
    # The upstream stalls for 30 s (longer than any timeout of the r1 profile would wait
    # before the test ends): only the disconnect can close it this fast.
    body = {
        "model": "r1",
        "messages": USER,
        "stream": True,
        "sim": {"stall_after": 3, "stall_for": 30},
    }
    with httpx.stream("POST", gateway.base_url + "/chat/completions", json=body, timeout=10) as r:
        it = r.iter_raw()
        got = b""
        while got.count(b"\n\n") < 3:
            got += next(it)
    t0 = time.monotonic()
    while fresh_sim.stats()["cancelled"] < 1:
        assert time.monotonic() - t0 < 3, "upstream still open after the client left"
        time.sleep(0.02)
    assert fresh_sim.stats()["active"] == 0
