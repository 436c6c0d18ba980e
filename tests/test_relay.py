"""prime() and relay() driven by a fake chunk source on a virtual clock: every way a stream
can end, the upstream closed on every exit, the timeouts exact."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from gateway.errors import UpstreamDisconnected
from gateway.profiles import Timeouts
from gateway.stream import StreamNormalizer, prime, relay
from tests.helpers import assert_well_ended, sse_events
from tests.virtual_time import run_virtual

TIMEOUTS = Timeouts(connect=1, first_token=10, idle=5, total=60)


def chunk(text: str | None = None, finish: str | None = None) -> bytes:
    delta = {} if text is None else {"content": text}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return b"data: " + orjson.dumps({"id": "x", "choices": [choice]}) + b"\n\n"


class FakeSource:
    """A scripted upstream body: each step is bytes to return, a number of seconds to stall
    before the next step, or an exception to raise."""

    def __init__(self, steps: Sequence[bytes | float | BaseException]) -> None:
        self.steps = list(steps)
        self.closed: list[bool] = []  # the reuse flag of each close()

    async def read_chunk(self) -> bytes:
        assert not self.closed, "read after close"
        while self.steps:
            step = self.steps.pop(0)
            if isinstance(step, float | int):
                await asyncio.sleep(step)
            elif isinstance(step, BaseException):
                raise step
            else:
                return step
        return b""

    def close(self, *, reuse: bool = False) -> None:
        self.closed.append(reuse)


async def run_stream(
    source: FakeSource, timeouts: Timeouts = TIMEOUTS, **norm: Any
) -> tuple[bytes, StreamNormalizer]:
    loop = asyncio.get_running_loop()
    out: list[bytes] = []

    async def emit(frame: bytes) -> None:
        out.append(frame)

    normalizer = StreamNormalizer(public_model="m", endpoint="chat", **norm)
    opened = await prime(source, loop.time() + timeouts.first_token)
    tail = await relay(opened, normalizer, timeouts, loop.time() + timeouts.total, emit)
    return b"".join([*out, tail]), normalizer


def test_normal_end_reuses_the_connection() -> None:
    source = FakeSource([chunk("a"), chunk("b"), chunk(None, "stop"), b"data: [DONE]\n\n"])
    (body, norm), _ = run_virtual(run_stream(source))
    (final,) = assert_well_ended(sse_events(body))
    assert final["finish_reason"] == "stop" and norm.cause is None
    assert source.closed == [True]


def test_idle_timeout_sends_one_final_chunk_and_closes_upstream() -> None:
    source = FakeSource([chunk("a"), 1.0, chunk("b"), 30.0, chunk("never")])
    (body, norm), elapsed = run_virtual(run_stream(source))
    events = sse_events(body)
    (final,) = assert_well_ended(events)
    assert norm.cause == "idle_timeout" and final["gateway_termination"] == "idle_timeout"
    assert elapsed == pytest.approx(6.0)  # 1 s gap, then exactly the 5 s idle timeout
    assert source.closed == [False]  # closed, not reused: vLLM aborts the request


def test_total_timeout_bounds_a_trickling_stream() -> None:
    source = FakeSource([chunk("a"), *([4.0, chunk("x")] * 100)])
    (body, norm), elapsed = run_virtual(run_stream(source))
    assert_well_ended(sse_events(body))
    assert norm.cause == "total_timeout"
    assert elapsed == pytest.approx(60.0)
    assert source.closed == [False]


def test_upstream_drop_and_eof_without_done() -> None:
    for tail in (UpstreamDisconnected("reset"), b""):
        source = FakeSource([chunk("a"), tail])
        (body, norm), _ = run_virtual(run_stream(source))
        assert_well_ended(sse_events(body))
        assert norm.cause == "upstream_disconnect", tail
        assert source.closed == [False]


def test_prime_times_out_before_the_first_event_and_keepalives_do_not_count() -> None:
    source = FakeSource([b": keep-alive\n\n", 8.0, b": keep-alive\n\n", 8.0, chunk("late")])

    async def go() -> None:
        await prime(source, asyncio.get_running_loop().time() + 10)

    with pytest.raises(TimeoutError):
        run_virtual(go())


def test_prime_eof_before_any_event_is_an_upstream_error() -> None:
    async def go() -> None:
        await prime(FakeSource([b": keep-alive\n\n"]), 10.0)

    with pytest.raises(UpstreamDisconnected):
        run_virtual(go())


@pytest.mark.parametrize("where", ["reading", "emitting"])
def test_cancellation_closes_upstream_and_propagates(where: str) -> None:
    source = FakeSource([chunk("a"), chunk("b"), 3.0, chunk("c")])

    async def go() -> None:
        loop = asyncio.get_running_loop()
        norm = StreamNormalizer(public_model="m", endpoint="chat")
        opened = await prime(source, loop.time() + 10)
        sent = 0

        async def emit(frame: bytes) -> None:
            nonlocal sent
            sent += 1
            if where == "emitting" and sent == 2:
                await asyncio.sleep(100)  # a slow client's socket

        task = asyncio.ensure_future(relay(opened, norm, TIMEOUTS, loop.time() + 60, emit))
        await asyncio.sleep(1.0)  # mid-stall (reading) or mid-send (emitting)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run_virtual(go())
    assert source.closed == [False]


def test_a_bug_in_emit_closes_upstream() -> None:
    source = FakeSource([chunk("a"), chunk("b")])

    async def go() -> None:
        loop = asyncio.get_running_loop()
        norm = StreamNormalizer(public_model="m", endpoint="chat")
        opened = await prime(source, loop.time() + 10)

        async def emit(frame: bytes) -> None:
            raise RuntimeError("bug")

        await relay(opened, norm, TIMEOUTS, loop.time() + 60, emit)

    with pytest.raises(RuntimeError):
        run_virtual(go())
    assert source.closed == [False]


def test_stop_text_ends_the_stream_and_stops_reading() -> None:
    source = FakeSource([chunk("ok"), chunk("<|im_end|>"), chunk("leak"), 100.0, chunk("x")])
    (body, norm), elapsed = run_virtual(run_stream(source, stop_text=("<|im_end|>",)))
    events = sse_events(body)
    (final,) = assert_well_ended(events)
    text = "".join(c["delta"].get("content") or "" for e in events[:-1] for c in e["choices"])
    assert text == "ok" and final["finish_reason"] == "stop"
    assert norm.cause == "stop_text" and elapsed == 0.0
    assert source.closed == [False]


def test_close_is_idempotent() -> None:
    norm = StreamNormalizer(public_model="m", endpoint="chat")
    first = norm.close("idle_timeout")
    assert first.endswith(b"data: [DONE]\n\n")
    assert norm.close("client_disconnect") == b""
    assert norm.cause == "idle_timeout"
