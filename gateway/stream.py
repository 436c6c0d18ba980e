"""The stream contract: whatever the upstream sends, the client gets well-formed SSE that
ends with exactly one final chunk per choice (finish_reason from OpenAI's set) and
``data: [DONE]`` -- or, for an upstream error event, that error event and ``[DONE]``.

:class:`StreamNormalizer` is sans-I/O (payloads in, frames out); :func:`relay` drives it
from an upstream response under the named timeouts. Final chunks are built in one place,
:meth:`StreamNormalizer.close`. Side fields on a repaired final choice:
``upstream_finish_reason`` (what the upstream said, possibly null) and
``gateway_termination`` (why the gateway ended it: ``stop_text``, ``first_token_timeout``,
``idle_timeout``, ``total_timeout``, ``upstream_disconnect``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from .errors import UpstreamDisconnected, UpstreamError
from .profiles import ReasoningRules, Timeouts
from .protocol import DONE_FRAME, FINISH_REASONS, FINISH_REPAIRS, Endpoint, error_body, sse_frame
from .reasoning import ReasoningStream, split_message
from .sse import SSEDecoder
from .stoptext import StopTextMatcher

#: how each gateway termination cause is reported as a finish_reason
_CAUSE_FINISH = {
    "stop_text": "stop",
    "first_token_timeout": "length",
    "idle_timeout": "length",
    "total_timeout": "length",
    "upstream_disconnect": "length",
    "shutdown": "length",
}


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
    """Rewrites upstream chunks for the client and tracks what is still owed to it."""

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
    ) -> None:
        self.public_model = public_model
        self.chat = endpoint == "chat"
        self.reasoning = reasoning if self.chat else None
        self.assistant_prefix = assistant_prefix
        self.stop_text = stop_text
        self.include_usage = include_usage
        self._n = n
        self._choices: dict[int, _Choice] = {}
        self._n_finished = 0
        self._usage_frame: bytes | None = None
        self._id: str | None = None
        self._created: int | None = None
        #: the upstream sent ``[DONE]``
        self.saw_done = False
        #: an error event was relayed; the stream ends with ``[DONE]`` only
        self.errored = False
        #: nothing more is wanted from the upstream (all choices finished by stop text)
        self.stop_reading = False
        #: the upstream's usage object, when it sent one
        self.usage: dict[str, Any] | None = None
        #: the gateway's termination cause, once :meth:`close` ran
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
        if self.errored or self.stop_reading:
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
        if choices is not None and not (
            isinstance(choices, list) and all(isinstance(c, dict) for c in choices)
        ):
            return self._error(
                "upstream sent an unexpected stream event", "upstream_protocol_error"
            )
        if choices is None and "error" in obj:
            self.errored = True
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
            index = ch.get("index", 0)
            st = self._choice(index if isinstance(index, int) and 0 <= index < 1024 else 0)
            if st.finished:
                continue  # a second finish or text after it: the client already has its end
            st.started = True
            if self._scrub(ch, st):
                kept.append(ch)
        if not kept:
            return []
        if self.first_content_at is None:
            self._note_first_text(kept)
        obj["choices"] = kept
        if self._all_finished and any(c.matcher and c.matcher.hit for c in self._choices.values()):
            self.stop_reading = True
        return [sse_frame(obj)]

    def _scrub(self, ch: dict[str, Any], st: _Choice) -> bool:
        """Stop text, reasoning split and finish normalization of one choice; False = drop."""
        reason = ch.get("finish_reason")
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
            if isinstance(text, str) or out:
                holder[key] = out
            if hit:
                ch["finish_reason"] = "stop"
                ch["stop_reason"] = m.matched
                ch["upstream_finish_reason"] = reason
                ch["gateway_termination"] = "stop_text"
                self.stop_text_hits += 1
        rs = st.reasoning
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
        if self.chat and isinstance(text, str) and text:
            # The text was held back (stop-text prefix, partial tag) or hidden: send a chunk
            # only if something is left in it.
            return any(v for k, v in holder.items() if k != "role")
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

    def _error(self, message: str, code: str) -> list[bytes]:
        self.errored = True
        return [sse_frame(error_body(message, "upstream_error", code=code))]

    def close(self, cause: str | None) -> bytes:
        """The end of the stream: owed final chunks, the held usage chunk, ``[DONE]``.
        Only the first call counts; later ones return nothing."""
        if self._closed:
            return b""
        self._closed = True
        self.cause = cause
        if cause == "client_disconnect":
            return b""  # nobody to send it to
        if cause == "gateway_error":
            self.errored = True
            frame = sse_frame(
                error_body("Internal gateway error", "server_error", code="internal_error")
            )
            return frame + DONE_FRAME
        if self.errored:
            return DONE_FRAME
        finish = _CAUSE_FINISH.get(cause or "", "stop")
        frames = []
        for index in range(max(self._n, max(self._choices, default=-1) + 1)):
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
        prefix = "chatcmpl-" if self.chat else "cmpl-"
        return {
            "id": self._id or f"{prefix}gateway-{time.monotonic_ns():x}",
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self._created or int(time.time()),
            "model": self.public_model,
            "choices": choices,
        }


class ChunkSource(Protocol):
    """What :func:`prime` and :func:`relay` read: an upstream body, chunk by chunk
    (:class:`upstream.UpstreamResponse`, or a fake in tests)."""

    async def read_chunk(self) -> bytes: ...

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
        events = decoder.feed(chunk)
        if events:
            return Opened(source, decoder, events, eof=False)


Emit = Callable[[bytes], Awaitable[None]]


async def relay(
    opened: Opened,
    norm: StreamNormalizer,
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
    event_deadline = total_deadline
    cause: str | None = None
    reuse = False
    last_event = perf()
    try:
        while True:
            if events:
                t0 = perf()
                if on_gap is not None:
                    on_gap(t0 - last_event)
                last_event = t0
                event_deadline = loop.time() + timeouts.idle
                frames = [f for ev in events for f in norm.feed(ev)]
                norm.overhead += perf() - t0
                if frames:
                    await emit(frames[0] if len(frames) == 1 else b"".join(frames))
                if norm.stop_reading or norm.errored:
                    break
            if eof:
                if not norm.saw_done:
                    cause = "upstream_disconnect"
                reuse = norm.saw_done
                break
            deadline = event_deadline if event_deadline < total_deadline else total_deadline
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await source.read_chunk()
            except TimeoutError:
                cause = "total_timeout" if deadline == total_deadline else "idle_timeout"
                break
            except UpstreamError:
                cause = "upstream_disconnect"
                break
            eof = not chunk
            events = decoder.feed(chunk) if chunk else decoder.flush()
        if norm.stop_reading:
            cause = "stop_text"
        elif norm.errored:
            cause = "upstream_error"
    finally:
        source.close(reuse=reuse)
    return norm.close(cause)


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
            split_message(holder, ch, reasoning, ch["finish_reason"], assistant_prefix)
    return obj
