"""The stream contract: whatever the upstream sends, the client gets well-formed SSE that
ends with ``data: [DONE]`` after exactly one of:

* one final chunk per choice, with a ``finish_reason`` from OpenAI's set (a normal end, a
  stop string the gateway caught, a repaired ``null`` finish); or
* one OpenAI error event ``{"error": {...}}``: the upstream's own error event, or -- with
  ``stream_termination: error``, the default -- the reason the gateway cut the stream after
  its first byte (``idle_timeout``, ``total_timeout``, ``upstream_disconnect``,
  ``upstream_abort``, ``server_shutting_down``), so that SDKs raise instead of returning a
  partial answer that looks complete. With ``stream_termination: graceful`` such a stream
  ends with final chunks instead (``finish_reason: length`` plus the side fields
  ``upstream_finish_reason`` and ``gateway_termination``), for front ends that prefer it.

:class:`StreamNormalizer` is sans-I/O (payloads in, frames out); :func:`relay` drives it
from an upstream response under the named timeouts and sends heartbeats (SSE comments)
while nothing is forwarded. Stream ends are built in one place,
:meth:`StreamNormalizer.close`.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson

from .errors import UpstreamDisconnected, UpstreamError, UpstreamProtocolError
from .profiles import ReasoningRules, Timeouts
from .protocol import DONE_FRAME, FINISH_REASONS, FINISH_REPAIRS, Endpoint, error_body, sse_frame
from .reasoning import UPSTREAM_FIELDS, ReasoningStream, split_message
from .sse import EventTooLarge, SSEDecoder
from .stoptext import StopTextMatcher
from .usage import fill_reasoning_tokens

HEARTBEAT_FRAME = b": keep-alive\n\n"

#: why the gateway cut a stream -> (error type, code, message) for the error event
_CUT_ERRORS = {
    "idle_timeout": (
        "timeout_error",
        "idle_timeout",
        "The model stopped sending for longer than the idle timeout; the answer is incomplete.",
    ),
    "total_timeout": (
        "timeout_error",
        "total_timeout",
        "The request ran past its total time limit; the answer is incomplete.",
    ),
    "upstream_disconnect": (
        "upstream_error",
        "upstream_disconnect",
        "The connection to the model server broke; the answer is incomplete.",
    ),
    "upstream_abort": (
        "upstream_error",
        "upstream_abort",
        "The model server aborted the request; the answer is incomplete.",
    ),
    "shutdown": (
        "server_error",
        "server_shutting_down",
        "The gateway is shutting down; the answer is incomplete. Retry the request.",
    ),
    "gateway_error": ("server_error", "internal_error", "Internal gateway error."),
}
#: graceful ends report these causes as a finish_reason
_CAUSE_FINISH = {"stop_text": "stop"}

Termination = Literal["error", "graceful"]


@functools.lru_cache(maxsize=256)
def _char_class(chars: frozenset[str]) -> Callable[[str], Any]:
    if not chars:
        return lambda text: None
    return re.compile("[" + "".join(re.escape(c) for c in sorted(chars)) + "]").search


def special_chars(
    stop_text: tuple[str, ...], reasoning: ReasoningRules | None
) -> Callable[[str], Any]:
    """``search(text)``: a match where ``text`` has a character that begins a stop string,
    or ``<`` (a think tag) when reasoning is parsed from the text."""
    chars = {s[0] for s in stop_text}
    if reasoning is not None and reasoning.parser == "think_tags" and reasoning.mode != "inline":
        chars.add("<")
    return _char_class(frozenset(chars))


def normalize_finish(reason: Any) -> str:
    if not isinstance(reason, str):
        return "stop"
    return reason if reason in FINISH_REASONS else FINISH_REPAIRS.get(reason, "stop")


class _Choice:
    __slots__ = ("finished", "matcher", "reasoning", "started")
    finished: bool

    def __init__(self, stop_text: tuple[str, ...], reasoning: ReasoningStream | None) -> None:
        self.matcher = StopTextMatcher(stop_text) if stop_text else None
        self.reasoning = reasoning
        self.finished = False
        self.started = False


class StreamNormalizer:
    """Rewrites upstream chunks for the client and tracks what is still owed to it.

    ``n`` is the number of choices the upstream streams (``n`` times the number of prompts
    for a list of prompts); an index outside ``range(n)`` is a protocol error."""

    def __init__(
        self,
        *,
        public_model: str,
        endpoint: Endpoint,
        stop_text: tuple[str, ...] = (),
        include_usage: bool = False,
        n: int = 1,
        reasoning: ReasoningRules | None = None,
        assistant_prefix: str = "",
        termination: Termination = "error",
        fast: bool = True,
    ) -> None:
        self.public_model = public_model
        self.chat = endpoint == "chat"
        self.reasoning = reasoning if self.chat else None
        self.assistant_prefix = assistant_prefix
        self.stop_text = stop_text
        self.include_usage = include_usage
        self.termination = termination
        self._n = n
        self._choices: dict[int, _Choice] = {}
        self._n_finished = 0
        self._usage_frame: bytes | None = None
        self._id: str | None = None
        self._created: int | None = None
        #: the upstream sent ``[DONE]``
        self.saw_done = False
        #: an error event was sent; the stream ends with ``[DONE]`` only
        self.errored = False
        #: the normalizer saw the end of what the client gets, before the upstream's end:
        #: "stop_text" (every choice finished, one by a stop string) or "upstream_error" (an
        #: error or unreadable event); nothing more is read from the upstream
        self.ended: str | None = None
        #: vLLM sent an abort/error finish (error mode: the stream ends with an error event)
        self.aborted = False
        #: the upstream's usage object, when it sent one
        self.usage: dict[str, Any] | None = None
        #: why the stream ended, once :meth:`close` ran (None: the upstream ended it)
        self.cause: str | None = None
        #: (upstream finish_reason, normalized) of each choice, as they end
        self.finishes: list[tuple[Any, str]] = []
        #: perf_counter() when the first text / the first answer (content) text went out
        self.first_text_at: float | None = None
        self.first_content_at: float | None = None
        self.stop_text_hits = 0
        #: seconds the gateway spent processing this stream's chunks (set by :func:`relay`)
        self.overhead = 0.0
        self._closed = False
        #: finds a character that could begin a stop string or a think tag (the fast path
        #: takes only text without one); None turns the fast path off
        self._special = special_chars(stop_text, self.reasoning) if fast else None

    def _choice(self, index: int) -> _Choice:
        st = self._choices.get(index)
        if st is None:
            rs = None
            if self.reasoning is not None:
                rs = ReasoningStream(self.reasoning, self.assistant_prefix)
            st = self._choices[index] = _Choice(self.stop_text, rs)
        return st

    @property
    def _all_finished(self) -> bool:
        return self._n_finished >= self._n

    def _finish(self, st: _Choice) -> None:
        st.finished = True
        self._n_finished += 1

    def feed(self, payload: bytes) -> list[bytes]:
        """One SSE ``data`` payload from upstream -> frames for the client."""
        if payload == b"[DONE]":
            self.saw_done = True
            return []
        if self.ended is not None:
            return []
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return self._error(
                "upstream sent an unreadable stream event", "upstream_protocol_error"
            )
        if not isinstance(obj, dict):
            return self._error(
                "upstream sent an unexpected stream event", "upstream_protocol_error"
            )
        choices = obj.get("choices")
        if self._special is not None and type(choices) is list and len(choices) == 1:
            fast = self._fast_path(obj, choices[0])
            if fast is not None:
                return fast
        if choices is not None and not (
            isinstance(choices, list)
            and all(
                isinstance(c, dict) and type(i := c.get("index", 0)) is int and 0 <= i < self._n
                for c in choices
            )
        ):
            return self._error(
                "upstream sent an unexpected stream event", "upstream_protocol_error"
            )
        if choices is None and "error" in obj:
            self.errored = True
            self.ended = "upstream_error"
            err = obj["error"] if isinstance(obj["error"], dict) else {"message": str(obj["error"])}
            return [sse_frame({"error": err})]
        if self._id is None:
            self._id = obj.get("id")
            self._created = obj.get("created")
        obj["model"] = self.public_model
        usage = obj.get("usage")
        if usage is not None:
            if isinstance(usage, dict):
                self.usage = usage
                if self.reasoning is not None and not choices:  # the usage chunk
                    fill_reasoning_tokens(usage, self.reasoning_chars, self.answer_chars)
            if not choices:
                if not self.include_usage:
                    return []
                frame = sse_frame(obj)
                if self._all_finished:
                    return [frame]
                self._usage_frame = frame  # owed after the final chunk(s)
                return []
            if not self.include_usage:
                del obj["usage"]
        if not choices:
            return []
        kept = []
        for ch in choices:
            st = self._choice(ch.get("index", 0))
            if st.finished:
                continue  # a second finish or text after it: the client already has its end
            st.started = True
            if self._scrub(ch, st):
                kept.append(ch)
        if (
            self.ended is None
            and self._all_finished
            and any(c.matcher and c.matcher.hit for c in self._choices.values())
        ):
            self.ended = "stop_text"
        if not kept:
            return []
        if self.first_content_at is None:
            self._note_first_text(kept)
        obj["choices"] = kept
        return [sse_frame(obj)]

    def _fast_path(self, obj: dict[str, Any], ch: Any) -> list[bytes] | None:
        """The common chunk, cheaply: one started choice, one text field, no finish, and no
        character in the text that could begin a stop string or a think tag, with nothing
        held back. Returns None for anything else (the full path then handles it); the
        output is the full path's, byte for byte (tested by a property)."""
        if type(ch) is not dict or ch.get("finish_reason") is not None or "usage" in obj:
            return None
        index = ch.get("index", 0)
        if type(index) is not int:
            return None
        st = self._choices.get(index)
        if st is None or st.finished or not st.started or ch.get("logprobs") is not None:
            return None
        if self.chat:
            delta = ch.get("delta")
            if type(delta) is not dict or len(delta) != 1:
                return None
            ((key, text),) = delta.items()
        else:
            key, text = "text", ch.get("text")
        assert self._special is not None
        if type(text) is not str or not text or self._special(text) is not None:
            return None
        m = st.matcher
        if m is not None and m.holding:
            return None
        rs = st.reasoning
        if rs is not None:
            out = rs.fast_delta(key, text)
            if out is None:
                return None
            if not out:
                return []  # hidden reasoning: nothing for the client
            ch["delta"] = out
        elif key != ("content" if self.chat else "text"):
            return None
        if self._id is None:
            self._id = obj.get("id")
            self._created = obj.get("created")
        obj["model"] = self.public_model
        if self.first_content_at is None:
            self._note_first_text([ch])
        return [sse_frame(obj)]

    def _scrub(self, ch: dict[str, Any], st: _Choice) -> bool:
        """Stop text, reasoning split and finish normalization of one choice; False = drop."""
        reason = ch.get("finish_reason")
        if isinstance(reason, str) and reason in FINISH_REPAIRS and self.termination == "error":
            # vLLM aborted the request: the text so far goes out, then the error event
            # (reading goes on to [DONE], for the usage counts)
            self.finishes.append((reason, "error"))
            ch["finish_reason"] = None
            self.aborted = True
            self._scrub(ch, st)
            st.finished = True  # nothing more for it; the stream ends with the error event
            return True
        holder = ch.get("delta") if self.chat else ch
        if not isinstance(holder, dict):
            holder = ch["delta"] = {}
        key = "content" if self.chat else "text"
        text = holder.get(key)
        hit = False
        m = st.matcher
        if m is not None and (isinstance(text, str) or reason is not None):
            out, hit = m.feed(text if isinstance(text, str) else "")
            if not hit and reason is not None:
                out += m.flush()
                hit = m.hit
            if isinstance(text, str) or out:
                holder[key] = out
            if hit:
                ch["finish_reason"] = "stop"
                ch["stop_reason"] = m.matched
                ch["upstream_finish_reason"] = reason
                ch["gateway_termination"] = "stop_text"
                self.stop_text_hits += 1
        rs = st.reasoning
        # text or reasoning the processing below may hold back or hide
        carried = bool(text) or (rs is not None and any(f in holder for f in UPSTREAM_FIELDS))
        if rs is not None:
            rs.delta(holder)
        if hit or reason is not None:
            self._finish(st)
            if not hit:
                norm = normalize_finish(reason)
                if norm != reason:
                    ch["finish_reason"] = norm
                    ch["upstream_finish_reason"] = reason
            if rs is not None:
                rs.finish(holder, ch, ch["finish_reason"])
            self.finishes.append((reason, ch["finish_reason"]))
            return True
        if self.chat and (carried or not holder):
            # Send the chunk only if something is left in it: text held back (stop-text
            # prefix, partial tag) and hidden reasoning, split by the gateway or by vLLM,
            # leave nothing, nor does an empty delta (heartbeats keep the connection alive
            # meanwhile).
            return "role" in holder or any(holder.values()) or ch.get("logprobs") is not None
        return True

    def _note_first_text(self, choices: list[dict[str, Any]]) -> None:
        for ch in choices:
            holder = ch.get("delta") if self.chat else ch
            if not isinstance(holder, dict):
                continue
            key = "content" if self.chat else "text"
            if holder.get(key):
                now = time.perf_counter()
                self.first_content_at = now
                if self.first_text_at is None:
                    self.first_text_at = now
                return
            if self.first_text_at is None and any(
                isinstance(v, str) and v for k, v in holder.items() if k not in ("role", key)
            ):
                self.first_text_at = time.perf_counter()

    @property
    def reasoning_chars(self) -> int:
        return sum(c.reasoning.chars for c in self._choices.values() if c.reasoning)

    @property
    def answer_chars(self) -> int:
        return sum(c.reasoning.answer_chars for c in self._choices.values() if c.reasoning)

    def protocol_error(self, message: str) -> bytes:
        """The upstream broke the protocol outside any one payload (e.g. an event too
        large): the error event; the stream then ends with ``[DONE]``."""
        return b"".join(self._error(message, "upstream_protocol_error"))

    def _error(self, message: str, code: str) -> list[bytes]:
        self.errored = True
        self.ended = "upstream_error"
        return [sse_frame(error_body(message, "upstream_error", code=code))]

    def close(self, cause: str | None) -> bytes:
        """The end of the stream (see module doc). ``cause``: why the gateway ended it, None
        when the upstream did. Only the first call counts; later ones return nothing."""
        if self._closed:
            return b""
        self._closed = True
        self.cause = cause = cause or self.ended or ("upstream_abort" if self.aborted else None)
        if cause == "client_disconnect":
            return b""  # nobody to send it to
        if self.errored:
            return DONE_FRAME
        cut = _CUT_ERRORS.get(cause or "")
        if cut is not None and self._all_finished and cause != "gateway_error":
            cut = None  # every choice had its end already: only the upstream's [DONE] was owed
        if cut is not None and (self.termination == "error" or cause == "gateway_error"):
            self.errored = True
            type_, code, message = cut
            unfinished = sum(not self._choice(i).finished for i in range(self._n))
            self.finishes += [(None, "error")] * unfinished
            return sse_frame(error_body(message, type_, code=code)) + DONE_FRAME
        finish = _CAUSE_FINISH.get(cause or "", "length" if cause else "stop")
        frames = []
        for index in range(self._n):
            st = self._choice(index)
            if st.finished:
                continue
            self._finish(st)
            tail = st.matcher.flush() if st.matcher else ""
            choice: dict[str, Any] = {"index": index}
            if self.chat:
                delta: dict[str, Any] = {"role": "assistant"} if not st.started else {}
                delta["content"] = tail
                if st.reasoning is not None:
                    st.reasoning.delta(delta)
                    st.reasoning.finish(delta, choice, finish)
                    delta.setdefault("content", "")
                choice["delta"] = delta
            else:
                choice["text"] = tail
            choice["logprobs"] = None
            choice["finish_reason"] = finish
            choice["stop_reason"] = None
            choice["upstream_finish_reason"] = None
            if cause:
                choice["gateway_termination"] = cause
            self.finishes.append((None, finish))
            frames.append(sse_frame(self._envelope([choice])))
        if self._usage_frame is not None:
            frames.append(self._usage_frame)
        frames.append(DONE_FRAME)
        return b"".join(frames)

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        if self._id is None:  # nothing came from upstream: one id for the whole stream
            self._id = f"{'chatcmpl-' if self.chat else 'cmpl-'}gateway-{time.monotonic_ns():x}"
        if self._created is None:
            self._created = int(time.time())
        return {
            "id": self._id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self._created,
            "model": self.public_model,
            "choices": choices,
        }


class Normalizer(Protocol):
    """What :func:`relay` drives and the handler accounts: :class:`StreamNormalizer`, or
    another dialect's (``responses_stream.ResponsesStreamNormalizer``)."""

    #: the client's stream ended before the upstream's; nothing more is read
    ended: str | None
    #: the upstream's own end arrived (EOF after it is a normal end)
    saw_done: bool
    overhead: float
    cause: str | None
    finishes: list[tuple[Any, str]]
    usage: dict[str, Any] | None
    stop_text_hits: int
    first_text_at: float | None
    first_content_at: float | None

    @property
    def reasoning_chars(self) -> int: ...

    def feed(self, payload: bytes) -> list[bytes]: ...

    def close(self, cause: str | None) -> bytes: ...

    def protocol_error(self, message: str) -> bytes: ...


class ChunkSource(Protocol):
    """What :func:`prime` and :func:`relay` read: an upstream body, chunk by chunk
    (:class:`upstream.UpstreamResponse`, or a fake in tests)."""

    async def read_chunk(self) -> bytes: ...

    def read_nowait(self) -> bytes: ...

    def close(self, *, reuse: bool = False) -> None: ...


@dataclass(slots=True)
class Opened:
    """An upstream stream whose first event has arrived; nothing was sent to the client yet,
    so until then the request can still fail over to another backend."""

    source: ChunkSource
    decoder: SSEDecoder
    first: list[bytes]
    eof: bool


async def prime(source: ChunkSource, deadline: float) -> Opened:
    """Read up to the first SSE event (keep-alives do not count) before ``deadline``
    (event-loop time).

    Raises ``TimeoutError`` or :class:`UpstreamError`; the caller closes ``source`` then."""
    decoder = SSEDecoder()
    while True:
        async with asyncio.timeout_at(deadline):
            chunk = await source.read_chunk()
        if not chunk:
            events = decoder.flush()
            if not events:
                raise UpstreamDisconnected("upstream ended the stream before its first event")
            return Opened(source, decoder, events, eof=True)
        try:
            events = decoder.feed(chunk)
        except EventTooLarge as exc:
            raise UpstreamProtocolError(str(exc)) from exc
        if events:
            return Opened(source, decoder, events, eof=False)


Emit = Callable[[bytes], Awaitable[None]]


async def relay(
    opened: Opened,
    norm: Normalizer,
    timeouts: Timeouts,
    total_deadline: float,
    emit: Emit,
    *,
    on_gap: Callable[[float], None] | None = None,
) -> bytes:
    """Send the client's frames (``emit``) from a primed upstream stream until it ends;
    return the stream's end (:meth:`StreamNormalizer.close`), for the caller to send last.

    The upstream is closed on every exit. Cancellation (the client
    left, the gateway is shutting down) propagates after closing it; the caller then decides
    what, if anything, the client still gets. ``norm.overhead`` accumulates the seconds spent
    processing chunks; ``on_gap`` gets the time between upstream events."""
    loop = asyncio.get_running_loop()
    perf = time.perf_counter
    source, decoder = opened.source, opened.decoder
    events, eof = opened.first, opened.eof
    opened.first = []  # not held for the rest of a long stream
    beat = timeouts.heartbeat
    event_deadline = total_deadline
    next_beat = loop.time() + beat if beat else float("inf")
    cause: str | None = None
    reuse = False
    last_event = perf()
    dog = _Watchdog(loop)
    try:
        while True:
            if events:
                t0 = perf()
                if on_gap is not None:
                    on_gap(t0 - last_event)
                last_event = t0
                now = loop.time()
                event_deadline = now + timeouts.idle
                frames = [f for ev in events for f in norm.feed(ev)]
                norm.overhead += perf() - t0
                if frames:
                    await emit(frames[0] if len(frames) == 1 else b"".join(frames))
                    if beat:
                        next_beat = now + beat
                elif now >= next_beat:  # events arrive, but nothing for the client (hidden)
                    await emit(HEARTBEAT_FRAME)
                    next_beat = now + beat
                if norm.ended is not None:
                    break
            if eof:
                if not norm.saw_done:
                    cause = "upstream_disconnect"
                reuse = norm.saw_done
                break
            deadline = min(event_deadline, total_deadline, next_beat)
            try:
                # what already arrived needs no timer (the common case when the gateway is
                # busy); only a read that waits is bounded by the next deadline
                chunk = source.read_nowait()
                if not chunk:
                    chunk = await dog.read(source, deadline)
            except TimeoutError:
                if deadline == total_deadline:
                    cause = "total_timeout"
                    break
                if deadline == event_deadline:
                    cause = "idle_timeout"
                    break
                await emit(HEARTBEAT_FRAME)
                next_beat = loop.time() + beat
                events = []
                continue
            except UpstreamError:
                cause = "upstream_disconnect"
                break
            eof = not chunk
            try:
                events = decoder.feed(chunk) if chunk else decoder.flush()
            except EventTooLarge as exc:
                await emit(norm.protocol_error(str(exc)))
                break
    finally:
        dog.close()
        source.close(reuse=reuse)
    return norm.close(cause)


class _Watchdog:
    """The deadline of a stream's reads, with one timer per stream instead of one per read.

    A stream's deadline (the next of: idle, total, heartbeat) only moves later, so the timer
    stays armed at an earlier time and, when it fires early, is re-armed at the current
    deadline. It cancels the stream's task only while a read is pending (never a send), and
    tells its own cancellation from anyone else's as ``asyncio.timeout`` does.

    The time a timer is armed for is kept here, not read back from the handle: uvloop's
    ``call_at`` returns a plain ``Handle`` (no ``when()``) for a time less than 1 ms away."""

    __slots__ = ("_armed", "_deadline", "_fired", "_handle", "_loop", "_task")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._task: asyncio.Task[Any] | None = None
        self._handle: asyncio.Handle | None = None
        self._armed = 0.0  # when the handle fires (loop time)
        self._deadline = 0.0
        self._fired = False

    async def read(self, source: ChunkSource, deadline: float) -> bytes:
        """``source.read_chunk()``, or ``TimeoutError`` at ``deadline`` (event-loop time)."""
        if deadline <= self._loop.time():
            raise TimeoutError
        task = self._task = asyncio.current_task()
        assert task is not None
        self._deadline = deadline
        if self._handle is None or self._armed > deadline:
            if self._handle is not None:
                self._handle.cancel()
            self._arm(deadline)
        cancelling = task.cancelling()
        try:
            return await source.read_chunk()
        except asyncio.CancelledError:
            if self._fired and task.uncancel() <= cancelling:
                raise TimeoutError from None
            raise
        finally:
            self._fired = False
            self._task = None

    def _wake(self) -> None:
        self._handle = None
        if self._task is None:
            return  # between reads: the next read arms it again
        if self._loop.time() < self._deadline:  # the deadline moved on since it was armed
            self._arm(self._deadline)
            return
        self._fired = True
        self._task.cancel()

    def _arm(self, when: float) -> None:
        self._handle = self._loop.call_at(when, self._wake)
        self._armed = when

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def normalize_response(
    obj: dict[str, Any],
    *,
    public_model: str,
    endpoint: Endpoint,
    stop_text: tuple[str, ...],
    reasoning: ReasoningRules | None = None,
    assistant_prefix: str = "",
) -> dict[str, Any]:
    """The contract for a non-streaming response: model name, stop text, finish, reasoning."""
    obj["model"] = public_model
    chat = endpoint == "chat"
    reasoning_chars = answer_chars = 0
    for ch in obj.get("choices") or ():
        reason = ch.get("finish_reason")
        holder = ch.get("message") if chat else ch
        key = "content" if chat else "text"
        text = holder.get(key) if isinstance(holder, dict) else None
        hits = (
            [(i, s) for s in stop_text if (i := text.find(s)) != -1]
            if isinstance(text, str)
            else []
        )
        if hits:
            i, matched = min(hits)
            holder[key] = text[:i]  # type: ignore[index]
            ch["finish_reason"] = "stop"
            ch["stop_reason"] = matched
            ch["upstream_finish_reason"] = reason
            ch["gateway_termination"] = "stop_text"
        else:
            norm = normalize_finish(reason)
            if norm != reason:
                ch["finish_reason"] = norm
                ch["upstream_finish_reason"] = reason
        if chat and reasoning is not None and isinstance(holder, dict):
            reasoning_chars += split_message(
                holder, ch, reasoning, ch["finish_reason"], assistant_prefix
            )
            answer = holder.get("content")
            answer_chars += len(answer) if isinstance(answer, str) else 0
    if chat and reasoning is not None:
        fill_reasoning_tokens(obj.get("usage"), reasoning_chars, answer_chars)
    return obj
