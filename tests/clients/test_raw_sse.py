"""Client conformance with ``curl -N``: the raw SSE a client without an SDK gets (issue #13).

The same servers as test_clients.py (the shipped profiles behind a simulated vLLM). Every
stream is read by the real ``curl`` binary, unbuffered, with arrival times per line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import pytest

from tests.clients.conftest import ALLOWED_ORIGIN, ANSWER, API_KEY, DEMO, REASONING, require
from tests.helpers import GatewayServer, assert_well_ended, sse_events

pytestmark = [pytest.mark.clients, pytest.mark.timeout(120)]

STALL = {"stall_after": 18, "stall_for": 30}


@dataclass
class Curl:
    status: int
    headers: dict[str, str]
    body: bytes
    #: (seconds since start, line) for every non-empty body line, as curl printed it
    lines: list[tuple[float, bytes]]

    def events(self) -> list[Any]:
        return sse_events(self.body)

    def json(self) -> Any:
        return json.loads(self.body)


def curl(
    url: str,
    body: dict[str, Any] | None = None,
    *,
    key: str | None = API_KEY,
    headers: dict[str, str] | None = None,
    method: str | None = None,
    timeout: float = 30,
) -> Curl:
    """Run ``curl -sS -N`` and read its output as it arrives."""
    exe = shutil.which("curl")
    require(exe is not None, "curl is not installed")
    assert exe is not None
    argv = [exe, "-sS", "-N", "-i", "--max-time", str(timeout)]
    if method:
        argv += ["-X", method]
    if key is not None:
        argv += ["-H", f"Authorization: Bearer {key}"]
    for k, v in (headers or {}).items():
        argv += ["-H", f"{k}: {v}"]
    if body is not None:
        argv += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
    argv.append(url)
    started = time.monotonic()
    raw: list[bytes] = []
    stamps: list[tuple[float, bytes]] = []
    with subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        if body is not None:
            proc.stdin.write(json.dumps(body).encode())
        proc.stdin.close()
        for line in iter(proc.stdout.readline, b""):
            raw.append(line)
            stamps.append((time.monotonic() - started, line.rstrip(b"\r\n")))
        assert proc.wait(timeout=timeout + 5) == 0, proc.stderr.read()
    whole = b"".join(raw)
    head, _, payload = whole.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    hdrs = {}
    for h in header_lines:
        name, _, value = h.partition(":")
        hdrs[name.strip().lower()] = value.strip()
    n_head = len(header_lines) + 2
    return Curl(
        status=int(status_line.split()[1]),
        headers=hdrs,
        body=payload,
        lines=[(t, ln) for t, ln in stamps[n_head:] if ln],
    )


def chat(model: str = DEMO, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "What is 2 + 2?"}],
        "stream": True,
        **extra,
    }


def deltas(events: list[Any]) -> list[dict[str, Any]]:
    return [c["delta"] for e in events if isinstance(e, dict) for c in e.get("choices", ())]


def test_curl_stream_arrives_as_it_is_generated(cgateway: GatewayServer) -> None:
    """Each token is on the wire when generated (no buffering in the gateway): with 40 ms per
    simulated token, the first event comes long before the last."""
    r = curl(cgateway.base_url + "/chat/completions", chat(sim={"token_delay": 0.04}))
    assert r.status == 200 and r.headers["content-type"].startswith("text/event-stream")
    data = [(t, ln) for t, ln in r.lines if ln.startswith(b"data: ")]
    first, last = data[0][0], data[-1][0]
    assert last - first > 0.5, data
    events = r.events()
    (final,) = assert_well_ended(events)
    assert final["finish_reason"] == "stop"
    assert "".join(d.get("content") or "" for d in deltas(events)) == ANSWER


def test_curl_usage_chunk_only_when_asked(cgateway: GatewayServer) -> None:
    """No ``choices: []`` usage chunk unless ``include_usage`` (loops that index
    ``choices[0]`` break on it); when asked, exactly one, right before ``[DONE]``."""
    plain = curl(cgateway.base_url + "/chat/completions", chat()).events()
    assert all(e["choices"] for e in plain[:-1]), plain
    asked = curl(
        cgateway.base_url + "/chat/completions",
        chat(stream_options={"include_usage": True}),
    ).events()
    usage = [e for e in asked[:-1] if not e["choices"]]
    assert len(usage) == 1 and asked[-2] is usage[0], asked[-3:]
    assert usage[0]["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize(
    ("model", "sim", "code"),
    [
        ("r1-cut", STALL, "idle_timeout"),
        ("r1-short-total", {"token_delay": 0.2}, "total_timeout"),
        (DEMO, {"drop_after": 18}, "upstream_disconnect"),
        (DEMO, {"finish": "abort"}, "upstream_abort"),
    ],
    ids=["idle", "total", "drop", "abort"],
)
def test_curl_cut_stream_ends_with_an_error_event(
    cgateway: GatewayServer, model: str, sim: dict[str, Any], code: str
) -> None:
    """Item 2, default mode: text so far, then one OpenAI error event with the cause, then
    ``[DONE]``; no final chunk that would make the answer look finished."""
    events = curl(cgateway.base_url + "/chat/completions", chat(model, sim=sim)).events()
    assert assert_well_ended(events) == []  # the error form of the contract
    assert events[-2]["error"]["code"] == code, events[-2]
    assert not any(c.get("finish_reason") for e in events[:-2] for c in e["choices"]), events


def test_curl_cut_stream_graceful_mode(cgateway: GatewayServer) -> None:
    """Item 2, ``stream_termination: graceful``: a final chunk with ``length`` and the cause."""
    events = curl(
        cgateway.base_url + "/chat/completions", chat("r1-cut-graceful", sim=STALL)
    ).events()
    (final,) = assert_well_ended(events)
    assert final["finish_reason"] == "length"
    assert final["gateway_termination"] == "idle_timeout"


def test_curl_no_first_token_is_an_http_504(cgateway: GatewayServer) -> None:
    r = curl(
        cgateway.base_url + "/chat/completions",
        chat("r1-slow-start", sim={"first_token_delay": 20}),
    )
    assert r.status == 504, r.body[:300]
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"] == "first_token_timeout"


def test_curl_each_reasoning_piece_in_one_field(cgateway: GatewayServer) -> None:
    events = curl(cgateway.base_url + "/chat/completions", chat()).events()
    fields = [{k for k in ("reasoning", "reasoning_content") if d.get(k)} for d in deltas(events)]
    assert all(len(f) <= 1 for f in fields), fields
    got = "".join(d.get("reasoning_content") or d.get("reasoning") or "" for d in deltas(events))
    assert got == REASONING
    # a request may ask for the other field (or both)
    other = curl(
        cgateway.base_url + "/chat/completions",
        chat(),
        headers={"x-gateway-reasoning-field": "reasoning"},
    ).events()
    assert "".join(d.get("reasoning") or "" for d in deltas(other)) == REASONING
    assert not any(d.get("reasoning_content") for d in deltas(other))


@pytest.mark.parametrize("vllm_split", [False, True], ids=["gateway-split", "vllm-split"])
def test_curl_hidden_reasoning_sends_heartbeats_not_empty_chunks(
    cgateway: GatewayServer, vllm_split: bool
) -> None:
    """Item 3: while the model thinks in ``hide`` mode (~1.6 s here, heartbeat 0.25 s) the
    client gets SSE comments, and no empty ``{}`` deltas, whichever side split the reasoning."""
    sim = {"token_delay": 0.1, "split_reasoning": vllm_split}
    r = curl(cgateway.base_url + "/chat/completions", chat("r1-hide", sim=sim))
    comments = [t for t, ln in r.lines if ln.startswith(b":")]
    data = [t for t, ln in r.lines if ln.startswith(b"data: ")]
    answer_starts = data[1] if len(data) > 1 else data[0]  # after the role chunk
    assert len([t for t in comments if t < answer_starts]) >= 3, r.lines
    events = r.events()
    (final,) = assert_well_ended(events)
    assert final["finish_reason"] == "stop"
    ds = deltas(events)
    assert not any(d == {} for d in ds), ds
    assert not any(d.get("reasoning") or d.get("reasoning_content") for d in ds), ds
    assert "".join(d.get("content") or "" for d in ds) == ANSWER


#: an erroneous request per kind of 4xx/5xx answer: (key, body changes, status)
ERRORS = {
    "bad-key": ("sk-wrong", {}, 401),
    "unknown-model": (API_KEY, {"model": "no-such-model"}, 404),
    "bad-body": (API_KEY, {"messages": "not a list", "prompt": 3.5}, 400),
    "upstream-500": (API_KEY, {"sim": {"status": 500}}, 500),
    "no-first-token": (
        API_KEY,
        {"model": "r1-slow-start", "stream": True, "sim": {"first_token_delay": 20}},
        504,
    ),
}


@pytest.mark.parametrize("path", ["/chat/completions", "/completions"])
@pytest.mark.parametrize("case", list(ERRORS))
def test_curl_errors_carry_the_profile_version(
    cgateway: GatewayServer, path: str, case: str
) -> None:
    """Item 9: ``x-gateway-profile-version`` on 4xx/5xx answers of the completion routes."""
    key, changes, status = ERRORS[case]
    body: dict[str, Any] = {"model": DEMO, "max_tokens": 4}
    if path == "/chat/completions":
        body["messages"] = [{"role": "user", "content": "x"}]
    else:
        body["prompt"] = "x"
    body.update({k: v for k, v in changes.items() if k in body or k in ("sim", "model", "stream")})
    r = curl(cgateway.base_url + path, body, key=key)
    assert r.status == status, r.body[:300]
    assert r.json()["error"]["message"]
    version = r.headers.get("x-gateway-profile-version")
    assert version, r.headers
    good = curl(cgateway.base_url + "/chat/completions", {**chat(), "stream": False})
    assert good.headers["x-gateway-profile-version"] == version


@pytest.mark.parametrize("path", ["/chat/completions", "/completions"])
def test_curl_wrong_method_carries_the_profile_version(cgateway: GatewayServer, path: str) -> None:
    r = curl(cgateway.base_url + path, method="GET")
    assert r.status == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert r.headers.get("x-gateway-profile-version"), r.headers


def test_curl_models_retrieve(cgateway: GatewayServer) -> None:
    """Item 10: ``GET /v1/models/{id}``, and an OpenAI 404 for an unknown one."""
    r = curl(f"{cgateway.base_url}/models/{DEMO}")
    assert r.status == 200 and r.json()["id"] == DEMO and r.json()["object"] == "model"
    missing = curl(f"{cgateway.base_url}/models/no-such-model")
    assert missing.status == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_curl_cors_preflight(cgateway: GatewayServer) -> None:
    """Item 10: a browser app on an allowed origin may call the API; others get no CORS
    headers (the browser then refuses)."""
    pre = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    ok = curl(
        cgateway.base_url + "/chat/completions",
        key=None,
        method="OPTIONS",
        headers={"Origin": ALLOWED_ORIGIN, **pre},
    )
    assert ok.status == 200, ok.body
    assert ok.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    other = curl(
        cgateway.base_url + "/chat/completions",
        key=None,
        method="OPTIONS",
        headers={"Origin": "http://evil.example", **pre},
    )
    assert "access-control-allow-origin" not in other.headers
    stream = curl(
        cgateway.base_url + "/chat/completions", chat(), headers={"Origin": ALLOWED_ORIGIN}
    )
    assert stream.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert_well_ended(stream.events())


def test_curl_api_key_header(cgateway: GatewayServer) -> None:
    """Item 10: the key in ``api-key`` instead of ``Authorization``; both at once is refused."""
    r = curl(
        cgateway.base_url + "/chat/completions", chat(), key=None, headers={"api-key": API_KEY}
    )
    assert r.status == 200
    assert_well_ended(r.events())
    both = curl(cgateway.base_url + "/chat/completions", chat(), headers={"api-key": API_KEY})
    assert both.status == 400, both.body
