"""Hostile profile files under a running gateway (issue #12): each is refused (counted,
``last_error`` set, 422 on ``/admin/reload``) in bounded memory and CPU, the old profiles
keep serving, and the file watcher lives on to apply the next good file without SIGHUP."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import psutil
import pytest

from tests.helpers import (
    GatewayServer,
    SimProcess,
    run_gateway,
    run_gateway_process,
    scrape,
    value,
    wait_for,
)
from tests.test_profile_bounds import alias_bomb

TOKEN = "admin-secret"
AUTH = {"authorization": f"Bearer {TOKEN}"}
USER = [{"role": "user", "content": "hi"}]


def good(sim_url: str, stop: int) -> str:
    return f"""
models:
  r1:
    upstream_model: sim-r1
    backends: [{{url: "{sim_url}"}}]
    stop_token_ids: [{stop}]
"""


def bomb_for(sim_url: str, levels: int) -> str:
    """A valid profile but for ``10**levels`` leaves under ``defaults`` (sent every request)."""
    return (
        alias_bomb(levels)
        .replace('"http://127.0.0.1:8000"', f'"{sim_url}"')
        .replace("models:\n  m:", "models:\n  r1:\n    upstream_model: sim-r1")
    )


HOSTILE = {
    "3000 [": "models: " + "[" * 3000 + "]" * 3000,
    "10^7 alias bomb": None,  # filled in with the sim's URL
    "10^9 alias bomb": None,
    "5000-digit int": "models: {r1: {backends: [{url: 'http://h'}], defaults: {seed: "
    + "9" * 5000
    + "}}}",
    "300 nested lists in defaults": "models: {r1: {backends: [{url: 'http://h'}], defaults: "
    "{x: " + "[" * 300 + "]" * 300 + "}}}",
    "probe interval 1e-6": "health: {interval: 0.000001}\n"
    "models: {r1: {backends: [{url: 'http://h'}]}}",
    "credentials in a URL": "models: {r1: {backends: [{url: 'http://u:pw@h'}]}}",
    "not a regular file": None,
}
EXPECTED = {
    "3000 [": "nested deeper than 64 levels",
    "10^7 alias bomb": "aliases expand to more than 100000 YAML nodes",
    "10^9 alias bomb": "aliases expand to more than 100000 YAML nodes",
    "5000-digit int": "invalid YAML value",
    "300 nested lists in defaults": "nested deeper than 64 levels",
    "probe interval 1e-6": "health.interval: must be 0 (off) or >= 0.5",
    "credentials in a URL": "credentials in a backend URL are not allowed",
    "not a regular file": "not a regular file",
}


def admin(gw_url: str) -> dict[str, object]:
    return httpx.get(gw_url + "/admin/profiles", headers=AUTH, timeout=10).json()  # type: ignore[no-any-return]


def write(path: Path, name: str, sim_url: str) -> None:
    if path.is_dir():
        path.rmdir()
    if name == "not a regular file":
        path.unlink()
        path.mkdir()
        return
    text = HOSTILE[name]
    if text is None:
        text = bomb_for(sim_url, 7 if "10^7" in name else 9)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.rename(path)  # one change event, never a half-written file


@pytest.fixture
def watched(tmp_path: Path, sim: SimProcess) -> Iterator[tuple[GatewayServer, Path]]:
    path = tmp_path / "model_profiles.yaml"
    path.write_text(good(sim.url, 151643))
    with run_gateway(config=path, admin_token=TOKEN) as gw:
        yield gw, path


def test_every_hostile_file_is_refused_and_the_watcher_survives(
    watched: tuple[GatewayServer, Path], fresh_sim: SimProcess
) -> None:
    gw, path = watched
    served = admin(gw.url)["version"]
    for name in HOSTILE:
        write(path, name, fresh_sim.url)
        wait_for(
            lambda name=name: EXPECTED[name] in " ".join(admin(gw.url)["last_error"] or []),  # type: ignore[arg-type]
            f"the watcher to refuse {name}",
        )
        assert admin(gw.url)["version"] == served
        r = httpx.post(gw.url + "/admin/reload", headers=AUTH, timeout=10)
        assert r.status_code == 422, (name, r.text)
        err = r.json()["error"]
        assert err["code"] == "profile_invalid" and err["serving_version"] == served
        assert EXPECTED[name] in err["message"] and "Traceback" not in r.text
        # still serving the old profile, unchanged
        ok = httpx.post(gw.base_url + "/chat/completions", json={"model": "r1", "messages": USER})
        assert ok.status_code == 200 and fresh_sim.last_request()["stop_token_ids"] == [151643]
        assert len(orjson.dumps(fresh_sim.last_request())) < 10_000  # no bomb went upstream
    refused = admin(gw.url)["reloads"]["refused"]
    metric = value(scrape(gw.url), "gateway_profile_reloads_total", result="refused")
    assert metric == refused >= 2 * len(HOSTILE)
    # the watcher is alive: a good file is applied without SIGHUP or /admin/reload
    path.rmdir()
    path.write_text(good(fresh_sim.url, 42))
    wait_for(lambda: admin(gw.url)["version"] != served, "the good file to be applied")
    assert admin(gw.url)["last_error"] is None
    httpx.post(gw.base_url + "/chat/completions", json={"model": "r1", "messages": USER})
    assert fresh_sim.last_request()["stop_token_ids"] == [42]


def test_alias_bombs_in_a_gateway_process_cost_no_memory_and_it_still_stops(
    tmp_path: Path, sim: SimProcess
) -> None:
    path = tmp_path / "model_profiles.yaml"
    path.write_text(good(sim.url, 151643))
    env = {"GATEWAY_ADMIN_TOKEN": TOKEN, "GATEWAY_WATCH": "1"}
    with run_gateway_process(path, env=env) as (url, proc):
        ps = psutil.Process(proc.pid)
        for _ in range(3):  # warm up: first requests and reloads import and allocate
            httpx.post(url + "/v1/chat/completions", json={"model": "r1", "messages": USER})
            httpx.post(url + "/admin/reload", headers=AUTH, timeout=10)
        rss0, cpu0 = ps.memory_info().rss, sum(ps.cpu_times()[:2])
        for levels in (7, 9):
            path.write_text(bomb_for(sim.url, levels))
            started = time.monotonic()
            r = httpx.post(url + "/admin/reload", headers=AUTH, timeout=30)
            assert r.status_code == 422 and "alias bomb" in r.json()["error"]["message"]
            assert time.monotonic() - started < 10
        cpu = sum(ps.cpu_times()[:2]) - cpu0
        grown = (ps.memory_info().rss - rss0) / 2**20
        print(f"two alias bombs refused: RSS {grown:+.1f} MiB, CPU {cpu:.2f} s")
        assert grown < 50 and cpu < 5  # 10^9 leaves applied would be GiBs and minutes
        ok = httpx.post(url + "/v1/chat/completions", json={"model": "r1", "messages": USER})
        assert ok.status_code == 200
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)  # not wedged: it stops
