"""Profiles change under a running gateway: file watch, ConfigMap swap, SIGHUP, admin route."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import (
    GatewayServer,
    SimProcess,
    run_gateway,
    run_gateway_process,
    sse_events,
    wait_for,
)
from tests.tokenizer_fixtures import build_tokenizer

TOKEN = "admin-secret"
USER = [{"role": "user", "content": "hi"}]


def profile(sim_url: str, stop_ids: list[int], extra: str = "") -> str:
    return f"""
models:
  r1:
    upstream_model: sim-r1
    backends: [{{url: "{sim_url}"}}]
    stop_token_ids: {stop_ids}
    variants:
      think-only: {{stop_token_ids: [151649, 151643]}}
{extra}"""


def version_of(gw_url: str) -> str:
    return httpx.get(gw_url + "/health", timeout=5).json()["profile_version"]  # type: ignore[no-any-return]


@pytest.fixture
def watched(tmp_path: Path, sim: SimProcess) -> Iterator[tuple[GatewayServer, Path]]:
    path = tmp_path / "model_profiles.yaml"
    path.write_text(profile(sim.url, [151643]))
    with run_gateway(config=path, admin_token=TOKEN) as gw:
        yield gw, path


def test_file_change_applies_to_new_requests_not_to_streams_in_flight(
    watched: tuple[GatewayServer, Path], fresh_sim: SimProcess
) -> None:
    gw, path = watched
    old = version_of(gw.url)
    body = {"model": "r1", "messages": USER, "stream": True, "sim": {"token_delay": 0.08}}
    with httpx.stream("POST", gw.base_url + "/chat/completions", json=body, timeout=20) as r:
        assert r.headers["x-gateway-profile-version"] == old
        it = r.iter_bytes()
        raw = next(it)
        path.write_text(profile(fresh_sim.url, [42]))  # no longer stops at 151643
        wait_for(lambda: version_of(gw.url) != old, "the reload")
        raw += b"".join(it)
    events = sse_events(raw)
    final = events[-2]["choices"][0]
    assert final["finish_reason"] == "stop" and final["stop_reason"] == 151643  # old stop ids
    resp = httpx.post(gw.base_url + "/chat/completions", json={"model": "r1", "messages": USER})
    assert resp.headers["x-gateway-profile-version"] == version_of(gw.url) != old
    assert fresh_sim.last_request()["stop_token_ids"] == [42]
    assert "Thanks!" in resp.json()["choices"][0]["message"]["content"]  # ran on past 151643


def test_broken_file_changes_nothing(
    watched: tuple[GatewayServer, Path], fresh_sim: SimProcess
) -> None:
    gw, path = watched
    old = version_of(gw.url)
    auth = {"authorization": f"Bearer {TOKEN}"}
    path.write_text(
        profile(fresh_sim.url, [151643]).replace("stop_token_ids: [151643]", "stop_token_ids: [-4]")
    )
    wait_for(
        lambda: (
            httpx.get(gw.url + "/admin/profiles", headers=auth).json()["last_error"] is not None
        ),
        "the refused reload",
    )
    info = httpx.get(gw.url + "/admin/profiles", headers=auth).json()
    assert info["version"] == old and info["reloads"]["refused"] >= 1
    assert info["last_error"] == ["models.r1.stop_token_ids: token ids must be >= 0, got -4"]
    r = httpx.post(gw.base_url + "/chat/completions", json={"model": "r1", "messages": USER})
    assert r.status_code == 200 and r.headers["x-gateway-profile-version"] == old
    assert fresh_sim.last_request()["stop_token_ids"] == [151643]
    refused = httpx.post(gw.url + "/admin/reload", headers=auth)
    assert refused.status_code == 422
    err = refused.json()["error"]
    assert "models.r1.stop_token_ids" in err["message"] and err["serving_version"] == old
    path.write_text("models: [unclosed")
    wait_for(
        lambda: (
            "invalid YAML"
            in " ".join(
                httpx.get(gw.url + "/admin/profiles", headers=auth).json()["last_error"] or []
            )
        ),
        "YAML error",
    )
    assert version_of(gw.url) == old


def test_admin_routes_need_the_token_and_are_off_without_one(
    tmp_path: Path, sim: SimProcess
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(profile(sim.url, [1]))
    with run_gateway(config=path, admin_token=TOKEN, watch=False) as gw:
        assert httpx.post(gw.url + "/admin/reload").status_code == 401
        bad = httpx.get(gw.url + "/admin/profiles", headers={"authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_admin_token"
        old = version_of(gw.url)
        path.write_text(profile(sim.url, [2]))
        time.sleep(0.5)
        assert version_of(gw.url) == old  # watching is off
        ok = httpx.post(gw.url + "/admin/reload", headers={"authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and ok.json()["version"] == version_of(gw.url) != old
        info = httpx.get(gw.url + "/admin/profiles", headers={"authorization": f"Bearer {TOKEN}"})
        assert info.json()["models"]["r1"]["stop_token_ids"] == [2]
        assert TOKEN not in info.text
    with run_gateway(config=path, admin_token=None, watch=False) as gw:
        off = httpx.post(gw.url + "/admin/reload", headers={"authorization": f"Bearer {TOKEN}"})
        assert off.status_code == 404


def test_kubernetes_configmap_symlink_swap_is_picked_up(
    tmp_path: Path, fresh_sim: SimProcess
) -> None:
    # The layout kubelet gives a mounted ConfigMap: the file is a symlink into ..data, and
    # ..data is a symlink to a timestamped directory that is swapped by an atomic rename.
    mount = tmp_path / "config"
    mount.mkdir()

    def publish(stamp: str, text: str) -> None:
        target = mount / f"..{stamp}"
        target.mkdir()
        (target / "model_profiles.yaml").write_text(text)
        tmp_link = mount / "..data_tmp"
        tmp_link.symlink_to(target.name)
        os.rename(tmp_link, mount / "..data")

    publish("2026_11_23_10_00_00.000000001", profile(fresh_sim.url, [151643]))
    (mount / "model_profiles.yaml").symlink_to("..data/model_profiles.yaml")
    with run_gateway(config=mount / "model_profiles.yaml", admin_token=TOKEN) as gw:
        old = version_of(gw.url)
        publish("2026_11_23_10_05_00.000000002", profile(fresh_sim.url, [77]))
        wait_for(lambda: version_of(gw.url) != old, "the ConfigMap swap")
        httpx.post(gw.base_url + "/chat/completions", json={"model": "r1", "messages": USER})
        assert fresh_sim.last_request()["stop_token_ids"] == [77]


def test_sighup_reloads_a_served_gateway(tmp_path: Path, sim: SimProcess) -> None:
    path = tmp_path / "model_profiles.yaml"
    path.write_text(profile(sim.url, [151643]))
    with run_gateway_process(path) as (url, proc):  # GATEWAY_WATCH=0: only the signal reloads
        old = version_of(url)
        path.write_text(profile(sim.url, [5]))
        time.sleep(0.3)
        assert version_of(url) == old
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: version_of(url) != old, "the SIGHUP reload")
        assert proc.poll() is None


def test_variants_by_suffix_and_header(
    watched: tuple[GatewayServer, Path], fresh_sim: SimProcess
) -> None:
    gw, _ = watched
    ids = [m["id"] for m in httpx.get(gw.base_url + "/models").json()["data"]]
    assert ids == ["r1", "r1:think-only"]
    r = httpx.post(
        gw.base_url + "/chat/completions", json={"model": "r1:think-only", "messages": USER}
    )
    assert fresh_sim.last_request()["stop_token_ids"] == [151649, 151643]
    body = r.json()
    assert body["model"] == "r1:think-only"
    assert body["choices"][0]["message"]["content"].endswith("4.\n")  # stopped at </think>
    httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "r1", "messages": USER},
        headers={"x-gateway-variant": "think-only"},
    )
    assert fresh_sim.last_request()["stop_token_ids"] == [151649, 151643]
    r = httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "r1", "messages": USER},
        headers={"x-gateway-variant": "nope"},
    )
    assert r.status_code == 404 and "r1:nope" in r.json()["error"]["message"]


def test_stop_tokens_by_name_reach_the_upstream(tmp_path: Path, fresh_sim: SimProcess) -> None:
    tok = build_tokenizer(tmp_path / "qwen-tokenizer", "qwen3")
    text = f"""
models:
  qwen:
    upstream_model: sim-r1
    backends: [{{url: "{fresh_sim.url}"}}]
    tokenizer: "{tok}"
    stop_tokens: ["<|im_end|>", "<|endoftext|>"]
    eos_from_tokenizer: true
"""
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with run_gateway(config=path, watch=False) as gw:
        httpx.post(gw.base_url + "/chat/completions", json={"model": "qwen", "messages": USER})
        assert fresh_sim.last_request()["stop_token_ids"] == [151645, 151643]


def test_other_files_in_the_directory_cause_no_reload(tmp_path: Path, sim: SimProcess) -> None:
    """With a keys file the served version hashes the keys too; comparing it with the
    profile text alone made every event in the directory (a log file written beside the
    profiles) a reload. Only the files a snapshot was read from count."""
    import hashlib

    keys = tmp_path / "keys.sha256"
    keys.write_text(hashlib.sha256(b"sk-1").hexdigest() + "\n")
    config = tmp_path / "p.yaml"
    config.write_text(f"""
auth: {{keys_file: keys.sha256}}
models:
  r1: {{upstream_model: sim-r1, backends: [{{url: "{sim.url}"}}]}}
""")
    with run_gateway(config=config, admin_token="adm") as gw:

        def counts() -> dict[str, int]:
            r = httpx.get(gw.url + "/admin/profiles", headers={"Authorization": "Bearer adm"})
            return r.json()["reloads"]  # type: ignore[no-any-return]

        time.sleep(1.5)  # the watcher is up and caught up
        before = counts()
        log = tmp_path / "gateway.log"
        for i in range(20):
            with log.open("a") as f:
                f.write(f"line {i}\n")
            time.sleep(0.1)
        time.sleep(1.0)
        assert counts() == before, "a log file beside the profiles caused reloads"
        keys.write_text(keys.read_text() + hashlib.sha256(b"sk-2").hexdigest() + "\n")
        wait_for(lambda: counts()["applied"] == before["applied"] + 1, "the keys change applied")
        r = httpx.get(gw.base_url + "/models", headers={"Authorization": "Bearer sk-2"})
        assert r.status_code == 200
