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
        self._until: float | None = None

    async def read_chunk(self) -> bytes:
        """Like aiohttp's ``readany``: a cancelled read loses nothing (a stall keeps its
        end time across cancellations)."""
        assert not self.closed, "read after close"
        loop = asyncio.get_running_loop()
        while self.steps:
            step = self.steps[0]
            if isinstance(step, float | int):
                if self._until is None:
                    self._until = loop.time() + step
                await asyncio.sleep(self._until - loop.time())
                self._until = None
                self.steps.pop(0)
                continue
            self.steps.pop(0)
            if isinstance(step, BaseException):
                raise step
            return step
        return b""

    def read_nowait(self) -> bytes:
        """Like aiohttp's: bytes already there (the next step, if it is bytes), else b""."""
        assert not self.closed, "read after close"
        if self.steps and isinstance(self.steps[0], bytes) and self.steps[0]:
            return self.steps.pop(0)  # type: ignore[return-value]
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


def test_idle_timeout_ends_with_an_error_event_and_closes_upstream() -> None:
    source = FakeSource([chunk("a"), 1.0, chunk("b"), 30.0, chunk("never")])
    (body, norm), elapsed = run_virtual(run_stream(source))
    events = sse_events(body)
    assert_well_ended(events)
    assert norm.cause == "idle_timeout" and events[-2]["error"]["code"] == "idle_timeout"
    assert elapsed == pytest.approx(6.0)  # 1 s gap, then exactly the 5 s idle timeout
    assert source.closed == [False]  # closed, not reused: vLLM aborts the request


def test_graceful_idle_timeout_sends_one_final_chunk() -> None:
    source = FakeSource([chunk("a"), 30.0, chunk("never")])
    (body, _), _ = run_virtual(run_stream(source, termination="graceful"))
    (final,) = assert_well_ended(sse_events(body))
    assert final["finish_reason"] == "length" and final["gateway_termination"] == "idle_timeout"
    assert source.closed == [False]


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


def test_heartbeats_fill_silence_and_do_not_count_as_events() -> None:
    timeouts = Timeouts(connect=1, first_token=10, idle=30, total=600, heartbeat=10)
    source = FakeSource([chunk("a"), 25.0, chunk("b"), b"data: [DONE]\n\n"])
    (body, norm), elapsed = run_virtual(run_stream(source, timeouts))
    assert body.count(b": keep-alive\n\n") == 2  # at 10 s and 20 s of the 25 s gap
    assert_well_ended(sse_events(body))
    assert norm.cause is None and elapsed == pytest.approx(25)


def test_heartbeats_while_hidden_reasoning_streams() -> None:
    """Upstream events keep arriving (the idle timeout never fires) but nothing reaches
    the client: heartbeats still go out."""
    from gateway.profiles import ReasoningRules

    rules = ReasoningRules("think_tags", True, ("reasoning_content",), "hide", True)
    timeouts = Timeouts(connect=1, first_token=10, idle=5, total=600, heartbeat=10)
    steps: list[bytes | float | BaseException] = [chunk("<think>")]
    for _ in range(35):
        steps += [1.0, chunk("thinking ")]
    steps += [chunk("</think>answer"), chunk(None, "stop"), b"data: [DONE]\n\n"]
    source = FakeSource(steps)
    (body, _), elapsed = run_virtual(run_stream(source, timeouts, reasoning=rules))
    assert body.count(b": keep-alive\n\n") == 3  # at 10, 20 and 30 s
    assert b"thinking" not in body and b"answer" in body
    assert elapsed == pytest.approx(35)


def test_watchdog_under_uvloop_with_a_deadline_less_than_a_millisecond_away() -> None:
    """uvloop's ``call_at`` for a time under 1 ms away returns a plain ``Handle`` (no
    ``when()``); reads right after it, and its timeout, still work (they raised
    AttributeError inside a hidden-reasoning stream with a short heartbeat)."""
    import uvloop

    from gateway.stream import _Watchdog

    async def main() -> None:
        loop = asyncio.get_running_loop()
        dog = _Watchdog(loop)
        source = FakeSource([b"a", b"b", 5.0])
        try:
            assert await dog.read(source, loop.time() + 0.0003) == b"a"
            assert await dog.read(source, loop.time() + 0.0002) == b"b"
            with pytest.raises(TimeoutError):
                await dog.read(source, loop.time() + 0.0004)
            assert await asyncio.sleep(0, "not cancelled") == "not cancelled"
        finally:
            dog.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
