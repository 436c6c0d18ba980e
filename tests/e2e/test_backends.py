"""Several simulated vLLM backends per model: balancing, health, failover, affinity."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers import (
    SimProcess,
    assert_well_ended,
    free_port,
    run_gateway,
    run_sim,
    sse_events,
    wait_for,
)

USER = [{"role": "user", "content": "hi"}]
HEALTH = "health: {interval: 0.5, timeout: 0.5, eject_after: 1, cooloff: 0.5}"
NO_PROBES = "health: {interval: 0, eject_after: 1, cooloff: 5}"


def backends_yaml(urls: list[str], weights: list[int] | None = None) -> str:
    weights = weights or [1] * len(urls)
    return (
        "["
        + ", ".join(
            f'{{url: "{u}", name: b{i}, weight: {w}}}'
            for i, (u, w) in enumerate(zip(urls, weights, strict=True))
        )
        + "]"
    )


@pytest.fixture
def three_sims() -> Iterator[list[SimProcess]]:
    with run_sim(["sim-r1"]) as a, run_sim(["sim-r1"]) as b, run_sim(["sim-r1"]) as c:
        yield [a, b, c]


def post(url: str, body: dict[str, Any], **kw: Any) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=20, **kw)


def test_weighted_balancing_distribution(three_sims: list[SimProcess]) -> None:
    profile = f"""{NO_PROBES}  # balancing only: a slow probe must not skew it
models:
  m: {{upstream_model: sim-r1, backends: {backends_yaml([s.url for s in three_sims], [1, 1, 2])}}}
"""
    with run_gateway(profile) as gw:
        served = collections.Counter(
            post(gw.url, {"model": "m", "messages": USER}).headers["x-gateway-backend"]
            for _ in range(40)
        )
    assert served == {"b0": 10, "b1": 10, "b2": 20}


def test_least_outstanding_prefers_the_fast_backend() -> None:
    with run_sim(["sim-r1"]) as fast, run_sim(["sim-r1"], "--token-delay", "0.05") as slow:
        profile = f"""{HEALTH}
models:
  m: {{upstream_model: sim-r1, backends: {backends_yaml([fast.url, slow.url])}}}
"""
        with run_gateway(profile) as gw, concurrent.futures.ThreadPoolExecutor(8) as pool:
            body = {"model": "m", "messages": USER, "max_tokens": 10}
            served = collections.Counter(
                r.headers["x-gateway-backend"]
                for r in pool.map(lambda _: post(gw.url, body), range(48))
            )
    assert served["b0"] > 2 * served["b1"] > 0


def test_backend_killed_mid_run_loses_nothing_not_yet_streaming() -> None:
    with run_sim(["sim-r1"]) as keep, contextlib.ExitStack() as victim_stack:
        victim = victim_stack.enter_context(run_sim(["sim-r1"], "--token-delay", "0.01"))
        profile = f"""{HEALTH}
models:
  m: {{upstream_model: sim-r1, backends: {backends_yaml([keep.url, victim.url])}}}
"""
        with run_gateway(profile) as gw, concurrent.futures.ThreadPoolExecutor(6) as pool:

            def one(i: int) -> tuple[int, Any]:
                stream = i % 2 == 0
                r = post(gw.url, {"model": "m", "messages": USER, "stream": stream})
                return r.status_code, sse_events(r.content) if stream else r.json()

            futures = [pool.submit(one, i) for i in range(60)]
            time.sleep(0.3)
            victim_stack.close()  # kill it while requests flow
            results = [f.result() for f in futures]
    assert all(status == 200 for status, _ in results)
    for i, (_, out) in enumerate(results):
        if i % 2 == 0:
            assert_well_ended(out)  # a stream cut mid-way still ends by the contract
        else:
            assert out["choices"][0]["finish_reason"] == "stop"  # failed over, complete


def test_health_marks_down_and_brings_back() -> None:
    port = free_port()
    with run_sim(["sim-r1"]) as live:
        profile = f"""{HEALTH}
models:
  m: {{upstream_model: sim-r1, backends: {backends_yaml([live.url, f"http://127.0.0.1:{port}"])}}}
"""
        with run_gateway(profile) as gw:

            def state(name: str) -> str:
                return httpx.get(gw.url + "/health").json()["backends"][f"m/{name}"]["state"]

            wait_for(lambda: state("b1") == "down", "the probe to mark b1 down")
            assert httpx.get(gw.url + "/ready").status_code == 200  # b0 still serves m
            for _ in range(6):
                assert (
                    post(gw.url, {"model": "m", "messages": USER}).headers["x-gateway-backend"]
                    == "b0"
                )
            with run_sim(["sim-r1"], "--port", str(port)):
                wait_for(lambda: state("b1") == "up", "b1 to come back")
                served = {
                    post(gw.url, {"model": "m", "messages": USER}).headers["x-gateway-backend"]
                    for _ in range(6)
                }
                assert served == {"b0", "b1"}
            live_proc = live.proc
            live_proc.terminate()
            live_proc.wait(timeout=10)
            wait_for(lambda: httpx.get(gw.url + "/ready").status_code == 503, "not ready")
            assert httpx.get(gw.url + "/ready").json()["models_without_backend"] == ["m"]


def test_passive_ejection_without_active_checks() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with run_sim(["sim-r1"]) as live:
        profile = f"""health: {{interval: 0, eject_after: 2, cooloff: 60}}
models:
  m: {{upstream_model: sim-r1, backends: {backends_yaml([dead, live.url])}}}
"""
        with run_gateway(profile) as gw:
            for _ in range(6):
                r = post(gw.url, {"model": "m", "messages": USER})
                assert r.status_code == 200 and r.headers["x-gateway-backend"] == "b1"
            info = httpx.get(gw.url + "/health").json()["backends"]["m/b0"]
            assert info["state"] == "down" and info["consecutive_failures"] == 2  # then left alone


def test_retries_are_bounded(three_sims: list[SimProcess]) -> None:
    for s in three_sims:
        s.reset()
    profile = f"""{HEALTH.replace("interval: 0.5", "interval: 0")}
models:
  m: {{upstream_model: sim-r1, retries: 1, backends: {backends_yaml([s.url for s in three_sims])}}}
"""
    with run_gateway(profile) as gw:
        r = post(gw.url, {"model": "m", "messages": USER, "sim": {"status": 503}})
    assert r.status_code == 503
    assert sum(len(s.requests()) for s in three_sims) == 2  # 1 + retries


def test_first_token_timeouts_fail_over_within_the_deadline(three_sims: list[SimProcess]) -> None:
    profile = f"""{HEALTH.replace("interval: 0.5", "interval: 0")}
models:
  m:
    upstream_model: sim-r1
    retries: 5
    timeouts: {{first_token: 0.4, total: 1.0}}
    backends: {backends_yaml([s.url for s in three_sims])}
"""
    with run_gateway(profile) as gw:
        t0 = time.monotonic()
        r = post(
            gw.url,
            {"model": "m", "messages": USER, "stream": True, "sim": {"first_token_delay": 5}},
        )
        elapsed = time.monotonic() - t0
    # two attempts of 0.4 s, then the third runs into the 1 s total deadline: nothing was
    # sent yet, so the client gets an HTTP error it understands
    assert r.status_code == 504 and r.json()["error"]["code"] == "total_timeout"
    assert elapsed < 1.6  # the total deadline bounds all attempts together
    wait_for(lambda: sum(s.stats()["cancelled"] for s in three_sims) == 3, "3 closed attempts")


def test_stream_fails_over_before_first_byte(sim: SimProcess) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    profile = f"""{HEALTH.replace("interval: 0.5", "interval: 0")}
models:
  m: {{upstream_model: sim-r1, backends: {backends_yaml([dead, sim.url])}}}
"""
    with run_gateway(profile) as gw:
        for _ in range(4):
            r = post(gw.url, {"model": "m", "messages": USER, "stream": True})
            assert r.status_code == 200 and r.headers["x-gateway-backend"] == "b1"
            (final,) = assert_well_ended(sse_events(r.content))
            assert final["finish_reason"] == "stop"


def test_affinity_sticks_and_falls_back(three_sims: list[SimProcess]) -> None:
    urls = backends_yaml([s.url for s in three_sims])
    profile = f"""{NO_PROBES}  # passive ejection handles the dead owner
models:
  m: {{upstream_model: sim-r1, affinity: prefix, backends: {urls}}}
  h: {{upstream_model: sim-r1, affinity: header, backends: {urls}}}
"""
    with run_gateway(profile) as gw:

        def conversation(n: int, turns: int) -> list[dict[str, str]]:
            msgs = [
                {"role": "system", "content": f"persona {n}"},
                {"role": "user", "content": "start"},
            ]
            for t in range(turns):
                msgs += [
                    {"role": "assistant", "content": f"a{t}"},
                    {"role": "user", "content": f"u{t}"},
                ]
            return msgs

        for n in range(6):
            owners = {
                post(gw.url, {"model": "m", "messages": conversation(n, t)}).headers[
                    "x-gateway-backend"
                ]
                for t in range(4)
            }
            assert len(owners) == 1, f"conversation {n} moved between {owners}"
        spread = {
            post(gw.url, {"model": "m", "messages": conversation(n, 0)}).headers[
                "x-gateway-backend"
            ]
            for n in range(12)
        }
        assert len(spread) > 1
        sticky = {
            post(
                gw.url,
                {"model": "h", "messages": [{"role": "user", "content": str(i)}]},
                headers={"x-session-id": "abc"},
            ).headers["x-gateway-backend"]
            for i in range(5)
        }
        assert len(sticky) == 1
        owner = sticky.pop()
        victim = three_sims[int(owner[1:])]
        victim.proc.terminate()
        victim.proc.wait(timeout=10)
        r = post(gw.url, {"model": "h", "messages": USER}, headers={"x-session-id": "abc"})
        assert r.status_code == 200 and r.headers["x-gateway-backend"] != owner


def test_backend_api_key_sent_upstream_never_shown(
    monkeypatch: pytest.MonkeyPatch, sim: SimProcess
) -> None:
    monkeypatch.setenv("TEST_VLLM_KEY", "sk-backend-secret")
    sim.reset()
    profile = f"""
models:
  m: {{upstream_model: sim-r1, backends: [{{url: "{sim.url}", api_key_env: TEST_VLLM_KEY}}]}}
"""
    with run_gateway(profile) as gw:
        post(
            gw.url, {"model": "m", "messages": USER}, headers={"authorization": "Bearer client-key"}
        )
        assert sim.stats()["auth"] == ["Bearer sk-backend-secret"]  # never the client's key
        for path in ("/health", "/v1/models"):
            assert "sk-backend-secret" not in httpx.get(gw.url + path).text
    monkeypatch.delenv("TEST_VLLM_KEY")
    from gateway.errors import ProfileError
    from gateway.profiles import parse_profiles

    with pytest.raises(ProfileError) as exc:
        parse_profiles(profile)
    assert exc.value.errors == [
        "models.m.backends.0.api_key_env: environment variable TEST_VLLM_KEY is not set"
    ]
    assert os.environ.get("TEST_VLLM_KEY") is None
