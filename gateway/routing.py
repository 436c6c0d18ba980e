"""Routing by each backend's own load: the profile section, the score and the reasons.

vLLM reports its load on ``/metrics`` (``vllm:num_requests_waiting``,
``vllm:num_requests_running``, ``vllm:kv_cache_usage_perc``); :mod:`backend_info` scrapes it
on the probe session every ``routing.scrape_interval`` seconds. A backend's **load score**
(lower is better), divided by its ``weight``::

    score = (weights.waiting * waiting          # requests vLLM has queued
             + weights.running * running        # requests in its running batch
             + weights.kv * kv_cache_usage      # 0..1: a full cache preempts and queues
             + weights.pending * pending) / weight

``pending`` is the part of this replica's own outstanding count the last scrape could not
see yet: ``max(0, outstanding now - outstanding when scraped)``, so a burst between two
scrapes spreads instead of piling on the backend that looked idlest. Equal scores go to the
smooth weighted round-robin. A backend is **saturated** when ``waiting >=
saturation.waiting`` or ``kv_cache_usage >= saturation.kv``: affinity (prefix or session)
holds unless its backend is saturated, then the request is balanced by score. A scrape older
than ``stale_after`` seconds (or none yet) is not used: if any candidate has no fresh load,
the candidates are compared by least outstanding requests, as without scraping.

Every pick names its reason (:data:`REASONS`, a bounded label set), counted in
``gateway_routing_decisions_total`` and written to the access log (``route=``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: why a backend was chosen (the label values of gateway_routing_decisions_total)
REASONS = (
    "affinity",  # the conversation's ring owner, not saturated
    "affinity_saturated",  # the owner was saturated: balanced by load score instead
    "load",  # lowest load score (fresh metrics for every candidate)
    "least_outstanding",  # balanced without scraped load (scraping off)
    "stale_metrics",  # scraping on, but a candidate's load is stale: least outstanding
    "single",  # the only healthy candidate left
    "all_down",  # every backend down: the least recently failed one is tried anyway
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class LoadWeights(_Strict):
    """Weights of the load score (see module doc)."""

    waiting: float = Field(default=4.0, ge=0, le=1e6)
    running: float = Field(default=0.25, ge=0, le=1e6)
    kv: float = Field(default=8.0, ge=0, le=1e6)
    pending: float = Field(default=1.0, ge=0, le=1e6)


class SaturationSpec(_Strict):
    """A backend at or above either threshold is saturated: affinity yields to balancing."""

    waiting: float = Field(default=4, ge=0, le=1e9)
    kv: float = Field(default=0.95, gt=0, le=1)


def _off_or_half_second(v: float) -> float:
    if 0 < v < 0.5:
        raise ValueError(f"must be 0 (off) or >= 0.5, got {v:g}")
    return v


class RoutingSpec(_Strict):
    """``routing:`` (gateway-wide): scraping each backend's ``/metrics`` and the load score.
    A backend opts out with ``scrape_metrics: false``."""

    #: seconds between scrapes of every backend's metrics; 0 turns load routing off
    scrape_interval: float = Field(
        default=1.5,
        ge=0,
        le=3600,
        json_schema_extra={"not": {"exclusiveMinimum": 0, "exclusiveMaximum": 0.5}},
    )
    #: seconds one scrape may take (a backend that stalls its /metrics is skipped)
    scrape_timeout: float = Field(default=1.0, ge=0.01, le=60)
    #: a load older than this many seconds is not used (least outstanding instead)
    stale_after: float = Field(default=5.0, ge=0.1, le=86400)
    #: where vLLM serves its Prometheus metrics
    metrics_path: str = Field(default="/metrics", pattern=r"^/[A-Za-z0-9._~/-]{0,255}$")
    weights: LoadWeights = Field(default_factory=LoadWeights)
    saturation: SaturationSpec = Field(default_factory=SaturationSpec)

    _interval = field_validator("scrape_interval")(_off_or_half_second)


@dataclass(frozen=True, slots=True)
class Load:
    """One scrape of a backend's ``/metrics`` (summed over its engines; KV usage averaged)."""

    running: float
    waiting: float
    kv: float
    #: clock time of the scrape
    at: float
    #: this replica's outstanding requests on the backend when it was scraped
    outstanding: int = 0


def score(load: Load, outstanding: int, weight: int, w: LoadWeights) -> float:
    """The load score of a backend (module doc); lower is better."""
    pending = max(0, outstanding - load.outstanding)
    raw = w.waiting * load.waiting + w.running * load.running + w.kv * load.kv
    return (raw + w.pending * pending) / weight


def saturated(load: Load, s: SaturationSpec) -> bool:
    return load.waiting >= s.waiting or load.kv >= s.kv
