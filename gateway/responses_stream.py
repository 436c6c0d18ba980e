"""The stream contract in the Responses dialect: whatever vLLM's ``/v1/responses`` stream does,
the client gets named SSE events (``event: <type>`` + ``data: <json>``) that start with
``response.created`` and end with exactly one terminal event:

* ``response.completed`` / ``response.incomplete``: the upstream's end, by the response's
  status (vLLM always sends ``response.completed``, also for ``incomplete``; OpenAI sends
  ``response.incomplete`` then, and clients such as the Agents SDK act on it), or a stop
  string the gateway caught (``completed``);
* ``response.failed`` with ``response.error = {code, message}``: the upstream's error (an
  ``error`` event, an unreadable one), or -- with ``stream_termination: error``, the default
  -- the reason the gateway cut the stream after its first byte (``idle_timeout``,
  ``total_timeout``, ``upstream_disconnect``, ``server_shutting_down``); with
  ``stream_termination: graceful`` such a stream ends with its open items done and
  ``response.incomplete``, ``incomplete_details.reason`` naming the cause.

Along the way: ``model`` is the public name, ``sequence_number`` counts every event the client
gets from 0, ``output_index`` counts the client's items; a second terminal event and anything
after the end are dropped; the stop-text guard holds back output text that could begin a stop
string; text that vLLM left inline (``<think>...</think>``, no reasoning parser) becomes a
``reasoning`` item before the message, per the profile's ``reasoning`` (``split``; ``hide``
drops reasoning, vLLM's reasoning items included; ``inline`` leaves it); and the ``*.done``
events and the terminal response carry exactly the text that was streamed.

:class:`ResponsesStreamNormalizer` is sans-I/O and has what :func:`stream.relay` drives
(``feed``, ``close``, ``protocol_error``, ``ended``, ``saw_done``, ``overhead``);
:func:`prime` reads up to the first sign of generation (past ``response.created``), so the
first-token deadline and failover cover a backend that accepts a request and then generates
nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from typing import Any, Literal

import orjson

from .errors import UpstreamDisconnected, UpstreamProtocolError
from .profiles import ReasoningRules
from .reasoning import ThinkSplitter, starts_in_reasoning
from .responses import STATUS_FINISH, usage_record, with_text
from .sse import EventTooLarge, SSEDecoder
from .stoptext import StopTextMatcher
from .stream import _CUT_ERRORS, ChunkSource, Opened, special_chars

Event = dict[str, Any]
LIFECYCLE = frozenset({"response.created", "response.in_progress", "response.queued"})
TERMINAL_BY_STATUS = {
    "completed": "response.completed",
    "incomplete": "response.incomplete",
    "failed": "response.failed",
}
TERMINALS = frozenset(TERMINAL_BY_STATUS.values())
#: an event type is written into the SSE ``event:`` line: nothing that could break the frame
_SAFE_TYPE = re.compile(r"[A-Za-z0-9._\-]{1,96}")
#: the most text (characters) one stream may accumulate (it is repeated in the final events)
MAX_STREAM_CHARS = 32 * 1024 * 1024
#: the most output items one stream may open (vLLM opens one per reasoning block, message or
#: tool call)
MAX_ITEMS = 4096


def frame(event: Event) -> bytes:
    kind: str = event["type"]
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def derived_id(prefix: str, response_id: Any, index: int) -> str:
    """A gateway-made item's id, the same every time the same response is normalized."""
    seed = f"{response_id}#{index}".encode()
    return prefix + hashlib.blake2b(seed, digest_size=16).hexdigest()


class _Item:
    """One output item as the client sees it."""

    __slots__ = ("done", "id", "index", "item", "kind", "part", "status", "text")

    def __init__(self, kind: str, index: int, item: Event, part: Event | None = None) -> None:
        #: "message" | "reasoning": built here; "pass": upstream's, passed on
        self.kind = kind
        self.index = index
        self.id: Any = item.get("id")
        self.item = item
        self.part = part
        self.text: list[str] = []
        self.done = False
        #: the status its done event gave it
        self.status = "completed"

    def final(self, status: str) -> Event:
        if self.kind == "pass":
            return self.item
        text = "".join(self.text)
        if self.kind == "message":
            return with_text(self.item, text, status)
        return {
            **self.item,
            "content": [{"text": text, "type": "reasoning_text"}],
            "status": status if self.item.get("status") is not None else None,
        }


class _Message:
    """One upstream message item on its way to the client: stop-text guard, then the
    reasoning split; it becomes one or more client items, one open at a time."""

    __slots__ = (
        "answering",
        "closed",
        "matcher",
        "open",
        "part",
        "prefix",
        "splitter",
        "template",
        "unterminated",
        "used_id",
    )

    def __init__(
        self,
        template: Event,
        stop_text: tuple[str, ...],
        rules: ReasoningRules | None,
        assistant_prefix: str,
        upstream_split: bool,
    ) -> None:
        self.template = template
        #: the upstream's content part (its shape, for the client's part events)
        self.part: Event | None = None
        self.matcher = StopTextMatcher(stop_text) if stop_text else None
        self.splitter = (
            ThinkSplitter(starts_in_reasoning(rules, assistant_prefix))
            if rules is not None
            and rules.parser == "think_tags"
            and rules.mode != "inline"
            and not upstream_split
            else None
        )
        #: the answer began (leading newlines after vLLM-split reasoning are dropped first)
        self.answering = not (upstream_split and rules is not None)
        self.prefix = assistant_prefix if rules is not None and rules.mode == "inline" else ""
        self.open: _Item | None = None
        self.unterminated: list[str] = []
        self.used_id = False
        self.closed = False


class ResponsesStreamNormalizer:
    """Rewrites a vLLM Responses stream for the client (see module doc)."""

    def __init__(
        self,
        *,
        public_model: str,
        stop_text: tuple[str, ...] = (),
        reasoning: ReasoningRules | None = None,
        assistant_prefix: str = "",
        termination: Literal["error", "graceful"] = "error",
        max_chars: int = MAX_STREAM_CHARS,
        starting_after: int | None = None,
    ) -> None:
        self.public_model = public_model
        self.stop_text = stop_text
        self.rules = reasoning
        self.assistant_prefix = assistant_prefix
        self.termination = termination
        self.max_chars = max_chars
        #: a resumed stream (``GET ...?stream=true&starting_after=N``): the events numbered up
        #: to N are made (the same ones, by the same rules) but not sent
        self._skip = -1 if starting_after is None else starting_after
        self._seq = 0
        self._next_index = 0
        self._items: list[_Item] = []
        #: upstream output_index -> what it became (None: a hidden reasoning item)
        self._slots: dict[int, _Item | _Message | None] = {}
        self._snapshot: Event | None = None
        self._upstream_split = False
        self._terminal_sent = False
        self._closed = False
        self._chars = 0
        #: the upstream's terminal event arrived (its end at EOF is then normal)
        self.saw_done = False
        #: the stream ended with response.failed
        self.errored = False
        #: the client's stream ended before the upstream's ("stop_text", "upstream_error"):
        #: nothing more is read
        self.ended: str | None = None
        self.usage: dict[str, Any] | None = None
        self.cause: str | None = None
        self.finishes: list[tuple[Any, str]] = []
        self.first_text_at: float | None = None
        self.first_content_at: float | None = None
        self.stop_text_hits = 0
        self.reasoning_chars = 0
        self.overhead = 0.0
        #: finds a character that could begin a stop string or a think tag: text without one
        #: takes the fast path
        self._special = special_chars(stop_text, reasoning)

    # -- numbering and framing ----------------------------------------------------------------

    def _emit(self, event: Event) -> bytes:
        seq = event["sequence_number"] = self._seq
        self._seq += 1
        return frame(event) if seq > self._skip else b""

    def _new_index(self) -> int:
        index = self._next_index
        self._next_index += 1
        return index

    def _response_id(self) -> Any:
        return self._snapshot.get("id") if self._snapshot else None

    # -- feeding ------------------------------------------------------------------------------

    def feed(self, payload: bytes) -> list[bytes]:
        """One upstream SSE ``data`` payload -> frames for the client."""
        frames = self._feed(payload)
        if self._skip >= 0:
            return [f for f in frames if f]
        return frames

    def _feed(self, payload: bytes) -> list[bytes]:
        if self.ended is not None or self._terminal_sent:
            return []  # the client has its end; a second terminal event, or anything after it
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return self._fail_protocol("upstream sent an unreadable stream event")
        kind = obj.get("type") if isinstance(obj, dict) else None
        if not isinstance(kind, str) or not _SAFE_TYPE.fullmatch(kind):
            return self._fail_protocol("upstream sent an unexpected stream event")
        if kind in LIFECYCLE:
            return self._lifecycle(obj)
        if self._snapshot is None:
            return self._fail_protocol(f"upstream sent {kind} before response.created")
        if kind in TERMINALS:
            return self._terminal(obj)
        if kind == "error":
            code = obj.get("code")
            message = obj.get("message")
            return self._fail(
                code if isinstance(code, str) and len(code) < 100 else "upstream_error",
                message[:1000] if isinstance(message, str) else "The model server failed.",
            )
        oi = obj.get("output_index")
        if type(oi) is not int:
            return [self._emit(obj)]  # not about one item: passed on as it is
        if kind == "response.output_item.added":
            return self._added(oi, obj)
        if oi not in self._slots:
            return self._fail_protocol(f"upstream sent {kind} for an item it never added")
        slot = self._slots[oi]
        if slot is None:  # a hidden reasoning item
            self._count_reasoning(obj, kind, sent=False)
            return []
        if isinstance(slot, _Message):
            return self._message_event(slot, kind, obj)
        self._count_reasoning(obj, kind, sent=True)
        obj["output_index"] = slot.index
        if kind == "response.output_item.done" and isinstance(obj.get("item"), dict):
            slot.item = obj["item"]
            slot.done = True
        return [self._emit(obj)]

    def _lifecycle(self, obj: Event) -> list[bytes]:
        response = obj.get("response")
        if not isinstance(response, dict):
            return self._fail_protocol("upstream sent a lifecycle event without its response")
        response["model"] = self.public_model
        frames = []
        if self._snapshot is None and obj["type"] != "response.created":
            frames.append(self._emit({"response": response, "type": "response.created"}))
        self._snapshot = response
        frames.append(self._emit(obj))
        return frames

    def _added(self, oi: int, obj: Event) -> list[bytes]:
        item = obj.get("item")
        if not isinstance(item, dict) or oi in self._slots:
            return self._fail_protocol("upstream sent an unexpected output item")
        if len(self._slots) >= MAX_ITEMS:
            return self._fail_protocol(f"upstream opened more than {MAX_ITEMS} output items")
        kind = item.get("type")
        rules = self.rules
        if kind == "message":
            self._slots[oi] = _Message(
                item, self.stop_text, rules, self.assistant_prefix, self._upstream_split
            )
            return []  # the client's message opens with its first text
        if kind == "reasoning":
            self._upstream_split = True
            if rules is not None and rules.mode == "hide":
                self._slots[oi] = None
                return []
        slot = _Item("pass", self._new_index(), item)
        self._slots[oi] = slot
        self._items.append(slot)
        obj["output_index"] = slot.index
        return [self._emit(obj)]

    def _count_reasoning(self, obj: Event, kind: str, *, sent: bool) -> None:
        if kind in ("response.reasoning_text.delta", "response.reasoning_summary_text.delta"):
            delta = obj.get("delta")
            if isinstance(delta, str) and delta:
                self.reasoning_chars += len(delta)
                if sent and self.first_text_at is None:
                    self.first_text_at = time.perf_counter()

    # -- message items: stop text, then the reasoning split ------------------------------------

    def _message_event(self, m: _Message, kind: str, obj: Event) -> list[bytes]:
        if m.closed:
            return []
        if kind == "response.output_text.delta":
            delta = obj.get("delta")
            if not isinstance(delta, str):
                return self._fail_protocol("upstream sent a text delta without text")
            self._chars += len(delta)
            if self._chars > self.max_chars:
                return self._fail_protocol("upstream stream grew past the gateway's bound")
            frames: list[bytes] = []
            sp = m.splitter
            if (
                m.answering
                and not m.prefix
                and (m.matcher is None or not m.matcher.holding)
                and (sp is None or not (sp._held or sp._after_close))
                and self._special(delta) is None
            ):
                # the common delta: nothing held, nothing in it can begin a stop string or a
                # tag: it is answer text, or reasoning inside an open think block
                if sp is not None and sp.in_reasoning:
                    if not sp.closed:
                        m.unterminated.append(delta)
                    self._reasoning_delta(m, delta, frames)
                elif delta:
                    logprobs = obj.get("logprobs") if sp is None else None
                    self._content_delta(m, delta, frames, logprobs)
                return frames
            hit = False
            text = delta
            if m.matcher is not None:
                text, hit = m.matcher.feed(delta)
            unchanged = text == delta and m.splitter is None and not m.prefix and m.answering
            logprobs = obj.get("logprobs") if unchanged else None
            self._route(m, text, frames, logprobs)
            if hit:
                frames += self._stop(m)
            return frames
        if kind == "response.content_part.added":
            part = obj.get("part")
            if isinstance(part, dict):
                m.part = part
            return []
        if kind == "response.output_item.done":
            return self._finish_message(m)
        if kind in ("response.output_text.done", "response.content_part.done"):
            return []  # rebuilt from what was sent, at the item's end
        # anything else about the message (annotations, refusals): with the open message
        if m.open is not None and m.open.kind == "message":
            obj["output_index"] = m.open.index
            obj["item_id"] = m.open.id
            return [self._emit(obj)]
        return []

    def _route(self, m: _Message, text: str, frames: list[bytes], logprobs: Any = None) -> None:
        """Text past the stop-text guard -> reasoning and answer deltas."""
        if not text:
            return
        if m.splitter is not None:
            reasoning, content = m.splitter.feed(text)
            if m.splitter.closed:
                m.unterminated.clear()
            elif reasoning:
                m.unterminated.append(reasoning)
        else:
            reasoning, content = "", text
        if reasoning:
            self._reasoning_delta(m, reasoning, frames)
        if content and not m.answering:
            content = content.lstrip("\n")
            m.answering = bool(content)
        if content:
            if m.prefix:
                content, m.prefix = m.prefix + content, ""
            self._content_delta(m, content, frames, logprobs)

    def _reasoning_delta(self, m: _Message, text: str, frames: list[bytes]) -> None:
        self.reasoning_chars += len(text)
        if self.rules is not None and self.rules.mode == "hide":
            return
        item = m.open
        if item is None or item.kind != "reasoning":
            self._close_open(m, frames)
            index = self._new_index()
            item_id = derived_id("rs_", self._response_id(), index)
            item = _Item("reasoning", index, _reasoning_template(item_id))
            self._items.append(item)
            m.open = item
            frames.append(
                self._emit(
                    {
                        "item": dict(item.item),
                        "output_index": index,
                        "type": "response.output_item.added",
                    }
                )
            )
            frames.append(
                self._emit(
                    {
                        "content_index": 0,
                        "item_id": item_id,
                        "output_index": index,
                        "part": {"text": "", "type": "reasoning_text"},
                        "type": "response.content_part.added",
                    }
                )
            )
        item.text.append(text)
        frames.append(
            self._emit(
                {
                    "content_index": 0,
                    "delta": text,
                    "item_id": item.id,
                    "output_index": item.index,
                    "type": "response.reasoning_text.delta",
                }
            )
        )
        if self.first_text_at is None:
            self.first_text_at = time.perf_counter()

    def _content_delta(
        self, m: _Message, text: str, frames: list[bytes], logprobs: Any = None
    ) -> None:
        item = m.open
        if item is None or item.kind != "message":
            self._close_open(m, frames)
            item = self._open_message(m, frames)
        item.text.append(text)
        frames.append(
            self._emit(
                {
                    "content_index": 0,
                    "delta": text,
                    "item_id": item.id,
                    "logprobs": logprobs if isinstance(logprobs, list) else [],
                    "output_index": item.index,
                    "type": "response.output_text.delta",
                }
            )
        )
        if self.first_content_at is None:
            now = self.first_content_at = time.perf_counter()
            self.first_text_at = self.first_text_at or now

    def _open_message(self, m: _Message, frames: list[bytes]) -> _Item:
        index = self._new_index()
        template = dict(m.template)
        if m.used_id or not template.get("id"):  # a second message from one upstream item
            template["id"] = derived_id("msg_", self._response_id(), index)
        m.used_id = True
        template["content"] = []
        template["status"] = "in_progress"
        part = dict(m.part) if m.part else {"annotations": [], "type": "output_text"}
        part.setdefault("logprobs", [])
        part["text"] = ""
        item = _Item("message", index, template, part)
        self._items.append(item)
        m.open = item
        frames.append(
            self._emit(
                {
                    "item": dict(template),
                    "output_index": index,
                    "type": "response.output_item.added",
                }
            )
        )
        frames.append(
            self._emit(
                {
                    "content_index": 0,
                    "item_id": item.id,
                    "output_index": index,
                    "part": dict(part),
                    "type": "response.content_part.added",
                }
            )
        )
        return item

    def _close_open(self, m: _Message, frames: list[bytes], status: str = "completed") -> None:
        item, m.open = m.open, None
        if item is not None:
            frames += self._done_events(item, status)

    def _done_events(self, item: _Item, status: str) -> list[bytes]:
        item.done = True
        item.status = status
        text = "".join(item.text)
        final = item.final(status)
        if item.kind == "message":
            part = dict(item.part or {})
            part["text"] = text
            part["logprobs"] = None
            head = {
                "content_index": 0,
                "item_id": item.id,
                "logprobs": [],
                "output_index": item.index,
                "text": text,
                "type": "response.output_text.done",
            }
        else:
            part = {"text": text, "type": "reasoning_text"}
            head = {
                "content_index": 0,
                "item_id": item.id,
                "output_index": item.index,
                "text": text,
                "type": "response.reasoning_text.done",
            }
        return [
            self._emit(head),
            self._emit(
                {
                    "content_index": 0,
                    "item_id": item.id,
                    "output_index": item.index,
                    "part": part,
                    "type": "response.content_part.done",
                }
            ),
            self._emit(
                {"item": final, "output_index": item.index, "type": "response.output_item.done"}
            ),
        ]

    def _flush(self, m: _Message, frames: list[bytes]) -> bool:
        """Release what the guard and the splitter hold; True if a stop string is in it."""
        hit = False
        if m.matcher is not None:
            tail = m.matcher.flush()
            hit = m.matcher.hit
            self._route(m, tail, frames)
        self._flush_splitter(m, frames)
        return hit

    def _flush_splitter(self, m: _Message, frames: list[bytes]) -> None:
        if m.splitter is not None:
            reasoning, content = m.splitter.flush()
            if reasoning and not m.splitter.closed:
                m.unterminated.append(reasoning)
            splitter, m.splitter = m.splitter, None  # the held text is plain now
            if reasoning:
                self._reasoning_delta(m, reasoning, frames)
            self._route(m, content, frames)
            m.splitter = splitter

    def _finish_message(self, m: _Message, status: str = "completed") -> list[bytes]:
        frames: list[bytes] = []
        hit = self._flush(m, frames)
        self._close_open(m, frames, status)
        m.closed = True
        if hit:
            frames += self._stop(m)
        return frames

    def _unterminated_answers(self, status: Any, frames: list[bytes]) -> None:
        """A think block that never closed in a response that completed: the model answered
        without thinking, and that text is the answer (after it was streamed as reasoning)."""
        if status != "completed":
            return
        for m in self._slots.values():
            if isinstance(m, _Message) and m.splitter is not None and not m.splitter.closed:
                if m.unterminated:
                    text, m.unterminated = "".join(m.unterminated), []
                    item = self._open_message(m, frames)
                    item.text.append(text)
                    frames.append(
                        self._emit(
                            {
                                "content_index": 0,
                                "delta": text,
                                "item_id": item.id,
                                "logprobs": [],
                                "output_index": item.index,
                                "type": "response.output_text.delta",
                            }
                        )
                    )
                    self._close_open(m, frames)

    # -- ends ---------------------------------------------------------------------------------

    def _stop(self, m: _Message) -> list[bytes]:
        """A stop string ended the answer: the response is complete, the upstream is closed."""
        frames: list[bytes] = []
        self.stop_text_hits += 1
        self._flush_splitter(m, frames)
        self._close_open(m, frames)
        m.closed = True
        for other in self._slots.values():  # nothing else the model made is still open
            if isinstance(other, _Message) and not other.closed:
                self._close_open(other, frames)
                other.closed = True
        self._unterminated_answers("completed", frames)
        response = self._final_response("completed")
        response["gateway_termination"] = "stop_text"
        response["stop_reason"] = m.matcher.matched if m.matcher else None
        frames.append(self._emit({"response": response, "type": "response.completed"}))
        self._terminal_sent = True
        self.ended = "stop_text"
        self.finishes.append((None, "stop"))
        return frames

    def _terminal(self, obj: Event) -> list[bytes]:
        response = obj.get("response")
        if not isinstance(response, dict):
            return self._fail_protocol("upstream sent a terminal event without its response")
        frames: list[bytes] = []
        for m in list(self._slots.values()):  # items the upstream left open
            if isinstance(m, _Message) and not m.closed:
                frames += self._finish_message(m)
                if self._terminal_sent:  # a stop string was in the held text
                    self.saw_done = True
                    return frames
            elif isinstance(m, _Item) and not m.done:
                m.done = True
        status = response.get("status")
        self._unterminated_answers(status, frames)
        response["model"] = self.public_model
        response["output"] = [item.final(item.status) for item in self._items]
        kind = TERMINAL_BY_STATUS.get(status) if isinstance(status, str) else None
        obj["type"] = kind or obj["type"]
        obj["response"] = response
        self.usage = usage_record(response.get("usage"))
        finish = STATUS_FINISH.get(status, "stop") if isinstance(status, str) else "stop"
        self.finishes.append((finish, finish))
        self.errored = obj["type"] == "response.failed"
        self.saw_done = True
        self._terminal_sent = True
        frames.append(self._emit(obj))
        return frames

    def _final_response(self, status: str, open_status: str = "completed") -> Event:
        """The terminal event's response when the gateway ends the stream; items still open
        get ``open_status``."""
        base = dict(self._snapshot) if self._snapshot else _bare_response(self.public_model)
        base["status"] = status
        base["incomplete_details"] = None
        base["usage"] = None
        base["output"] = [
            item.final(item.status if item.done else open_status) for item in self._items
        ]
        return base

    def _fail(self, code: str, message: str) -> list[bytes]:
        frames = []
        if self._snapshot is None:
            self._snapshot = _bare_response(self.public_model)
            frames.append(
                self._emit({"response": dict(self._snapshot), "type": "response.created"})
            )
        response = self._final_response("failed", "incomplete")
        response["error"] = {"code": code, "message": message}
        frames.append(self._emit({"response": response, "type": "response.failed"}))
        self.errored = True
        self._terminal_sent = True
        self.ended = self.ended or "upstream_error"
        if not self.finishes:
            self.finishes.append((None, "error"))
        return frames

    def _fail_protocol(self, message: str) -> list[bytes]:
        return self._fail("upstream_protocol_error", message)

    def protocol_error(self, message: str) -> bytes:
        """The upstream broke the protocol outside any one payload (an event too large)."""
        return b"".join(self._fail_protocol(message))

    def close(self, cause: str | None) -> bytes:
        """The end of the stream (see module doc); ``cause``: why the gateway ended it, None
        when the upstream did. Only the first call counts."""
        if self._closed:
            return b""
        self._closed = True
        self.cause = cause = cause or self.ended
        if cause == "client_disconnect" or self._terminal_sent:
            return b""
        cause = cause or "upstream_disconnect"
        self.cause = cause
        if self.termination == "graceful" and cause in _CUT_ERRORS and cause != "gateway_error":
            frames: list[bytes] = []
            if self._snapshot is None:
                self._snapshot = _bare_response(self.public_model)
                frames.append(
                    self._emit({"response": dict(self._snapshot), "type": "response.created"})
                )
            for m in self._slots.values():
                if isinstance(m, _Message) and not m.closed:
                    frames += self._finish_message(m, "incomplete")
                    if self._terminal_sent:
                        return b"".join(frames)
            for item in self._items:
                if item.kind == "pass" and not item.done:
                    item.done, item.status = True, "incomplete"
            response = self._final_response("incomplete", "incomplete")
            response["incomplete_details"] = {"reason": cause}
            response["gateway_termination"] = cause
            frames.append(self._emit({"response": response, "type": "response.incomplete"}))
            self._terminal_sent = True
            self.finishes.append((None, "length"))
            return b"".join(frames)
        _, code, message = _CUT_ERRORS.get(cause, _CUT_ERRORS["gateway_error"])
        return b"".join(self._fail(code, message))


def _reasoning_template(item_id: str) -> Event:
    return {
        "id": item_id,
        "summary": [],
        "type": "reasoning",
        "content": None,
        "encrypted_content": None,
        "status": "in_progress",
    }


def _bare_response(model: str) -> Event:
    """The response object when the upstream sent none (a stream broken from the start)."""
    return {
        "id": "resp_" + hashlib.blake2b(str(time.time_ns()).encode(), digest_size=16).hexdigest(),
        "created_at": int(time.time()),
        "model": model,
        "object": "response",
        "output": [],
        "status": "in_progress",
        "incomplete_details": None,
        "usage": None,
    }


def _lifecycle_only(events: list[bytes]) -> bool:
    for payload in events:
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(obj, dict) or obj.get("type") not in LIFECYCLE:
            return False
    return True


async def prime(source: ChunkSource, deadline: float) -> Opened:
    """Read up to the first event past the response's creation (an output item, a terminal
    or an error event) before ``deadline`` (event-loop time): until then nothing is sent and
    the request can fail over. Raises ``TimeoutError`` or :class:`UpstreamError`."""
    decoder = SSEDecoder()
    events: list[bytes] = []
    while True:
        async with asyncio.timeout_at(deadline):
            chunk = await source.read_chunk()
        try:
            new = decoder.feed(chunk) if chunk else decoder.flush()
        except EventTooLarge as exc:
            raise UpstreamProtocolError(str(exc)) from exc
        events += new
        if not chunk:
            if _lifecycle_only(events):
                raise UpstreamDisconnected("upstream ended the stream before generating")
            return Opened(source, decoder, events, eof=True)
        if new and (not _lifecycle_only(new) or len(events) > 8):
            return Opened(source, decoder, events, eof=False)
