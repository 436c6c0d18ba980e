"""Prometheus metrics (``GatewayMetrics`` on a given registry) and the per-request record.

Naming follows Prometheus conventions (base units, ``_total``, ``_seconds``); labels stay
bounded: ``model`` is a public profile name (``unknown`` for names no profile has),
``backend`` a configured backend name. With several worker processes the values live in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode) and ``/metrics`` merges
them; the CLI sets that up for ``--workers`` > 1.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
CHUNK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)

#: stream termination causes as counted (the normalizer's causes, grouped)
TERMINATION = {
    "first_token_timeout": "first_token_timeout",
    "idle_timeout": "idle_timeout",
    "total_timeout": "total_timeout",
    "client_disconnect": "client_disconnect",
    "upstream_disconnect": "upstream_error",
    "upstream_error": "upstream_error",
    "upstream_abort": "upstream_abort",
    "shutdown": "shutdown",
    "gateway_error": "gateway_error",
}

#: upstream finish reasons counted by name; anything else is "other" (bounded label values)
UPSTREAM_FINISHES = frozenset(
    {"stop", "length", "tool_calls", "content_filter", "function_call", "abort", "error"}
)

access_log = logging.getLogger("gateway.access")


def finish_label(upstream: Any) -> str:
    """An upstream finish_reason as a bounded label/log value (a backend controls it)."""
    if upstream is None:
        return "none"
    return upstream if isinstance(upstream, str) and upstream in UPSTREAM_FINISHES else "other"


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


@dataclass(slots=True)
class RequestRecord:
    """What one request did, filled in along the way and observed once at its end."""

    request_id: str
    endpoint: str
    started: float = field(default_factory=time.perf_counter)
    stream: bool = False
    model: str = "unknown"
    backend: str = "none"
    status: int = 200
    retries: int = 0
    ttft: float | None = None
    ttfc: float | None = None
    overhead: float = 0.0
    #: (upstream finish_reason, normalized) per choice
    finishes: list[tuple[Any, str]] = field(default_factory=list)
    cause: str | None = None
    stop_text_hits: int = 0
    usage: dict[str, Any] | None = None
    reasoning_chars: int = 0
    error: str | None = None
    #: the limit that refused the request (429/503), if one did
    limit: str | None = None
    #: why the backend was chosen (:data:`routing.REASONS`)
    route: str = "none"


class GapCounts:
    """Inter-chunk gaps of one stream, counted locally per histogram bucket (a bisect and an
    increment per chunk instead of ``Histogram.observe``, which costs about 1.6 us) and
    added to the histogram once, when the stream ends (:meth:`flush_into`)."""

    __slots__ = ("_bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = CHUNK_BUCKETS) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def __call__(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self._bounds, seconds)] += 1
        self.total += seconds

    def flush_into(self, child: Any) -> None:
        """Add the counts to a labelled ``Histogram`` child with the same buckets."""
        if not any(self.counts):
            return
        try:
            buckets, total = child._buckets, child._sum
        except AttributeError:  # a prometheus-client without these internals: observe each
            for i, n in enumerate(self.counts):
                bound = self._bounds[i] if i < len(self._bounds) else self._bounds[-1] * 2
                for _ in range(n):
                    child.observe(bound)
            return
        for i, n in enumerate(self.counts):
            if n:
                buckets[i].inc(n)
        total.inc(self.total)
        self.counts = [0] * len(self.counts)
        self.total = 0.0


@dataclass(slots=True)
class _Children:
    """Labelled children cached per (model, stream): ``labels()`` is not free."""

    duration: Any
    ttft: Any
    ttfc: Any
    prompt: Any
    completion: Any


class GatewayMetrics:
    """Every metric of the gateway, registered on ``registry`` (one per app, never global)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        #: the access log's format, settled once (``GATEWAY_LOG_FORMAT=json``)
        self.json_logs = os.environ.get("GATEWAY_LOG_FORMAT", "text") == "json"
        self._cache: dict[tuple[str, str], _Children] = {}
        self._requests: dict[tuple[str, str, str, int], Any] = {}
        r = registry
        self.requests = Counter(
            "gateway_requests",
            "Requests answered",
            ["model", "backend", "stream", "code"],
            registry=r,
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds",
            "Request duration, first byte in to last byte out",
            ["model", "stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "Request start to the first generated text (reasoning or content)",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.ttfc = Histogram(
            "gateway_time_to_first_content_token_seconds",
            "Request start to the first answer text (after any reasoning)",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.inter_chunk = Histogram(
            "gateway_inter_chunk_seconds",
            "Time between upstream stream events",
            ["model"],
            buckets=CHUNK_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "gateway_tokens", "Tokens by kind, from upstream usage", ["model", "kind"], registry=r
        )
        self.finish = Counter(
            "gateway_finish_reason",
            "Finish reasons as the upstream sent them and as the client got them",
            ["model", "upstream", "normalized"],
            registry=r,
        )
        self.terminations = Counter(
            "gateway_stream_terminations",
            "Streams the gateway ended early, by cause",
            ["model", "cause"],
            registry=r,
        )
        self.stop_text = Counter(
            "gateway_stop_text_hits", "Leaked stop text caught", ["model"], registry=r
        )
        self.in_flight = Gauge(
            "gateway_in_flight_requests",
            "Requests in progress",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.limit_rejections = Counter(
            "gateway_limit_rejections",
            "Requests refused because a limit was reached (429/503), by limit",
            ["limit"],
            registry=r,
        )
        self.retries = Counter(
            "gateway_upstream_retries", "Attempts on another backend", ["model"], registry=r
        )
        self.reloads = Counter(
            "gateway_profile_reloads", "Profile reloads by result", ["result"], registry=r
        )
        self.routing = Counter(
            "gateway_routing_decisions",
            "Backend choices by reason (affinity, load, least_outstanding, ...)",
            ["model", "backend", "reason"],
            registry=r,
        )
        self.overhead = Histogram(
            "gateway_overhead_seconds",
            "Time spent in the gateway itself per request (no upstream wait)",
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )

    def _children(self, model: str, stream: str) -> _Children:
        key = (model, stream)
        kids = self._cache.get(key)
        if kids is None:
            kids = self._cache[key] = _Children(
                duration=self.duration.labels(model, stream),
                ttft=self.ttft.labels(model),
                ttfc=self.ttfc.labels(model),
                prompt=self.tokens.labels(model, "prompt"),
                completion=self.tokens.labels(model, "completion"),
            )
        return kids

    def observe(self, rec: RequestRecord) -> None:
        duration = time.perf_counter() - rec.started
        stream = "true" if rec.stream else "false"
        m = rec.model
        kids = self._children(m, stream)
        key = (m, rec.backend, stream, rec.status)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = self.requests.labels(
                m, rec.backend, stream, str(rec.status)
            )
        counter.inc()
        kids.duration.observe(duration)
        if rec.ttft is not None:
            kids.ttft.observe(rec.ttft)
        if rec.ttfc is not None:
            kids.ttfc.observe(rec.ttfc)
        for upstream, normalized in rec.finishes:
            self.finish.labels(m, finish_label(upstream), normalized).inc()
        cause = TERMINATION.get(rec.cause or "")
        if cause is not None:
            self.terminations.labels(m, cause).inc()
        if rec.stop_text_hits:
            self.stop_text.labels(m).inc(rec.stop_text_hits)
        if rec.retries:
            self.retries.labels(m).inc(rec.retries)
        if rec.limit is not None:
            self.limit_rejections.labels(rec.limit).inc()
        if rec.route != "none":
            self.routing.labels(m, rec.backend, rec.route).inc()
        usage = rec.usage
        if usage:
            prompt = usage.get("prompt_tokens")
            if isinstance(prompt, int) and prompt > 0:
                kids.prompt.inc(prompt)
            completion = usage.get("completion_tokens")
            if isinstance(completion, int) and completion > 0:
                kids.completion.inc(completion)
            details = usage.get("completion_tokens_details")
            reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
            if isinstance(reasoning, int) and reasoning > 0:
                self.tokens.labels(m, "reasoning").inc(reasoning)
        self.overhead.observe(rec.overhead)
        log_access(rec, duration, self.json_logs)

    def exposition(self, extra: Iterable[Any] = ()) -> bytes:
        """The text exposition; merged across worker processes in multiprocess mode."""
        registry = self.registry
        if multiprocess_dir():
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        for collector in extra:
            registry.register(collector)
        try:
            return generate_latest(registry)
        finally:
            for collector in extra:
                registry.unregister(collector)


class StateCollector:
    """Gauges read at scrape time: backend health and the profile version in use."""

    def __init__(self, backend_up: Iterable[tuple[str, str, bool]], version: str) -> None:
        self._up = list(backend_up)
        self._version = version

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "gateway_backend_up", "1 if the backend takes traffic", labels=["model", "backend"]
        )
        for model, backend, ok in self._up:
            up.add_metric([model, backend], 1.0 if ok else 0.0)
        yield up
        info = GaugeMetricFamily(
            "gateway_profile_info", "The profile version being served", labels=["version"]
        )
        info.add_metric([self._version], 1.0)
        yield info


_TEXT_LINE = (
    "request_id=%s endpoint=%s model=%s backend=%s stream=%s status=%s finish_reason=%s "
    "upstream_finish_reason=%s ttft_s=%s duration_s=%.4f prompt_tokens=%s "
    "completion_tokens=%s reasoning_chars=%s termination=%s retries=%s error=%s route=%s"
)


def log_access(rec: RequestRecord, duration: float, as_json: bool = False) -> None:
    """One structured line per request; never prompt text or secrets."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    usage = rec.usage or {}
    finishes = [n for _, n in rec.finishes]
    upstream = [finish_label(u) for u, _ in rec.finishes]
    ttft = None if rec.ttft is None else round(rec.ttft, 4)
    if not as_json:
        access_log.info(
            _TEXT_LINE,
            rec.request_id,
            rec.endpoint,
            rec.model,
            rec.backend,
            rec.stream,
            rec.status,
            finishes,
            upstream,
            ttft,
            duration,
            usage.get("prompt_tokens"),
            usage.get("completion_tokens"),
            rec.reasoning_chars,
            rec.cause,
            rec.retries,
            rec.error,
            rec.route,
        )
        return
    fields = {
        "request_id": rec.request_id,
        "endpoint": rec.endpoint,
        "model": rec.model,
        "backend": rec.backend,
        "stream": rec.stream,
        "status": rec.status,
        "finish_reason": finishes,
        "upstream_finish_reason": upstream,
        "ttft_s": ttft,
        "duration_s": round(duration, 4),
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "reasoning_chars": rec.reasoning_chars,
        "termination": rec.cause,
        "retries": rec.retries,
        "error": rec.error,
        "route": rec.route,
    }
    access_log.info(json.dumps(fields, separators=(",", ":")))
