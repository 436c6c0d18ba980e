"""What the gateway learns from each backend, on the probe session (never behind client
traffic), cached per backend URL:

* ``max_model_len`` per served model id, from vLLM's ``GET /v1/models``: fetched every
  ``health.interval`` seconds with the health probes; with active probes off, once at start
  and at each reload (and every :data:`RETRY_UNKNOWN` seconds while still unknown). A request
  whose backend was never asked yet waits for the first answer (at most ``health.timeout``).
* the load, from vLLM's ``GET /metrics`` (``routing.metrics_path``) every
  ``routing.scrape_interval`` seconds, each scrape bounded by ``routing.scrape_timeout``:
  ``vllm:num_requests_running`` and ``vllm:num_requests_waiting`` summed over the server's
  engines, ``vllm:kv_cache_usage_perc`` (``vllm:gpu_cache_usage_perc`` on older vLLM)
  averaged. A failed scrape keeps the last load until it is ``stale_after`` seconds old.

Bodies are bounded (:data:`MODELS_LIMIT`, :data:`METRICS_LIMIT`) and only the few lines
needed are parsed, so a large or hostile ``/metrics`` costs little.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client.core import GaugeMetricFamily, Metric

from .errors import UpstreamError
from .profiles import Backend, ProfileSet
from .routing import Load, RoutingSpec, saturated

log = logging.getLogger("gateway.backend_info")

#: ``(backend, path, seconds, limit) -> body``; raises UpstreamError (``UpstreamClient.fetch``)
Fetch = Callable[[Backend, str, float, int], Awaitable[bytes]]

MODELS_LIMIT = 1024 * 1024
METRICS_LIMIT = 8 * 1024 * 1024
#: served model ids remembered per backend
MAX_MODELS = 256
#: seconds between retries of a backend whose max_model_len is unknown (probes off)
RETRY_UNKNOWN = 10.0

_LOAD_NAMES = {
    b"vllm:num_requests_running": "running",
    b"vllm:num_requests_waiting": "waiting",
    b"vllm:kv_cache_usage_perc": "kv",
    b"vllm:gpu_cache_usage_perc": "kv",  # vLLM before 0.10
}
#: one sample of a load family: the name, its labels (to the line's last ``}``), the value.
#: Matched by the regex engine over the whole body, so a hostile ``/metrics`` of millions of
#: other lines costs C-speed scanning, not a Python loop per line on the event loop.
_LOAD_SAMPLE = re.compile(
    rb"^(" + b"|".join(re.escape(n) for n in _LOAD_NAMES) + rb")(?:\{[^\n]*\})?[ \t]+([^ \t\n]+)",
    re.MULTILINE,
)
#: samples read at most per scrape (a real vLLM has one per engine; 8 data-parallel
#: engines make 32); the rest of a hostile body is not looked at
MAX_SAMPLES = 1024
#: the largest value one sample counts for (requests; KV-cache usage is capped at 1 anyway)
MAX_SAMPLE_VALUE = 1e9


def parse_load(text: bytes) -> tuple[float, float, float] | None:
    """``(running, waiting, kv)`` from a Prometheus text exposition, or None when it has
    none of vLLM's load families. Only samples of those families are parsed, the first
    :data:`MAX_SAMPLES` of them."""
    sums = {"running": 0.0, "waiting": 0.0, "kv": 0.0}
    counts = {"running": 0, "waiting": 0, "kv": 0}
    for seen, m in enumerate(_LOAD_SAMPLE.finditer(text)):
        if seen >= MAX_SAMPLES:
            break
        try:
            value = float(m.group(2))
        except ValueError:
            continue
        if math.isfinite(value) and value >= 0:
            kind = _LOAD_NAMES[m.group(1)]
            sums[kind] += min(value, MAX_SAMPLE_VALUE)  # a sum of huge values stays finite
            counts[kind] += 1
    if not any(counts.values()):
        return None
    kv = sums["kv"] / counts["kv"] if counts["kv"] else 0.0
    return sums["running"], sums["waiting"], min(kv, 1.0)


def parse_models(raw: bytes) -> dict[str, int]:
    """``{served model id: max_model_len}`` from vLLM's ``/v1/models`` answer (ids without
    an integer ``max_model_len`` are left out). Raises ``ValueError``."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValueError("/v1/models is not JSON") from None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise ValueError("/v1/models has no data list")
    out: dict[str, int] = {}
    for item in data[:MAX_MODELS]:
        if not isinstance(item, dict):
            continue
        mid, length = item.get("id"), item.get("max_model_len")
        if isinstance(mid, str) and type(length) is int and length > 0:
            out[mid[:512]] = length
    return out


@dataclass(slots=True)
class Facts:
    """What is known of one backend URL."""

    #: served model id -> max_model_len
    max_model_len: dict[str, int] = field(default_factory=dict)
    models_at: float | None = None
    models_error: str | None = None
    #: set once the first /v1/models attempt ended (either way)
    models_tried: asyncio.Event = field(default_factory=asyncio.Event)
    load: Load | None = None
    load_error: str | None = None
    #: scrapes failed in a row
    scrape_failures: int = 0


class BackendInfo:
    """Per-URL facts and the two loops that keep them (see module doc)."""

    def __init__(self, fetch: Fetch | None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self._clock = clock
        self._facts: dict[str, Facts] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.routing = RoutingSpec()

    def facts(self, url: str) -> Facts:
        f = self._facts.get(url)
        if f is None:
            f = self._facts[url] = Facts()
        return f

    # -- max_model_len -----------------------------------------------------------------

    def max_model_len(self, backend: Backend, model: str) -> int | None:
        f = self._facts.get(backend.url)
        return None if f is None else f.max_model_len.get(model)

    async def first_models(self, backends: Iterable[Backend], wait: float) -> None:
        """Wait (at most ``wait`` seconds) until every backend of ``backends`` whose first
        ``/v1/models`` fetch is under way has its answer; immediate once they all had one."""
        pending = [
            f.models_tried
            for b in backends
            if (f := self._facts.get(b.url)) is not None and not f.models_tried.is_set()
        ]
        if pending and self._tasks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    for event in pending:
                        await event.wait()

    def learn_max_model_len(self, backend: Backend, model: str, length: int) -> None:
        """A limit read from the backend's own refusal (it changed since the last fetch)."""
        f = self.facts(backend.url)
        if len(f.max_model_len) < MAX_MODELS or model in f.max_model_len:
            f.max_model_len[model] = length

    async def refresh_models(self, backends: Iterable[Backend], seconds: float) -> None:
        assert self._fetch is not None
        unique = list({b.url: b for b in backends}.values())
        for b in unique:
            self.facts(b.url)  # a request may now wait for this first answer
        await asyncio.gather(*(self._models_one(b, seconds) for b in unique))

    async def _models_one(self, backend: Backend, seconds: float) -> None:
        assert self._fetch is not None
        f = self.facts(backend.url)
        try:
            lengths = parse_models(await self._fetch(backend, "/v1/models", seconds, MODELS_LIMIT))
        except (UpstreamError, ValueError) as exc:
            f.models_error = _why(exc)
        else:
            f.max_model_len, f.models_at, f.models_error = lengths, self._clock(), None
        finally:
            f.models_tried.set()

    # -- load ------------------------------------------------------------------------------

    def fresh_load(self, backend: Backend) -> Load | None:
        """The backend's last scraped load, or None if scraping is off for it or the last
        good scrape is older than ``routing.stale_after``."""
        r = self.routing
        if r.scrape_interval <= 0 or not backend.scrape_metrics:
            return None
        f = self._facts.get(backend.url)
        load = None if f is None else f.load
        if load is None or self._clock() - load.at > r.stale_after:
            return None
        return load

    def scraping(self, backend: Backend) -> bool:
        return self.routing.scrape_interval > 0 and backend.scrape_metrics

    async def scrape(self, backends: Iterable[Backend], outstanding: Callable[[str], int]) -> None:
        unique = [b for b in {b.url: b for b in backends}.values() if b.scrape_metrics]
        await asyncio.gather(*(self._scrape_one(b, outstanding) for b in unique))

    async def _scrape_one(self, backend: Backend, outstanding: Callable[[str], int]) -> None:
        assert self._fetch is not None
        r = self.routing
        f = self.facts(backend.url)
        before = outstanding(backend.url)
        try:
            text = await self._fetch(backend, r.metrics_path, r.scrape_timeout, METRICS_LIMIT)
            values = parse_load(text)
            if values is None:
                raise ValueError(f"{r.metrics_path} has no vLLM load metrics")
        except (UpstreamError, ValueError) as exc:
            if f.scrape_failures == 0:
                log.warning("backend %s: load scrape failed: %s", backend.name, _why(exc))
            f.scrape_failures += 1
            f.load_error = _why(exc)
            return
        running, waiting, kv = values
        # the scrape saw the requests that were outstanding when it was sent
        f.load = Load(running, waiting, kv, self._clock(), min(before, outstanding(backend.url)))
        f.load_error, f.scrape_failures = None, 0

    # -- loops -----------------------------------------------------------------------------

    def start(self, profiles: Callable[[], ProfileSet], outstanding: Callable[[str], int]) -> None:
        if self._fetch is None or self._tasks:
            return
        loop = asyncio.get_running_loop()
        current = profiles()
        self.routing = current.routing
        for b in current.backends():
            self.facts(b.url)  # the first requests wait for the first /v1/models answer
        self._tasks = [
            loop.create_task(self._models_loop(profiles)),
            loop.create_task(self._load_loop(profiles, outstanding)),
        ]

    async def _models_loop(self, profiles: Callable[[], ProfileSet]) -> None:
        version: str | None = None
        due = 0.0
        while True:
            snap = profiles()
            now = self._clock()
            backends = snap.backends()
            interval = snap.health.interval
            if snap.version != version or (interval > 0 and now >= due):
                version, due = snap.version, now + interval
                await self.refresh_models(backends, snap.health.timeout)
            else:
                unknown = [b for b in backends if self.facts(b.url).models_at is None]
                if unknown and now >= due:
                    due = now + RETRY_UNKNOWN
                    await self.refresh_models(unknown, snap.health.timeout)
            self._forget({b.url for b in backends})
            await asyncio.sleep(min(interval, 1.0) if interval > 0 else 1.0)

    async def _load_loop(
        self, profiles: Callable[[], ProfileSet], outstanding: Callable[[str], int]
    ) -> None:
        while True:
            snap = profiles()
            self.routing = snap.routing
            interval = self.routing.scrape_interval
            if interval > 0:
                started = self._clock()
                await self.scrape(snap.backends(), outstanding)
                await asyncio.sleep(max(0.0, interval - (self._clock() - started)))
            else:
                await asyncio.sleep(1.0)

    def _forget(self, live: set[str]) -> None:
        for url in [u for u in self._facts if u not in live]:
            del self._facts[url]

    async def aclose(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- reporting -------------------------------------------------------------------------

    def describe(self, backend: Backend, model: str) -> dict[str, Any]:
        """For ``/admin/profiles``: the backend's learned context length and last load."""
        f = self._facts.get(backend.url)
        out: dict[str, Any] = {"max_model_len": None, "load": None}
        if f is None:
            return out
        out["max_model_len"] = f.max_model_len.get(model)
        if f.models_error:
            out["max_model_len_error"] = f.models_error
        if not self.scraping(backend):
            out["load"] = "not scraped"
            return out
        if f.load is not None:
            load = f.load
            age = self._clock() - load.at
            out["load"] = {
                "running": load.running,
                "waiting": load.waiting,
                "kv_cache_usage": load.kv,
                "age_s": round(age, 3),
                "stale": age > self.routing.stale_after,
                "saturated": saturated(load, self.routing.saturation),
            }
        if f.load_error:
            out["load_error"] = f.load_error
        return out

    def samples(self, backends: Iterable[tuple[str, Backend]]) -> Iterator[tuple[str, str, Facts]]:
        for model, b in backends:
            f = self._facts.get(b.url)
            if f is not None:
                yield model, b.name, f


class BackendInfoCollector:
    """Gauges read at scrape time: each backend's last scraped load and learned
    max_model_len (per public model and backend name)."""

    def __init__(self, info: BackendInfo, backends: Iterable[tuple[str, Backend, str]]) -> None:
        self._info = info
        self._backends = list(backends)

    def collect(self) -> Iterator[Metric]:
        load = GaugeMetricFamily(
            "gateway_backend_load",
            "The backend's last scraped load: running and waiting requests, KV-cache usage (0-1)",
            labels=["model", "backend", "kind"],
        )
        age = GaugeMetricFamily(
            "gateway_backend_load_age_seconds",
            "Seconds since the backend's load was last scraped successfully",
            labels=["model", "backend"],
        )
        length = GaugeMetricFamily(
            "gateway_backend_max_model_len",
            "The context length the backend reports for the model (vLLM /v1/models)",
            labels=["model", "backend"],
        )
        now = self._info._clock()
        for model, b, upstream in self._backends:
            f = self._info._facts.get(b.url)
            if f is None:
                continue
            if f.load is not None:
                load.add_metric([model, b.name, "running"], f.load.running)
                load.add_metric([model, b.name, "waiting"], f.load.waiting)
                load.add_metric([model, b.name, "kv_cache_usage"], f.load.kv)
                age.add_metric([model, b.name], now - f.load.at)
            mml = f.max_model_len.get(upstream)
            if mml is not None:
                length.add_metric([model, b.name], float(mml))
        yield load
        yield age
        yield length


def _why(exc: BaseException) -> str:
    return str(exc)[:200] or type(exc).__name__
