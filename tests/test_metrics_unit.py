"""Metric helpers without a server."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from gateway.metrics import CHUNK_BUCKETS, GapCounts, finish_label


def exposition(registry: CollectorRegistry) -> list[str]:
    return [ln for ln in generate_latest(registry).decode().splitlines() if "_created" not in ln]


def test_gap_counts_flush_equals_observing_each_gap() -> None:
    rng = random.Random(7)
    gaps = [rng.random() ** 3 * 40 for _ in range(2000)] + list(CHUNK_BUCKETS) + [0.0, 99.0]
    one, batched = CollectorRegistry(), CollectorRegistry()
    direct = Histogram("g", "g", ["m"], buckets=CHUNK_BUCKETS, registry=one).labels("x")
    child = Histogram("g", "g", ["m"], buckets=CHUNK_BUCKETS, registry=batched).labels("x")
    counts = GapCounts()
    for g in gaps:
        direct.observe(g)
        counts(g)
    counts.flush_into(child)
    counts.flush_into(child)  # a second flush adds nothing
    assert exposition(one) == exposition(batched)


def test_finish_labels_are_bounded() -> None:
    assert finish_label("stop") == "stop" and finish_label(None) == "none"
    assert finish_label("x" * 1000) == "other" and finish_label(["a"]) == "other"
