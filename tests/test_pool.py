"""BackendPool without sockets: weights, the affinity ring, ejection and re-probe on an
injected clock, leases."""

from __future__ import annotations

from collections import Counter

from gateway.pool import BackendPool
from gateway.profiles import Backend, HealthSpec

A = Backend(name="a", url="http://a:1", weight=1)
B = Backend(name="b", url="http://b:1", weight=3)
C = Backend(name="c", url="http://c:1", weight=1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_weights_hold_when_requests_never_overlap() -> None:
    pool = BackendPool(HealthSpec(interval=0), clock=Clock())
    picks = Counter(pool.pick([A, B], set()).name for _ in range(400))  # type: ignore[union-attr]
    assert picks == {"a": 100, "b": 300}


def test_least_outstanding_relative_to_weight() -> None:
    pool = BackendPool(HealthSpec(interval=0), clock=Clock())
    leases = [pool.lease(B) for _ in range(3)]  # b: 3 outstanding / weight 3 = 1.0
    assert pool.pick([A, B], set()) is A  # a: 0 / 1
    held = pool.lease(A)
    held2 = pool.lease(A)  # a: 2.0 > b: 1.0
    assert pool.pick([A, B], set()) is B
    for lease in [*leases, held, held2]:
        lease.release()
    assert pool.state(A).outstanding == pool.state(B).outstanding == 0


def test_a_lease_is_released_once() -> None:
    pool = BackendPool(HealthSpec(interval=0), clock=Clock())
    lease = pool.lease(A)
    lease.release()
    lease.release()
    assert pool.state(A).outstanding == 0


def test_affinity_ring_is_stable_and_falls_back_when_the_owner_is_down() -> None:
    clock = Clock()
    pool = BackendPool(HealthSpec(interval=0, eject_after=1, cooloff=10), clock=clock)
    backends = [A, B, C]
    owners = {k: pool.pick(backends, set(), f"conv-{k}") for k in range(60)}
    assert {o.name for o in owners.values() if o} == {"a", "b", "c"}
    assert all(pool.pick(backends, set(), f"conv-{k}") is owners[k] for k in range(60))
    victim = owners[0]
    assert victim is not None
    pool.failure(victim, "connect refused")
    moved = pool.pick(backends, set(), "conv-0")
    assert moved is not None and moved is not victim
    # others keep their owner (consistent hashing moves only the victim's keys)
    kept = [k for k in range(60) if owners[k] is not victim]
    assert all(pool.pick(backends, set(), f"conv-{k}") is owners[k] for k in kept)
    clock.now += 11  # cool-off over; without active probes it takes traffic again
    assert pool.pick(backends, set(), "conv-0") is victim


def test_ejection_after_failures_in_a_row_and_probe_before_traffic() -> None:
    clock = Clock()

    async def probe(backend: Backend, seconds: float) -> bool:
        return True

    pool = BackendPool(HealthSpec(interval=5, eject_after=3, cooloff=10), probe, clock=clock)
    pool.failure(A, "5xx")
    pool.failure(A, "5xx")
    pool.success(A)  # a success resets the count
    pool.failure(A, "5xx")
    pool.failure(A, "5xx")
    assert pool.available(A)
    pool.failure(A, "5xx")
    assert not pool.available(A)
    assert pool.pick([A, B], set()) is B
    clock.now += 11
    assert not pool.available(A)  # cool-off over, but the probe has not confirmed it yet
    import asyncio

    asyncio.run(pool.check_once([A, B]))
    assert pool.available(A)


def test_all_down_still_tries_the_least_recently_failed() -> None:
    clock = Clock()
    pool = BackendPool(HealthSpec(interval=0, eject_after=1, cooloff=10), clock=clock)
    pool.failure(A, "x")
    clock.now += 1
    pool.failure(B, "x")
    assert pool.pick([A, B], set()) is A
    assert pool.pick([A, B], {A.url}) is B
    assert pool.pick([A, B], {A.url, B.url}) is None
