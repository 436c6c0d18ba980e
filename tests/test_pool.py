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


# -- load routing (BackendInfo facts injected, no sockets) ---------------------------------

from gateway.backend_info import MAX_SAMPLES, BackendInfo, parse_load, parse_models  # noqa: E402
from gateway.routing import Load, RoutingSpec, score  # noqa: E402

D = Backend(name="d", url="http://d:1", weight=1)


def load_pool(clock: Clock, **routing: object) -> tuple[BackendPool, BackendInfo]:
    info = BackendInfo(None, clock=clock)
    info.routing = RoutingSpec.model_validate(routing)
    return BackendPool(HealthSpec(interval=0), clock=clock, info=info), info


def set_load(
    info: BackendInfo, clock: Clock, b: Backend, running: float, waiting: float, kv: float
) -> None:
    info.facts(b.url).load = Load(running, waiting, kv, clock.now)


def test_load_score_picks_the_least_loaded_backend_by_vllm_metrics() -> None:
    clock = Clock()
    pool, info = load_pool(clock)
    set_load(info, clock, A, running=10, waiting=0, kv=0.3)  # 2.5 + 2.4 = 4.9
    set_load(info, clock, C, running=2, waiting=0, kv=0.1)  # 0.5 + 0.8 = 1.3
    assert pool.choose([A, C], set()) == (C, "load")
    # queue depth weighs more than a long running batch
    set_load(info, clock, A, running=50, waiting=0, kv=0.5)  # 12.5 + 4 = 16.5
    set_load(info, clock, C, running=20, waiting=3, kv=0.95)  # 5 + 12 + 7.6 = 24.6
    assert pool.choose([A, C], set()) == (A, "load")


def test_load_score_counts_requests_sent_since_the_scrape() -> None:
    clock = Clock()
    pool, info = load_pool(clock)
    set_load(info, clock, A, running=0, waiting=0, kv=0)
    set_load(info, clock, C, running=1, waiting=0, kv=0)  # 0.25
    leases = [pool.lease(A) for _ in range(2)]  # a: pending 2 -> 2.0
    assert pool.choose([A, C], set()) == (C, "load")
    assert score(info.facts(A.url).load, 2, 1, info.routing.weights) == 2.0  # type: ignore[arg-type]
    for lease in leases:
        lease.release()


def test_equal_scores_share_by_weight() -> None:
    clock = Clock()
    pool, info = load_pool(clock)
    for b in (A, B):
        set_load(info, clock, b, running=0, waiting=0, kv=0)
    picks = Counter(pool.choose([A, B], set())[0].name for _ in range(400))  # type: ignore[union-attr]
    assert picks == {"a": 100, "b": 300}


def test_stale_or_missing_load_falls_back_to_least_outstanding() -> None:
    clock = Clock()
    pool, info = load_pool(clock, stale_after=5)
    set_load(info, clock, A, running=0, waiting=0, kv=0)
    set_load(info, clock, C, running=90, waiting=40, kv=1.0)
    held = pool.lease(A)
    assert pool.choose([A, C], set()) == (A, "load")
    clock.now += 6  # both scrapes are now stale
    assert pool.choose([A, C], set()) == (C, "stale_metrics")  # c: 0 outstanding < a: 1
    set_load(info, clock, A, running=0, waiting=0, kv=0)  # only a is fresh: still no mix
    assert pool.choose([A, C], set()) == (C, "stale_metrics")
    held.release()


def test_scraping_off_balances_by_outstanding() -> None:
    clock = Clock()
    pool, info = load_pool(clock, scrape_interval=0)
    set_load(info, clock, A, running=90, waiting=40, kv=1.0)
    assert pool.choose([A, C], set())[1] == "least_outstanding"
    off = Backend(name="x", url="http://x:1", scrape_metrics=False)
    pool2, info2 = load_pool(clock)
    set_load(info2, clock, off, running=0, waiting=0, kv=0)
    assert info2.fresh_load(off) is None  # opted out per backend
    off2 = Backend(name="y", url="http://y:1", scrape_metrics=False)
    assert pool2.choose([off, off2], set())[1] == "least_outstanding"
    set_load(info2, clock, D, running=0, waiting=0, kv=0)
    assert pool2.choose([off, D], set())[1] == "stale_metrics"  # no score for `off`: no mix


def test_affinity_holds_until_its_backend_is_saturated() -> None:
    clock = Clock()
    pool, info = load_pool(clock, saturation={"waiting": 4, "kv": 0.95})
    backends = [A, C, D]
    owner, why = pool.choose(backends, set(), "conv-1")
    assert why == "affinity" and owner is not None
    others = [b for b in backends if b is not owner]
    set_load(info, clock, owner, running=30, waiting=3, kv=0.9)  # busy, not saturated
    for b in others:
        set_load(info, clock, b, running=0, waiting=0, kv=0)
    assert pool.choose(backends, set(), "conv-1") == (owner, "affinity")
    set_load(info, clock, owner, running=30, waiting=4, kv=0.5)  # queue at the threshold
    moved, why = pool.choose(backends, set(), "conv-1")
    assert why == "affinity_saturated" and moved in others
    set_load(info, clock, owner, running=30, waiting=0, kv=0.97)  # KV cache nearly full
    assert pool.choose(backends, set(), "conv-1")[1] == "affinity_saturated"
    clock.now += 10  # the owner's load went stale: affinity holds again
    assert pool.choose(backends, set(), "conv-1") == (owner, "affinity")


def test_reasons_for_single_and_all_down() -> None:
    clock = Clock()
    pool = BackendPool(HealthSpec(interval=0, eject_after=1, cooloff=10), clock=clock)
    assert pool.choose([A], set()) == (A, "single")
    pool.failure(A, "x")
    assert pool.choose([A, C], set()) == (C, "single")
    pool.failure(C, "x")
    assert pool.choose([A, C], set()) == (A, "all_down")
    assert pool.choose([A, C], {A.url, C.url}) == (None, "none")


VLLM_METRICS = b"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
vllm:num_requests_waiting{engine="0",model_name="m"} 1.0
vllm:num_requests_waiting{engine="1",model_name="m"} 0.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 7.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="we}ird"} 0.25
vllm:kv_cache_usage_perc{engine="2",model_name="m"} NaN
vllm:prompt_tokens_total{engine="0",model_name="m"} 1234.0
"""


def test_parse_load_sums_engines_and_averages_kv() -> None:
    assert parse_load(VLLM_METRICS) == (5.0, 1.0, 0.375)
    old = b'vllm:gpu_cache_usage_perc{model_name="m"} 0.8\nvllm:num_requests_running 1\n'
    assert parse_load(old) == (1.0, 0.0, 0.8)
    assert parse_load(b"# nothing of vLLM here\nprocess_cpu_seconds_total 3\n") is None
    assert parse_load(b"vllm:num_requests_running{broken 3\nvllm:kv_cache_usage_perc x\n") is None


def test_parse_load_hostile_bodies() -> None:
    """Lines of other families, names that only start like a load family, values on the
    next line and samples past the cap are not read."""
    noise = b"vllm:num_requests_running_total 7\n" + b"vllm:x 1\n" * 50_000
    tail = b'vllm:num_requests_waiting{engine="0"} 2\n'
    assert parse_load(noise + tail) == (0.0, 2.0, 0.0)
    assert parse_load(b"vllm:num_requests_running\n5\n") is None
    flood = b"vllm:num_requests_running 1\n" * (MAX_SAMPLES + 500)
    assert parse_load(flood) == (float(MAX_SAMPLES), 0.0, 0.0)
    assert parse_load(b"vllm:num_requests_waiting -3\nvllm:num_requests_waiting inf\n") is None
    huge = b"vllm:num_requests_running 1e308\n" * 3 + b"vllm:kv_cache_usage_perc 1e308\n"
    assert parse_load(huge) == (3e9, 0.0, 1.0)  # finite: the load stays comparable


def test_parse_models_reads_max_model_len_per_served_id() -> None:
    raw = (
        b'{"object":"list","data":[{"id":"a","max_model_len":8192},'
        b'{"id":"b"},{"id":"c","max_model_len":"9"},{"id":"d","max_model_len":true},7]}'
    )
    assert parse_models(raw) == {"a": 8192}
    for bad in (b"not json", b"[]", b'{"data": {}}'):
        try:
            parse_models(bad)
        except ValueError:
            continue
        raise AssertionError(bad)
