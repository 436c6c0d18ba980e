"""``BackendPool``: which backend serves a request, and what the gateway knows of each.

* Balancing: least outstanding requests relative to ``weight``; ties go to a smooth weighted
  round-robin, so weights hold even when requests never overlap.
* Affinity (per model, optional): a conversation's key (a client session header, or a hash of
  its stable prefix: system + first user turn) is placed on a consistent-hash ring so the same
  conversation reaches the same vLLM and hits its prefix cache; an unhealthy owner falls back
  to balancing.
* Health: active probes (``GET /health`` per backend URL, at an interval, with a timeout) and
  passive ejection (``eject_after`` connect errors / 5xx in a row mark a backend down for
  ``cooloff`` seconds, after which it is probed again before it takes traffic).
* Load (optional, :mod:`routing`): with a :class:`backend_info.BackendInfo`, balancing uses
  each backend's scraped vLLM load score instead of the outstanding count, and affinity
  yields when its backend is saturated. :meth:`BackendPool.choose` names the reason.

State is per backend URL (one vLLM may serve several public models) and lives as long as the
process; profiles only say which URLs exist.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from .backend_info import BackendInfo
from .profiles import Backend, HealthSpec, ProfileSet
from .routing import saturated, score
from .upstream import Lease

log = logging.getLogger("gateway.pool")

Probe = Callable[[Backend, float], Awaitable[bool]]


@dataclass
class BackendState:
    url: str
    healthy: bool = True
    outstanding: int = 0
    failures: int = 0
    down_until: float = 0.0
    last_error: str | None = None
    #: the probe has not confirmed it since it was ejected
    needs_probe: bool = False
    #: smooth weighted round-robin state
    current_weight: int = 0

    def available(self, now: float) -> bool:
        return self.healthy and now >= self.down_until and not self.needs_probe

    def describe(self, now: float) -> dict[str, object]:
        state = "up" if self.available(now) else "down"
        return {
            "state": state,
            "outstanding": self.outstanding,
            "consecutive_failures": self.failures,
            "last_error": self.last_error,
        }


def _hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Consistent hashing with ``100 * weight`` points per backend."""

    def __init__(self, backends: Sequence[Backend]) -> None:
        points = sorted(
            (_hash(f"{b.url}#{i}"), b.url) for b in backends for i in range(100 * b.weight)
        )
        self._keys = [p[0] for p in points]
        self._urls = [p[1] for p in points]

    def walk(self, key: str) -> Iterable[str]:
        """Backend URLs in ring order from ``key``'s position (each once)."""
        if not self._keys:
            return
        start = bisect.bisect(self._keys, _hash(key)) % len(self._keys)
        seen: set[str] = set()
        for i in range(len(self._keys)):
            url = self._urls[(start + i) % len(self._keys)]
            if url not in seen:
                seen.add(url)
                yield url


class BackendPool:
    """Selection and health for every backend of the current profiles."""

    def __init__(
        self,
        health: HealthSpec,
        probe: Probe | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        info: BackendInfo | None = None,
    ) -> None:
        self.health = health
        self._probe = probe
        self._clock = clock
        #: leases held over all backends: upstream requests in flight
        self.leased = 0
        #: facts scraped from each backend (max_model_len, load); None: none are kept
        self.info = info
        self._states: dict[str, BackendState] = {}
        self._rings: dict[tuple[Backend, ...], HashRing] = {}
        self._task: asyncio.Task[None] | None = None

    def state(self, backend: Backend) -> BackendState:
        st = self._states.get(backend.url)
        if st is None:
            st = self._states[backend.url] = BackendState(backend.url)
        return st

    def pick(
        self, backends: Sequence[Backend], exclude: set[str], affinity_key: str | None = None
    ) -> Backend | None:
        """The backend for the next attempt, or ``None`` when every one was tried."""
        return self.choose(backends, exclude, affinity_key)[0]

    def choose(
        self, backends: Sequence[Backend], exclude: set[str], affinity_key: str | None = None
    ) -> tuple[Backend | None, str]:
        """The backend for the next attempt and why (one of :data:`routing.REASONS`), or
        ``(None, "none")`` when every one was tried."""
        now = self._clock()
        left = [b for b in backends if b.url not in exclude]
        if not left:
            return None, "none"
        healthy = [b for b in left if self.state(b).available(now)]
        if not healthy:
            # All down: try them anyway (least recently failed first) rather than refuse.
            return min(left, key=lambda b: self.state(b).down_until), "all_down"
        if affinity_key is not None:
            ring = self._rings.get(tuple(backends))
            if ring is None:
                ring = self._rings[tuple(backends)] = HashRing(backends)
            ok = {b.url: b for b in healthy}
            owner = next((ok[url] for url in ring.walk(affinity_key) if url in ok), None)
            if owner is not None:
                info = self.info
                load = info.fresh_load(owner) if info is not None else None
                if load is None or info is None or not saturated(load, info.routing.saturation):
                    return owner, "affinity"
                return self._balance(healthy)[0], "affinity_saturated"
        return self._balance(healthy)

    def _balance(self, candidates: list[Backend]) -> tuple[Backend, str]:
        """Lowest load score when every candidate has a fresh load; else least outstanding
        relative to weight. Ties: smooth weighted round-robin."""
        if len(candidates) == 1:
            return candidates[0], "single"
        info = self.info
        reason = "least_outstanding"
        if info is not None and any(info.scraping(b) for b in candidates):
            fresh = [(b, load) for b in candidates if (load := info.fresh_load(b)) is not None]
            if len(fresh) == len(candidates):
                w = info.routing.weights
                scores = [score(load, self.state(b).outstanding, b.weight, w) for b, load in fresh]
                low = min(scores)
                tied = [b for b, s in zip(candidates, scores, strict=True) if s == low]
                return self._weighted_round_robin(tied), "load"
            reason = "stale_metrics"
        loads = [self.state(b).outstanding / b.weight for b in candidates]
        low = min(loads)
        tied = [b for b, load in zip(candidates, loads, strict=True) if load == low]
        return self._weighted_round_robin(tied), reason

    def _weighted_round_robin(self, tied: list[Backend]) -> Backend:
        """nginx's smooth weighted round-robin among equally loaded backends."""
        total = 0
        best: Backend | None = None
        best_cw = 0
        for b in tied:
            st = self.state(b)
            st.current_weight += b.weight
            total += b.weight
            if best is None or st.current_weight > best_cw:
                best, best_cw = b, st.current_weight
        assert best is not None
        self.state(best).current_weight -= total
        return best

    def lease(self, backend: Backend) -> Lease:
        """Count one request against ``backend`` until the returned lease is released; the
        only place ``outstanding`` changes."""
        st = self.state(backend)
        st.outstanding += 1
        self.leased += 1

        def release() -> None:
            st.outstanding -= 1
            self.leased -= 1

        return Lease(release)

    def success(self, backend: Backend) -> None:
        st = self.state(backend)
        st.failures = 0

    def failure(self, backend: Backend, error: str) -> None:
        """A connect error or 5xx: ``eject_after`` in a row takes it out for ``cooloff``."""
        st = self.state(backend)
        st.failures += 1
        st.last_error = error
        if st.failures >= self.health.eject_after and st.down_until <= self._clock():
            st.down_until = self._clock() + self.health.cooloff
            st.needs_probe = self._probe is not None and self.health.interval > 0
            log.warning(
                "backend %s ejected for %gs after %d failures: %s",
                backend.name,
                self.health.cooloff,
                st.failures,
                error,
            )

    def describe(
        self,
        backends: Iterable[tuple[str, Backend]],
        *,
        urls: bool = False,
        upstream: dict[str, str] | None = None,
    ) -> dict[str, dict[str, object]]:
        """``{"<model>/<backend name>": state}``; internal URLs only when ``urls`` (admin).
        With ``upstream`` (public model -> served model id), also what was learned of each
        backend: its ``max_model_len`` and last scraped load."""
        now = self._clock()
        out: dict[str, dict[str, object]] = {}
        for model, b in backends:
            info = self.state(b).describe(now)
            if upstream is not None and self.info is not None:
                info.update(self.info.describe(b, upstream.get(model, model)))
            out[f"{model}/{b.name}"] = {"url": b.url, **info} if urls else info
        return out

    def available(self, backend: Backend) -> bool:
        return self.state(backend).available(self._clock())

    # -- active health checks -------------------------------------------------------------

    def start(self, profiles: Callable[[], ProfileSet]) -> None:
        """Probe the backends of the current profiles, with their current health settings."""
        if self._probe is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(profiles))
        if self.info is not None:
            self.info.start(profiles, self._outstanding)

    def _outstanding(self, url: str) -> int:
        st = self._states.get(url)
        return 0 if st is None else st.outstanding

    async def check_once(self, backends: Iterable[Backend]) -> None:
        assert self._probe is not None
        unique = {b.url: b for b in backends}
        results = await asyncio.gather(
            *(self._probe(b, self.health.timeout) for b in unique.values())
        )
        now = self._clock()
        for b, ok in zip(unique.values(), results, strict=True):
            st = self.state(b)
            if ok and now >= st.down_until:
                if not st.healthy or st.needs_probe:
                    log.info("backend %s is up", b.name)
                st.healthy, st.needs_probe, st.failures = True, False, 0
            elif not ok:
                if st.healthy:
                    log.warning("backend %s failed its health check", b.name)
                st.healthy = False
                st.last_error = "health check failed"
        live = set(unique)
        for url in [u for u in self._states if u not in live and not self._states[u].outstanding]:
            del self._states[url]  # no longer in any profile

    async def _run(self, profiles: Callable[[], ProfileSet]) -> None:
        while True:
            current = profiles()
            self.health = current.health
            if self.health.interval > 0:
                await self.check_once(current.backends())
            else:  # active checks turned off: their last verdict must not linger
                for st in self._states.values():
                    st.healthy, st.needs_probe = True, False
            await asyncio.sleep(self.health.interval or 1.0)

    async def aclose(self) -> None:
        if self.info is not None:
            await self.info.aclose()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
