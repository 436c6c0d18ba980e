"""docker-compose.yml started for real: podman-compose brings up its simulation profile (the
simulated vLLM, the gateway, Prometheus) from images built here, in a network namespace of our
own with only loopback in it (deploy/compose-loopback.yml puts every service on that network
and maps the service names to 127.0.0.1, so the shipped profile file and prometheus.yml are used
unchanged on their own ports). Prometheus must scrape the gateway, and every query of the
Grafana dashboard must evaluate on Prometheus, the ones the traffic exercises with data.

Grafana itself has no image here (no registry, no Debian package, nothing on PyPI or npm that
carries the server); its provisioning is checked against the compose file and the queries it
would send are sent to the Prometheus its datasource names."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.containers import MEASURED, ROOT, NetNS, built_image, netns, podman, wait_for

pytestmark = [pytest.mark.container, pytest.mark.timeout(900)]

MODEL = "deepseek-r1-distill-qwen-1.5b"
GATEWAY = "http://127.0.0.1:8080"
PROMETHEUS = "http://127.0.0.1:9090"
SERVICES = ("vllm-sim", "gateway-sim", "prometheus")
# Panels whose queries the traffic below must give data (the others may be empty: no retries,
# no leaked stop text, no cut streams happen here, but their queries must still evaluate).
MUST_HAVE_DATA = {
    "Requests / s by model",
    "Errors / s by status",
    "Time to first token (p50 / p95 / p99)",
    "Inter-chunk latency (p50 / p99)",
    "Tokens / s by kind",
    "Finish reasons: upstream -> client (repairs where they differ)",
    "Backend up",
    "In-flight requests",
    "Request duration (p50 / p95)",
    "Gateway overhead per request (p50 / p99)",
    "Profile reloads and version",
}


def compose_cmd(ns: NetNS, project: str, *args: str) -> list[str]:
    tool = str(Path(sys.executable).parent / "podman-compose")
    files = ("-f", "docker-compose.yml", "-f", "deploy/compose-loopback.yml")
    return [
        "nsenter",
        f"--net={ns.path}",  # only the network namespace: podman needs the host's cgroup mounts
        tool,
        "--podman-args=--runtime runc",
        "-p",
        project,
        *files,
        "--profile",
        "sim",
        *args,
    ]


@pytest.fixture(scope="module")
def stack() -> Iterator[NetNS]:
    env = {
        **os.environ,
        "GATEWAY_IMAGE": built_image("gateway"),
        "PROMETHEUS_IMAGE": built_image("prometheus"),
    }
    with netns("gwcompose") as ns:
        project = ns.name
        start = time.monotonic()
        try:
            up = subprocess.run(
                compose_cmd(ns, project, "up", "-d", *SERVICES),
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
            ns.run(
                lambda: wait_for(
                    lambda: httpx.get(GATEWAY + "/ready", timeout=2).status_code == 200,
                    60,
                    "the compose gateway's /ready",
                )
            )
            MEASURED["compose up to gateway ready"] = f"{time.monotonic() - start:.1f} s"
            yield ns
        finally:
            subprocess.run(
                compose_cmd(ns, project, "down", "-t", "5"),
                cwd=ROOT,
                env=env,
                capture_output=True,
                timeout=120,
            )
            # whatever compose left (a failed start): by its project label
            left = podman(
                "ps", "-aq", "--filter", f"label=io.podman.compose.project={project}", check=False
            ).stdout.split()
            if left:
                podman("rm", "-f", "-t", "0", *left, check=False)
            podman("pod", "rm", "-f", f"pod_{project}", check=False)


def traffic() -> None:
    """What a user does: streamed and plain chat with the SDK, one bad request; and what an
    operator does: a reload through /admin with the token docker-compose.yml sets."""
    r = httpx.post(GATEWAY + "/admin/reload", headers={"authorization": "Bearer change-me"})
    assert r.status_code == 200, r.text
    with openai.OpenAI(base_url=GATEWAY + "/v1", api_key="t", max_retries=0, timeout=30) as c:
        for _ in range(3):
            chunks = list(
                c.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "2 + 2?"}], stream=True
                )
            )
            assert chunks[-1].choices[0].finish_reason == "stop"
        reply = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
        with pytest.raises(openai.BadRequestError):
            c.chat.completions.create(model=MODEL, messages=[], max_tokens=-1)


def prom(path: str, **params: str) -> Any:
    r = httpx.get(PROMETHEUS + path, params=params, timeout=10)
    body = r.json()
    assert body["status"] == "success", body
    return body["data"]


def test_compose_gateway_serves_the_simulated_vllm(stack: NetNS) -> None:
    stack.run(traffic)
    models = stack.run(lambda: httpx.get(GATEWAY + "/v1/models").json())
    assert MODEL in {m["id"] for m in models["data"]}
    # The gateway container runs from the image's user, with the compose profile file.
    health = stack.run(lambda: httpx.get(GATEWAY + "/health").json())
    assert health["backends"]["vllm"]["url"] == "http://vllm:8000"


def test_prometheus_scrapes_the_gateway(stack: NetNS) -> None:
    def gateway_up() -> bool:
        targets = prom("/api/v1/targets")["activeTargets"]
        ours = [t for t in targets if t["labels"]["job"] == "gateway"]
        assert [t["scrapeUrl"] for t in ours] == ["http://gateway:8080/metrics"]
        return ours[0]["health"] == "up"

    stack.run(lambda: wait_for(gateway_up, 40, "Prometheus to scrape the gateway", step=1))
    rules = stack.run(lambda: prom("/api/v1/rules"))
    names = {r["name"] for g in rules["groups"] for r in g["rules"]}
    assert "GatewayBackendDown" in names, "alerts.yml is loaded"


def dashboard_queries() -> dict[str, list[str]]:
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/gateway.json").read_text())
    allvalue = dashboard["templating"]["list"][0]["allValue"]
    queries: dict[str, list[str]] = {}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            # What Grafana sends with "All" selected and a 15 s scrape interval.
            expr = target["expr"].replace("$model", allvalue).replace("$__rate_interval", "1m")
            assert "$" not in expr, expr
            queries.setdefault(panel["title"], []).append(expr)
    return queries


def test_dashboard_queries_return_data_from_prometheus(stack: NetNS) -> None:
    queries = dashboard_queries()
    assert MUST_HAVE_DATA <= set(queries), set(queries) ^ MUST_HAVE_DATA
    # The template variable's own query, as Grafana runs it.
    start = time.monotonic()

    empty: list[str] = []

    def all_have_data() -> bool:
        traffic()  # between scrapes too, so the rates are not all zero
        empty[:] = []
        for title, exprs in queries.items():
            for expr in exprs:
                result = prom("/api/v1/query", query=expr)["result"]
                if not result and title in MUST_HAVE_DATA:
                    empty.append(expr)
        return not empty

    def poll() -> None:
        while not all_have_data():
            assert time.monotonic() - start < 90, f"no data for: {empty}"
            time.sleep(3)

    stack.run(poll, timeout=150)
    models = stack.run(lambda: prom("/api/v1/label/model/values", match="gateway_requests_total"))
    assert MODEL in models


def test_grafana_provisioning_points_at_the_compose_services() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/dashboards.yml").read_text()
    )["providers"][0]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    ds = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    host, port = re.fullmatch(r"http://([\w-]+):(\d+)", ds["url"]).groups()  # type: ignore[union-attr]
    assert host == "prometheus" and host in compose["services"]
    assert (
        f"--web.listen-address=:{port}"
        in " ".join(compose["services"]["prometheus"].get("command", []))
        or port == "9090"
    )
