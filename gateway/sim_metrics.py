"""The simulated vLLM's load: admission into ``max_num_seqs`` slots, and ``/metrics`` in
vLLM's Prometheus names.

vLLM 0.32 (``vllm/v1/metrics/loggers.py``) labels its engine gauges ``{engine="0",
model_name="<first served name>"}``; the families below carry its exact HELP text and types
(``tests/test_sim_fidelity.py`` holds them to a recording of the real ``/metrics``). The
values come from the sim's own requests (a request waits for a free sequence slot as vLLM's
scheduler makes it wait) unless a test scripts them with ``POST /sim/load``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")


@dataclass(slots=True, eq=False)
class Slot:
    """One admitted request: its sequences and the tokens they hold in the KV cache."""

    seqs: int
    prompt_tokens: int
    generated: int = 0


class SimLoad:
    """Running/waiting sequences, KV-cache use, and the scripted overrides of a test."""

    OVERRIDABLE = ("running", "waiting", "kv")

    def __init__(self, model_name: str, max_num_seqs: int, kv_cache_tokens: int) -> None:
        self.max_num_seqs = max_num_seqs
        self.kv_cache_tokens = max(1, kv_cache_tokens)
        self.slots: set[Slot] = set()
        self.running = 0
        self.waiting = 0
        self._free = asyncio.Condition()
        self.override: dict[str, float] = {}
        self.metrics_delay = 0.0
        self.metrics_status: int | None = None
        self.metrics_drop = False
        self.registry = CollectorRegistry()
        labels = {"engine": "0", "model_name": model_name}
        names = ["model_name", "engine"]
        r = self.registry
        self._running = Gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            names,
            registry=r,
        ).labels(**labels)
        self._waiting = Gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            names,
            registry=r,
        ).labels(**labels)
        by_reason = Gauge(
            "vllm:num_requests_waiting_by_reason",
            "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for "
            "scheduling capacity; 'deferred' = deferred by transient constraints (LoRA "
            "budget, KV transfer, blocked status). Sum of all reasons equals "
            "vllm:num_requests_waiting.",
            [*names, "reason"],
            registry=r,
        )
        self._capacity = by_reason.labels(**labels, reason="capacity")
        by_reason.labels(**labels, reason="deferred").set(0)
        self._kv = Gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            names,
            registry=r,
        ).labels(**labels)
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", names, registry=r
        ).labels(**labels)
        self.generation_tokens = Counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            names,
            registry=r,
        ).labels(**labels)
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*names, "finished_reason"],
            registry=r,
        )
        self.success = {
            reason: success.labels(**labels, finished_reason=reason) for reason in FINISHED_REASONS
        }

    @asynccontextmanager
    async def admit(self, seqs: int, prompt_tokens: int) -> AsyncIterator[Slot]:
        """Wait for ``seqs`` free sequence slots (counted as waiting meanwhile), hold them."""
        slot = Slot(seqs, prompt_tokens)
        if self.running + seqs > self.max_num_seqs and self.running:
            self.waiting += seqs
            try:
                async with self._free:
                    await self._free.wait_for(
                        lambda: self.running + seqs <= self.max_num_seqs or not self.running
                    )
            finally:
                self.waiting -= seqs
        self.running += seqs
        self.slots.add(slot)
        self.prompt_tokens.inc(prompt_tokens)
        try:
            yield slot
        finally:
            self.running -= seqs
            self.slots.discard(slot)
            self.generation_tokens.inc(slot.generated)
            if self.waiting:
                async with self._free:
                    self._free.notify_all()

    def finished(self, reason: str | None) -> None:
        counter = self.success.get(reason or "abort")
        if counter is not None:
            counter.inc()

    def values(self) -> dict[str, float]:
        held = sum(s.prompt_tokens + s.generated for s in self.slots)
        real = {
            "running": float(self.running),
            "waiting": float(self.waiting),
            "kv": min(1.0, held / self.kv_cache_tokens),
        }
        return {**real, **self.override}

    def exposition(self) -> bytes:
        v = self.values()
        self._running.set(v["running"])
        self._waiting.set(v["waiting"])
        self._capacity.set(v["waiting"])
        self._kv.set(v["kv"])
        return generate_latest(self.registry)

    def script(self, body: dict[str, Any]) -> None:
        """``POST /sim/load``: numbers override what is reported (null clears one);
        ``metrics_delay`` stalls ``/metrics``, ``metrics_status`` fails it with that HTTP
        status, ``metrics_drop`` closes the connection without an answer."""
        for key in self.OVERRIDABLE:
            if key in body:
                value = body[key]
                if value is None:
                    self.override.pop(key, None)
                elif isinstance(value, int | float) and not isinstance(value, bool):
                    self.override[key] = float(value)
                else:
                    raise TypeError(key)
        if "metrics_delay" in body:
            self.metrics_delay = float(body["metrics_delay"] or 0)
        if "metrics_status" in body:
            status = body["metrics_status"]
            self.metrics_status = int(status) if status is not None else None
        if "metrics_drop" in body:
            self.metrics_drop = bool(body["metrics_drop"])

    def clear(self) -> None:
        self.override.clear()
        self.metrics_delay = 0.0
        self.metrics_status = None
        self.metrics_drop = False
