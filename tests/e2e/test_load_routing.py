"""Routing by each vLLM's own load (#17 part 2): simulated backends report different loads on
``/metrics`` (``POST /sim/load``); one stops answering its metrics."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers import GatewayServer, SimProcess, run_gateway, run_sim, scrape, value, wait_for

USER = [{"role": "user", "content": "hi"}]
ADMIN = "admin-token"


@pytest.fixture
def two_sims() -> Iterator[list[SimProcess]]:
    with run_sim(["sim-r1"]) as a, run_sim(["sim-r1"]) as b:
        yield [a, b]


def profile(sims: list[SimProcess], affinity: str = "none") -> str:
    backends = ", ".join(f'{{url: "{s.url}", name: b{i}}}' for i, s in enumerate(sims))
    return f"""
health: {{interval: 0}}
routing: {{scrape_interval: 0.5, scrape_timeout: 0.3, stale_after: 1.5}}
models:
  m:
    upstream_model: sim-r1
    backends: [{backends}]
    affinity: {affinity}
"""


def set_load(sim: SimProcess, **load: Any) -> None:
    r = sim.client.post(sim.url + "/sim/load", json=load)
    assert r.status_code == 200, r.text


def backends_state(gw: GatewayServer) -> dict[str, Any]:
    r = httpx.get(gw.url + "/admin/profiles", headers={"authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200, r.text
    return r.json()["backends"]  # type: ignore[no-any-return]


def waiting_seen(gw: GatewayServer, backend: str, waiting: float) -> bool:
    load = backends_state(gw)[f"m/{backend}"]["load"]
    return isinstance(load, dict) and load["waiting"] == waiting and not load["stale"]


def ask(gw: GatewayServer, **headers: str) -> str:
    r = httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "m", "messages": USER, "max_tokens": 4},
        headers=headers,
        timeout=20,
    )
    assert r.status_code == 200, r.text
    return r.headers["x-gateway-backend"]


def test_requests_go_to_the_backend_vllm_reports_least_loaded(
    two_sims: list[SimProcess], caplog: pytest.LogCaptureFixture
) -> None:
    busy, idle = two_sims
    set_load(busy, running=12, waiting=6, kv=0.92)
    with run_gateway(profile(two_sims), admin_token=ADMIN) as gw:
        wait_for(lambda: waiting_seen(gw, "b0", 6), "b0's scraped load")
        wait_for(lambda: waiting_seen(gw, "b1", 0), "b1's scraped load")
        state = backends_state(gw)
        assert state["m/b0"]["load"]["running"] == 12
        assert state["m/b0"]["load"]["kv_cache_usage"] == 0.92
        assert state["m/b0"]["load"]["saturated"] is True
        assert state["m/b0"]["max_model_len"] == 131072  # learned from /v1/models
        with caplog.at_level(logging.INFO, logger="gateway.access"):
            served = Counter(ask(gw) for _ in range(8))
        assert served == {"b1": 8}
        assert caplog.text.count("route=load") == 8, caplog.text
        samples = scrape(gw.url)
        assert value(samples, "gateway_routing_decisions_total", backend="b1", reason="load") == 8
        assert value(samples, "gateway_backend_load", backend="b0", kind="waiting") == 6
        assert value(samples, "gateway_backend_load", backend="b0", kind="kv_cache_usage") == 0.92
        assert value(samples, "gateway_backend_max_model_len", backend="b1") == 131072
        # the load moves: so do the requests
        set_load(busy, running=None, waiting=None, kv=None)
        set_load(idle, running=30, waiting=9, kv=0.99)
        wait_for(lambda: waiting_seen(gw, "b1", 9), "b1's new load")
        assert Counter(ask(gw) for _ in range(4)) == {"b0": 4}


def test_a_backend_that_stops_answering_its_metrics_falls_back_to_least_outstanding(
    two_sims: list[SimProcess],
) -> None:
    quiet, other = two_sims
    with run_gateway(profile(two_sims), admin_token=ADMIN) as gw:
        wait_for(lambda: waiting_seen(gw, "b0", 0), "b0's scraped load")
        wait_for(lambda: waiting_seen(gw, "b1", 0), "b1's scraped load")
        set_load(other, waiting=5)
        wait_for(lambda: waiting_seen(gw, "b1", 5), "b1's queue")
        set_load(quiet, metrics_delay=5)  # far past the 0.3 s scrape timeout
        assert Counter(ask(gw) for _ in range(4)) == {"b0": 4}  # b0's load is still fresh

        def stale() -> bool:
            load = backends_state(gw)["m/b0"]
            return bool(load.get("load_error")) and load["load"]["stale"]

        wait_for(stale, "b0's load to go stale", timeout=10)
        assert "timeout" in backends_state(gw)["m/b0"]["load_error"]
        served = Counter(ask(gw) for _ in range(6))  # sequential: least outstanding ties
        assert served == {"b0": 3, "b1": 3}
        samples = scrape(gw.url)
        assert value(samples, "gateway_routing_decisions_total", reason="stale_metrics") == 6
        # metrics that fail outright or drop the connection count the same
        set_load(quiet, metrics_delay=0, metrics_status=500)
        wait_for(lambda: "500" in str(backends_state(gw)["m/b0"].get("load_error")), "a 500")
        set_load(quiet, metrics_status=None, metrics_drop=True)
        wait_for(
            lambda: "500" not in str(backends_state(gw)["m/b0"].get("load_error", "500")),
            "a dropped connection",
        )
        set_load(quiet, metrics_drop=False)
        wait_for(lambda: waiting_seen(gw, "b0", 0), "b0's metrics back")
        assert Counter(ask(gw) for _ in range(3)) == {"b0": 3}  # b1 still has its queue


def test_affinity_holds_until_its_backend_is_saturated(two_sims: list[SimProcess]) -> None:
    with run_gateway(profile(two_sims, affinity="header"), admin_token=ADMIN) as gw:
        wait_for(lambda: waiting_seen(gw, "b0", 0), "b0's scraped load")
        wait_for(lambda: waiting_seen(gw, "b1", 0), "b1's scraped load")
        owner = ask(gw, **{"x-session-id": "conversation-7"})
        sims = dict(zip(["b0", "b1"], two_sims, strict=True))
        other = "b1" if owner == "b0" else "b0"
        set_load(sims[owner], running=20, waiting=2, kv=0.5)  # busy, below the thresholds
        wait_for(lambda: waiting_seen(gw, owner, 2), "the owner's load")
        assert {ask(gw, **{"x-session-id": "conversation-7"}) for _ in range(3)} == {owner}
        set_load(sims[owner], waiting=4)  # saturation.waiting default: 4
        wait_for(lambda: waiting_seen(gw, owner, 4), "the owner's queue")
        assert {ask(gw, **{"x-session-id": "conversation-7"}) for _ in range(3)} == {other}
        samples = scrape(gw.url)
        assert value(samples, "gateway_routing_decisions_total", reason="affinity") == 4
        assert value(samples, "gateway_routing_decisions_total", reason="affinity_saturated") == 3
        set_load(sims[owner], waiting=None, running=None, kv=None)
        wait_for(lambda: waiting_seen(gw, owner, 0), "the owner's queue drained")
        assert ask(gw, **{"x-session-id": "conversation-7"}) == owner


def test_scraping_off_per_backend_and_gateway_wide(two_sims: list[SimProcess]) -> None:
    backends = ", ".join(
        f'{{url: "{s.url}", name: b{i}, scrape_metrics: {str(i == 1).lower()}}}'
        for i, s in enumerate(two_sims)
    )
    text = f"""
health: {{interval: 0}}
routing: {{scrape_interval: 0.5}}
models:
  m: {{upstream_model: sim-r1, backends: [{backends}]}}
"""
    with run_gateway(text, admin_token=ADMIN) as gw:
        wait_for(lambda: waiting_seen(gw, "b1", 0), "b1's scraped load")
        assert backends_state(gw)["m/b0"]["load"] == "not scraped"
        ask(gw)
        assert value(scrape(gw.url), "gateway_routing_decisions_total", reason="stale_metrics") == 1
    off = text.replace("scrape_interval: 0.5", "scrape_interval: 0")
    with run_gateway(off, admin_token=ADMIN) as gw:
        ask(gw)
        assert backends_state(gw)["m/b1"]["load"] == "not scraped"
        samples = scrape(gw.url)
        assert value(samples, "gateway_routing_decisions_total", reason="least_outstanding") == 1
