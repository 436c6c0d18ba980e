"""Podman for the container tests: the images of this repository (built on the local Debian base
of scripts/container-base.sh), containers that are always removed, and network namespaces of
our own for what must listen on fixed ports (compose, the Kubernetes pod).

Every container runs with ``--runtime runc`` (crun cannot set up cgroups in this sandbox) and
only on loopback: ``--network host`` with 127.0.0.1 binds, or a namespace made here with only
``lo`` in it."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
PODMAN = ("podman", "--runtime", "runc")
T = TypeVar("T")

#: numbers the container tests measured, printed at the end of the run (conftest.py)
MEASURED: dict[str, str] = {}


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} ... failed ({r.returncode}): {r.stderr}")
    return r


def _script(name: str, *args: str, timeout: float) -> str:
    """Run one of scripts/container-*.sh; a failure (no runtime, no network) fails the test
    with what the script said, which includes the install line when podman is missing."""
    try:
        r = subprocess.run(
            [str(SCRIPTS / name), *args], capture_output=True, text=True, timeout=timeout
        )
    except FileNotFoundError as exc:  # pragma: no cover - a broken checkout
        pytest.fail(f"{name}: {exc}", pytrace=False)
    if r.returncode != 0:
        pytest.fail(f"scripts/{name} failed ({r.returncode}):\n{r.stderr}", pytrace=False)
    return r.stdout.strip().splitlines()[-1]


@functools.cache
def base_image() -> str:
    """The local Debian base (built once, about a minute; cached by podman across runs)."""
    if os.environ.get("GATEWAY_CONTAINER_BASE"):
        return os.environ["GATEWAY_CONTAINER_BASE"]
    start = time.monotonic()
    image = _script("container-base.sh", timeout=900)
    MEASURED.setdefault("base image ready", f"{time.monotonic() - start:.1f} s")
    return image


@functools.cache
def built_image(what: str) -> str:
    """Id of the image ``what`` (gateway | prometheus) built from this checkout (layers cached)."""
    base = base_image()
    os.environ["GATEWAY_CONTAINER_BASE"] = base  # the build script must not look it up again
    start = time.monotonic()
    tag = f"localhost/{'vllm-thinking-gateway' if what == 'gateway' else 'gateway-prometheus'}:test"
    image = _script("container-build.sh", what, tag, timeout=900)
    MEASURED[f"{what} image build"] = f"{time.monotonic() - start:.1f} s"
    if what == "gateway":
        size = podman("image", "inspect", image, "--format", "{{.Size}}").stdout.strip()
        MEASURED["gateway image size"] = f"{int(size) / 1e6:.0f} MB"
    return image


@dataclass
class Container:
    name: str

    def inspect(self, fmt: str) -> str:
        return podman("inspect", self.name, "--format", fmt).stdout.strip()

    def running(self) -> bool:
        return self.inspect("{{.State.Running}}") == "true"

    def logs(self) -> str:
        r = podman("logs", self.name, check=False)
        return r.stdout + r.stderr

    def pids(self) -> list[int]:
        """Host pids of the container's processes."""
        out = podman("top", self.name, "hpid", check=False).stdout.split()
        return [int(p) for p in out if p.isdigit()]

    def rss_bytes(self) -> int:
        """Resident memory of all the container's processes (from the host's /proc)."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total

    def exec_python(self, code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, "python", "-c", code, timeout=timeout, check=False)

    def signal_and_wait(self, sig: str, timeout: float) -> tuple[int, float]:
        """Send ``sig``; wait for the exit. Returns (exit code, seconds); kills it after
        ``timeout`` and returns exit code -1."""
        start = time.monotonic()
        podman("kill", "--signal", sig, self.name)
        while time.monotonic() - start < timeout:
            if not self.running():
                took = time.monotonic() - start
                return int(self.inspect("{{.State.ExitCode}}")), took
            time.sleep(0.05)
        podman("kill", self.name, check=False)
        return -1, time.monotonic() - start


@contextlib.contextmanager
def run_container(image: str, *args: str, command: tuple[str, ...] = ()) -> Iterator[Container]:
    """``podman run -d`` with a unique name; always removed (with its logs shown on failure)."""
    name = f"gateway-test-{uuid.uuid4().hex[:10]}"
    podman("run", "-d", "--name", name, *args, image, *command)
    container = Container(name)
    try:
        yield container
    except BaseException:
        print(f"--- logs of {name} ---\n{container.logs()[-4000:]}")
        raise
    finally:
        podman("rm", "-f", "-t", "0", name, check=False, timeout=60)


CLONE_NEWNET = 0x40000000


@dataclass
class NetNS:
    """A network namespace with only ``lo``, made here (``ip netns``); ``run(fn)`` calls ``fn``
    on a thread that lives in it, so sockets ``fn`` opens reach the services inside."""

    name: str
    pool: ThreadPoolExecutor

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def run(self, fn: Callable[[], T], timeout: float = 120) -> T:
        return self.pool.submit(fn).result(timeout=timeout)


def _enter(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def netns(prefix: str) -> Iterator[NetNS]:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        # setns on a pool thread changes only that thread's network namespace
        with ThreadPoolExecutor(1, initializer=_enter, initargs=(f"/run/netns/{name}",)) as pool:
            yield NetNS(name, pool)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def wait_for(check: Callable[[], T | None], timeout: float, what: str, step: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy; its last exception is reported."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
            last = value
        except Exception as exc:
            last = exc
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


def image_config(image: str) -> dict[str, Any]:
    """The image's config; podman keeps the HEALTHCHECK beside it, as ``Healthcheck``."""
    data = json.loads(podman("image", "inspect", image).stdout)[0]
    return {**data["Config"], "Healthcheck": data.get("Healthcheck")}
