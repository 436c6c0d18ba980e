"""Every metric, driven by real traffic and read back from /metrics; logs; 2 workers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import (
    GatewayServer,
    SimProcess,
    free_port,
    run_gateway,
    run_gateway_process,
    scrape,
    sse_events,
    value,
    wait_for,
)

USER = [{"role": "user", "content": "TOPSECRET-PROMPT what is 2+2"}]


@pytest.fixture
def mgw(tmp_path: Path, sim: SimProcess) -> Iterator[tuple[GatewayServer, Path]]:
    dead = f"http://127.0.0.1:{free_port()}"
    path = tmp_path / "p.yaml"
    path.write_text(f"""
health: {{interval: 0.5, timeout: 0.5, eject_after: 1, cooloff: 30}}
models:
  r1:
    upstream_model: sim-r1
    backends: [{{url: "{sim.url}", name: main}}]
    stop_token_ids: [151643]
    stop_text: ["<|im_end|>"]
    reasoning: {{starts_in_reasoning: true}}
    timeouts: {{idle: 0.4, first_token: 0.4}}
  pair:
    upstream_model: sim-r1
    backends: [{{url: "{dead}", name: gone}}, {{url: "{sim.url}", name: main}}]
""")
    with run_gateway(config=path, admin_token="t") as gw:
        yield gw, path


def chat(gw: GatewayServer, **body: object) -> httpx.Response:
    return httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "r1", "messages": USER, **body},
        timeout=20,
    )


def test_request_latency_token_and_finish_metrics(mgw: tuple[GatewayServer, Path]) -> None:
    gw, _ = mgw
    assert chat(gw, stream=True, sim={"token_delay": 0.005}).status_code == 200
    assert chat(gw).status_code == 200
    chat(gw, stream=True, sim={"finish": "abort"})
    assert chat(gw, model="nope").status_code == 404
    m = scrape(gw.url)
    assert (
        value(m, "gateway_requests_total", model="r1", backend="main", stream="true", code="200")
        == 2
    )
    assert value(m, "gateway_requests_total", model="r1", stream="false", code="200") == 1
    assert value(m, "gateway_requests_total", model="unknown", code="404") == 1
    assert value(m, "gateway_request_duration_seconds_count", model="r1") == 3
    ttft = value(m, "gateway_time_to_first_token_seconds_sum", model="r1")
    ttfc = value(m, "gateway_time_to_first_content_token_seconds_sum", model="r1")
    assert value(m, "gateway_time_to_first_token_seconds_count", model="r1") == 2
    assert 0 < ttft < ttfc  # reasoning comes before the answer
    assert value(m, "gateway_inter_chunk_seconds_count", model="r1") > 20
    assert value(m, "gateway_tokens_total", model="r1", kind="completion") == 3 * 26
    assert value(m, "gateway_tokens_total", model="r1", kind="prompt") > 0
    assert (
        value(m, "gateway_finish_reason_total", model="r1", upstream="stop", normalized="stop") == 2
    )
    assert (
        value(m, "gateway_finish_reason_total", model="r1", upstream="abort", normalized="error")
        == 1
    )
    assert value(m, "gateway_overhead_seconds_count") == 4  # every request, the 404 too
    assert value(m, "gateway_in_flight_requests", model="r1") == 0


def test_termination_stop_text_and_in_flight(mgw: tuple[GatewayServer, Path]) -> None:
    gw, _ = mgw
    chat(gw, stream=True, sim={"stall_after": 3, "stall_for": 5})  # idle timeout (0.4 s)
    chat(gw, stream=True, sim={"first_token_delay": 5})  # first-token timeout
    chat(gw, stream=True, sim={"drop_after": 4})  # upstream error
    chat(gw, stream=True, sim={"tokens": [[1, "ok"], [2, "<|im_end|>"], [3, "leak"]]})
    body = {
        "model": "r1",
        "messages": USER,
        "stream": True,
        "sim": {"stall_after": 2, "stall_for": 5},
    }
    with httpx.stream("POST", gw.base_url + "/chat/completions", json=body, timeout=10) as r:
        it = r.iter_raw()  # kept: dropping the iterator would close the response
        next(it)
        assert value(scrape(gw.url), "gateway_in_flight_requests", model="r1") == 1
    wait_for(
        lambda: (
            value(scrape(gw.url), "gateway_stream_terminations_total", cause="client_disconnect")
            == 1
        ),
        "the disconnect",
    )
    m = scrape(gw.url)
    for cause in ("idle_timeout", "first_token_timeout", "upstream_error", "client_disconnect"):
        assert value(m, "gateway_stream_terminations_total", model="r1", cause=cause) == 1, cause
    assert value(m, "gateway_stop_text_hits_total", model="r1") == 1
    assert value(m, "gateway_in_flight_requests", model="r1") == 0


def test_backend_up_retries_reloads_and_profile_info(mgw: tuple[GatewayServer, Path]) -> None:
    gw, path = mgw
    wait_for(
        lambda: (
            value(scrape(gw.url), "gateway_backend_up", model="pair", backend="gone") == 0
            and value(scrape(gw.url), "gateway_backend_up", model="pair", backend="main") == 1
        ),
        "health probes",
    )
    version = httpx.get(gw.url + "/health").json()["profile_version"]
    m = scrape(gw.url)
    assert value(m, "gateway_profile_info", version=version) == 1
    # Probes off and no cool-off: the dead backend is tried again, and each try fails over.
    path.write_text(
        path.read_text()
        .replace("interval: 0.5", "interval: 0")
        .replace("cooloff: 30", "cooloff: 0")
    )
    wait_for(
        lambda: value(scrape(gw.url), "gateway_profile_reloads_total", result="applied") == 1,
        "the reload",
    )
    # with probes off, the probe loop's next pass forgets their last verdict on `gone`
    wait_for(
        lambda: value(scrape(gw.url), "gateway_backend_up", model="pair", backend="gone") == 1,
        "probes off",
    )
    path.write_text("models: [broken")
    wait_for(
        lambda: value(scrape(gw.url), "gateway_profile_reloads_total", result="refused") == 1,
        "the refusal",
    )
    for _ in range(6):
        assert chat(gw, model="pair").status_code == 200
    assert value(scrape(gw.url), "gateway_upstream_retries_total", model="pair") >= 1


def test_access_log_has_ids_and_no_prompt(
    mgw: tuple[GatewayServer, Path], caplog: pytest.LogCaptureFixture
) -> None:
    gw, _ = mgw
    caplog.set_level(logging.INFO, logger="gateway.access")
    r = httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "r1", "messages": USER, "stream": True},
        headers={"x-request-id": "req-123", "authorization": "Bearer sk-client-secret"},
    )
    assert r.headers["x-request-id"] == "req-123"
    sse_events(r.content)
    bad = httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "r1", "messages": USER},
        headers={"x-request-id": "bad id!" * 40},
    )
    assert len(bad.headers["x-request-id"]) == 32  # replaced by a generated one
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "gateway.access"]
    line = next(ln for ln in lines if "request_id=req-123" in ln)
    assert "model=r1" in line and "backend=main" in line and "status=200" in line
    assert "finish_reason=['stop']" in line and "ttft_s=" in line and "completion_tokens=26" in line
    assert "TOPSECRET" not in caplog.text and "sk-client-secret" not in caplog.text


def test_metrics_are_right_with_two_workers(tmp_path: Path, sim: SimProcess) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(f"""
models:
  r1: {{upstream_model: sim-r1, backends: [{{url: "{sim.url}"}}]}}
""")
    metrics_dir = tmp_path / "tmp" / "prometheus"  # not made here: the gateway makes it, as
    # it must in a fresh emptyDir (deploy/k8s: PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus)
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with run_gateway_process(path, "--workers", "2", env=env) as (url, _):
        for i in range(30):  # a new connection each time: the kernel spreads them
            with httpx.Client() as c:
                c.post(
                    url + "/v1/chat/completions",
                    json={"model": "r1", "messages": USER, "stream": i % 2 == 0},
                )
        pids = {f.name.rsplit("_", 1)[-1] for f in metrics_dir.glob("counter_*.db")}
        assert len(pids) == 2, f"one worker served everything: {pids}"
        for _ in range(4):  # whichever worker answers, the totals are merged
            m = scrape(url)
            assert value(m, "gateway_requests_total", model="r1", code="200") == 30
            assert value(m, "gateway_request_duration_seconds_count", model="r1") == 30
            assert value(m, "gateway_in_flight_requests", model="r1") == 0
