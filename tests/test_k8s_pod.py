"""The Kubernetes Deployment, rendered by ``kubectl kustomize``, run as the kubelet would run it
with podman: its args, env, user, read-only root, dropped capabilities, CPU and memory limits,
the /tmp emptyDir, and the ConfigMap mounted as the kubelet mounts one (files behind a
``..data`` symlink that an update swaps). Each backend host of the ConfigMap resolves to a
simulated vLLM in the same network namespace (one made here, loopback only), as a pod's
containers share one. The probes must answer on the container port with the paths the
manifest names, the pod must fit its memory request, a ConfigMap update must reach every
worker, and SIGTERM must end it well within terminationGracePeriodSeconds."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from tests.containers import MEASURED, Container, built_image, netns, run_container, wait_for
from tests.test_deploy import kustomize

pytestmark = [pytest.mark.container, pytest.mark.timeout(600)]


def quantity(q: str) -> float:
    """Kubernetes quantity -> bytes or cores ("512Mi", "1Gi", "500m", "2")."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "m": 1e-3}
    for suffix, factor in units.items():
        if q.endswith(suffix):
            return float(q[: -len(suffix)]) * factor
    return float(q)


def configmap_volume(root: Path, data: dict[str, str], version: str) -> None:
    """Write ``data`` as the kubelet does: ``..<version>/`` files, ``..data`` -> it (swapped
    atomically on update), and one symlink per key through ``..data``."""
    root.mkdir(exist_ok=True)
    root.chmod(0o755)
    payload = root / f"..{version}"
    payload.mkdir(mode=0o755)
    for key, text in data.items():
        (payload / key).write_text(text)
        (payload / key).chmod(0o644)
    tmp = root / "..data_tmp"
    tmp.symlink_to(payload.name)
    os.replace(tmp, root / "..data")
    for key in data:
        link = root / key
        if not link.is_symlink():
            link.symlink_to(f"..data/{key}")


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in kustomize()}


@pytest.fixture(scope="module")
def pod(
    rendered: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, dict[str, Any], Container, Path]]:
    image = built_image("gateway")
    dep = rendered["Deployment"]
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["image"].split(":")[0].endswith("vllm-thinking-gateway"), "the image compose builds"
    data = rendered["ConfigMap"]["data"]
    profiles = yaml.safe_load(data["model_profiles.yaml"])
    backends = {urlsplit(b["url"]) for m in profiles["models"].values() for b in m["backends"]}
    assert {u.port for u in backends} == {8000}, "one simulated vLLM serves them all"
    upstream = sorted({m.get("upstream_model", name) for name, m in profiles["models"].items()})

    volumes = {v["name"]: v for v in spec["volumes"]}
    run_args = ["--user", str(spec["securityContext"]["runAsUser"])]
    if c["securityContext"].get("readOnlyRootFilesystem"):
        run_args.append("--read-only")
    if "ALL" in c["securityContext"]["capabilities"]["drop"]:
        run_args += ["--cap-drop", "ALL"]
    if c["securityContext"].get("allowPrivilegeEscalation") is False:
        run_args += ["--security-opt", "no-new-privileges"]
    limits = c["resources"]["limits"]
    run_args += ["--memory", str(int(quantity(limits["memory"]))), "--cpus", limits["cpu"]]
    for e in c["env"]:
        if "value" in e:
            run_args += ["-e", f"{e['name']}={e['value']}"]
    cm_dir = tmp_path_factory.mktemp("configmap")
    for m in c["volumeMounts"]:
        volume = volumes[m["name"]]
        if "configMap" in volume:
            assert volume["configMap"]["name"] == rendered["ConfigMap"]["metadata"]["name"]
            configmap_volume(cm_dir, data, "v1")
            run_args += ["-v", f"{cm_dir}:{m['mountPath']}:ro"]
        else:
            assert "emptyDir" in volume, volume
            run_args += ["--tmpfs", f"{m['mountPath']}:rw,mode=1777"]
    hosts = [f"--add-host={u.hostname}:127.0.0.1" for u in backends]

    with netns("gwpod") as ns:
        network = ("--network", f"ns:{ns.path}")
        sim_cmd = ("sim", "--host", "127.0.0.1", "--port", "8000", "--token-delay", "0.001")
        sim_cmd += tuple(a for m in upstream for a in ("--model", m))
        with (
            run_container(image, *network, "--entrypoint", "gateway", command=sim_cmd),
            run_container(image, *network, *hosts, *run_args, command=tuple(c["args"])) as gw,
        ):
            yield ns, c, gw, cm_dir


def live(c: dict[str, Any], gw: Container) -> bool:
    if not gw.running():
        raise AssertionError(f"the pod's container exited:\n{gw.logs()[-3000:]}")
    return probe(c, "livenessProbe").status_code == 200


def probe(c: dict[str, Any], which: str) -> httpx.Response:
    get = c[which]["httpGet"]
    port = next(p["containerPort"] for p in c["ports"] if p["name"] == get["port"])
    return httpx.get(f"http://127.0.0.1:{port}{get['path']}", timeout=2)


def test_probes_answer_on_the_container_port(
    pod: tuple[Any, dict[str, Any], Container, Path], rendered: dict[str, dict[str, Any]]
) -> None:
    ns, c, gw, _ = pod
    start = time.monotonic()
    ns.run(lambda: wait_for(lambda: live(c, gw), 60, "liveness"))
    ns.run(lambda: wait_for(lambda: probe(c, "readinessProbe").status_code == 200, 30, "ready"))
    MEASURED["k8s pod (2 workers) ready after"] = f"{time.monotonic() - start:.1f} s more"
    ready = ns.run(lambda: probe(c, "readinessProbe").json())
    assert ready == {"ready": True, "models_without_backend": []}
    port = c["ports"][0]["containerPort"]
    models = ns.run(lambda: httpx.get(f"http://127.0.0.1:{port}/v1/models").json())
    profiles = yaml.safe_load(rendered["ConfigMap"]["data"]["model_profiles.yaml"])
    assert set(profiles["models"]) <= {m["id"] for m in models["data"]}
    r = ns.run(
        lambda: httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={
                "model": "qwen3-4b-thinking-2507",
                "messages": [{"role": "user", "content": "x"}],
            },
            timeout=30,
        )
    )
    assert r.status_code == 200, r.text
    # The pod's processes (the uvicorn supervisor and its workers) fit the memory request.
    rss = gw.rss_bytes()
    request = quantity(c["resources"]["requests"]["memory"])
    MEASURED["k8s pod RSS (2 workers)"] = f"{rss / 2**20:.0f} MiB of {request / 2**20:.0f} MiB"
    assert 0 < rss < request
    assert len(gw.pids()) >= 3, "--workers 2: a supervisor and two workers"


def test_configmap_update_reaches_every_worker(
    pod: tuple[Any, dict[str, Any], Container, Path], rendered: dict[str, dict[str, Any]]
) -> None:
    ns, c, gw, cm_dir = pod
    port = c["ports"][0]["containerPort"]
    ns.run(lambda: wait_for(lambda: live(c, gw), 60, "liveness"))
    before = ns.run(lambda: probe(c, "livenessProbe").json()["profile_version"])
    text = rendered["ConfigMap"]["data"]["model_profiles.yaml"]
    configmap_volume(cm_dir, {"model_profiles.yaml": text + "\n# edited\n"}, "v2")

    def all_workers_reloaded() -> bool:
        # each request may land on either worker: many answers in a row must be new
        versions = {
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()["profile_version"]
            for _ in range(12)
        }
        return before not in versions

    ns.run(lambda: wait_for(all_workers_reloaded, 30, "the ConfigMap update in every worker"))


def test_sigterm_ends_the_pod_within_its_grace_period(
    pod: tuple[Any, dict[str, Any], Container, Path], rendered: dict[str, dict[str, Any]]
) -> None:
    ns, c, gw, _ = pod
    ns.run(lambda: wait_for(lambda: live(c, gw), 60, "liveness"))
    grace = rendered["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    code, took = gw.signal_and_wait("TERM", timeout=min(grace, 20))
    assert code == 0, f"exit code {code} after {took:.1f} s:\n{gw.logs()[-2000:]}"
    MEASURED["SIGTERM to exit, k8s pod (2 workers)"] = f"{took:.2f} s"
