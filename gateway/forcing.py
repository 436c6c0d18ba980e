"""Budget forcing (#17): the gateway ends the thinking at the budget when the backend cannot
(``reasoning.control.enforce: gateway``).

**Streams.** The first upstream request streams as usual, with vLLM's per-chunk usage
(``stream_options.continuous_usage_stats``) so the gateway knows how many tokens were
generated; it follows the think block (vLLM's ``reasoning`` field, or the ``<think>`` tags in
the text). When the reasoning reaches the budget and has not ended, :class:`ForcingSource`
closes that upstream (vLLM aborts it), ends the reasoning for the client (``closing``, e.g.
``"\\n</think>\\n\\n"``, through the normalizer's own splitter) and continues **the same
answer** with a second request whose prefix is the reasoning so far plus ``closing``:

* ``continuation: chat``: the same chat request with a final assistant message (the
  opening, the reasoning, the closing) and ``continue_final_message: true,
  add_generation_prompt: false``;
* ``continuation: completions``: ``/v1/completions`` with the prompt vLLM rendered for the
  first request (``return_prompt_text``) plus the reasoning and the closing, and
  ``add_special_tokens: false`` (for templates that rewrite assistant turns, such as
  DeepSeek-R1's, which drops everything before ``</think>``).

The client sees one stream (one id, one role chunk, one final chunk) and one usage total:
the first request's prompt tokens, the completion tokens of both parts, and the reasoning
tokens counted exactly. ``max_tokens`` of the second part is what the first left. Without
per-chunk usage (not vLLM) a streamed event with text counts as one token. A reasoning that
ends within the budget needs no second request.

**Non-stream.** The first request is limited to the budget (``max_tokens``); if it ends with
``length`` the answer is continued the same way (with the closing if the reasoning was cut,
without if only the answer was), and the two parts are joined into one message.

Forced stops are counted in ``gateway_reasoning_forced_stops_total``. Budget forcing needs
``n = 1``. A failure of the second request ends the stream by the stream contract (an
error event), or answers the non-stream request with the backend's error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from .control_spec import ReasoningControl
from .errors import UpstreamProtocolError, UpstreamStatusError
from .profiles import ReasoningRules
from .protocol import DONE_FRAME, error_body, sse_frame
from .reasoning import ThinkSplitter, starts_in_reasoning
from .sse import SSEDecoder
from .stream import ChunkSource, Opened

_MAX_KEYS = ("max_tokens", "max_completion_tokens")
#: chat-only fields a /v1/completions continuation does not take
_CHAT_ONLY = (
    "messages",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "chat_template_kwargs",
    "continue_final_message",
    "add_generation_prompt",
    "return_prompt_text",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
    "echo",
    "documents",
    "include_reasoning",
)

#: ``(path, body) -> the second request's response`` (streams) or its body (non-stream)
StartStream = Callable[[str, dict[str, Any]], Awaitable[ChunkSource]]
StartJson = Callable[[str, dict[str, Any]], Awaitable[bytes]]


@dataclass(slots=True)
class Force:
    """What budget forcing needs for one request."""

    budget: int
    control: ReasoningControl
    rules: ReasoningRules
    #: the gateway's own assistant prefix, when the first request carried it
    assistant_prefix: str
    #: the first upstream body
    body: dict[str, Any]
    #: the client's max tokens for the whole answer (None: vLLM's room)
    answer_max: int | None
    #: the client asked for usage on every chunk
    client_continuous: bool
    on_forced: Callable[[], None]


class Tracker:
    """Follows the think block of one choice from its deltas (the raw text kept)."""

    __slots__ = ("_events", "done", "raw", "reasoning", "splitter", "starts", "upstream_split")

    def __init__(self, rules: ReasoningRules, assistant_prefix: str) -> None:
        self.starts = starts_in_reasoning(rules, assistant_prefix)
        self.splitter = ThinkSplitter(self.starts) if rules.parser == "think_tags" else None
        self.upstream_split = False
        #: reasoning text from vLLM's reasoning field
        self.reasoning: list[str] = []
        #: generated text, as sent (the gateway splits it)
        self.raw: list[str] = []
        #: the reasoning ended (or the model answered without any)
        self.done = False
        self._events = 0

    def feed(self, delta: dict[str, Any]) -> None:
        up = delta.get("reasoning")
        if not isinstance(up, str):
            up = delta.get("reasoning_content")
        if isinstance(up, str) and up:
            self.upstream_split = True
            self.reasoning.append(up)
            self._events += 1
        content = delta.get("content")
        if not isinstance(content, str) or not content:
            return
        self._events += 1
        self.raw.append(content)
        if self.upstream_split or self.splitter is None:
            if content.strip():
                self.done = True
            return
        _, answer = self.splitter.feed(content)
        if self.splitter.closed or answer.strip():
            self.done = True

    @property
    def events(self) -> int:
        """Events that carried text (the token estimate without per-chunk usage)."""
        return self._events

    def prefix_text(self) -> str:
        """The reasoning so far, as it must be sent back (before the closing)."""
        if self.upstream_split or self.splitter is None:
            return "".join(self.reasoning).rstrip("\n")
        return "".join(self.raw).rstrip("\n")


class Continuation:
    """Builds the second request (module doc)."""

    def __init__(self, force: Force) -> None:
        self.force = force

    def request(
        self, tracker: Tracker, forced: bool, used: int, prompt_text: str | None
    ) -> tuple[str, dict[str, Any]]:
        """``(path, body)`` of the second request: ``used`` tokens were generated, ``forced``
        says whether the reasoning was cut (else only the answer was)."""
        f = self.force
        c = f.control
        first = f.body
        if forced:
            text = tracker.prefix_text() + c.closing
        elif tracker.upstream_split:  # the reasoning ended: the raw text, rebuilt
            text = "".join(tracker.reasoning) + c.closing.strip("\n") + "".join(tracker.raw)
        else:
            text = "".join(tracker.raw)
        body = {k: v for k, v in first.items() if k not in ("thinking_token_budget", "n")}
        for key in _MAX_KEYS:
            body.pop(key, None)
        if f.answer_max is not None:
            body["max_tokens"] = max(1, f.answer_max - used)
        if body.get("stream"):
            opts = dict(body.get("stream_options") or {})
            opts["include_usage"] = True
            if f.client_continuous:
                opts["continuous_usage_stats"] = True
            else:
                opts.pop("continuous_usage_stats", None)
            body["stream_options"] = opts
        # vLLM's reasoning parser (or the template) took the opening out of the text
        parsed = tracker.upstream_split or tracker.splitter is None
        if c.continuation == "completions" and prompt_text is not None:
            for key in _CHAT_ONLY:
                body.pop(key, None)
            opening = c.opening if parsed and not tracker.starts else ""
            body["prompt"] = prompt_text + opening + text
            body["add_special_tokens"] = False
            return "/v1/completions", body
        messages = list(first.get("messages") or ())
        if first.get("continue_final_message") and messages:
            last = messages.pop()  # the gateway's own assistant prefix
            prefix = last.get("content") if isinstance(last.get("content"), str) else ""
        else:
            prefix = c.opening if tracker.starts or parsed else ""
        messages.append({"role": "assistant", "content": prefix + text})
        body["messages"] = messages
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
        body.pop("return_prompt_text", None)
        body.pop("echo", None)
        return "/v1/chat/completions", body


def _usage_total(usage: Any, prompt: int | None, used: int, reasoning: int | None) -> None:
    """A continuation's usage as the client's total (in place)."""
    if not isinstance(usage, dict):
        return
    completion = usage.get("completion_tokens")
    if type(completion) is int:
        usage["completion_tokens"] = completion + used
    if prompt is not None:
        usage["prompt_tokens"] = prompt
    if type(usage.get("prompt_tokens")) is int and type(usage.get("completion_tokens")) is int:
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    usage.pop("prompt_tokens_details", None)
    if reasoning is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    else:
        usage.pop("completion_tokens_details", None)


class ForcingSource:
    """A :class:`stream.ChunkSource` over the first upstream stream, then the continuation
    (module doc). Emits SSE bytes the normalizer reads as one upstream stream."""

    def __init__(self, opened: Opened, force: Force, start: StartStream) -> None:
        self.force = force
        self._start_fn = start
        self._src: ChunkSource | None = opened.source
        self._decoder = opened.decoder
        self._second: ChunkSource | None = None
        self._second_decoder = SSEDecoder()
        self._task: asyncio.Task[ChunkSource] | None = None
        self._request: tuple[str, dict[str, Any]] | None = None
        #: "first" | "cut" (second request not started) | "starting" | "second" | "done"
        self.phase = "first"
        self._out: list[bytes] = []
        self.tracker = Tracker(force.rules, force.assistant_prefix)
        self.used = 0
        self.prompt_tokens: int | None = None
        self.reasoning_tokens: int | None = None
        self.prompt_text: str | None = None
        self._id: Any = None
        self._created: Any = None
        self._reasoning_at = 0
        self._events_first = opened.first
        self._eof_first = opened.eof

    def opened(self) -> Opened:
        """The stream for :func:`stream.relay`: the primed events, processed."""
        first: list[bytes] = []
        for payload in self._events_first:
            first += self._first_event(payload)
            if self.phase != "first":
                break
        self._events_first = []
        if self._eof_first and self.phase == "first":
            self._finish_first()
        return Opened(self, SSEDecoder(), first, eof=False)

    # -- the first stream --------------------------------------------------------------------

    def _first_event(self, payload: bytes) -> list[bytes]:
        if payload == b"[DONE]":
            return [payload]
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return [payload]
        if not isinstance(obj, dict):
            return [payload]
        if self._id is None:
            self._id, self._created = obj.get("id"), obj.get("created")
        if "prompt_text" in obj:
            text = obj.get("prompt_text")
            if isinstance(text, str):
                self.prompt_text = text
            obj["prompt_text"] = None
        t = self.tracker
        choices = obj.get("choices")
        usage = obj.get("usage")
        if isinstance(usage, dict):
            if type(usage.get("prompt_tokens")) is int:
                self.prompt_tokens = usage["prompt_tokens"]
            if type(usage.get("completion_tokens")) is int:
                self.used = usage["completion_tokens"]
        finished = False
        if isinstance(choices, list) and choices:
            ch = choices[0]
            if isinstance(ch, dict):
                delta = ch.get("delta")
                if isinstance(delta, dict) and not t.done:
                    t.feed(delta)
                    if not t.done:  # all of it so far is reasoning
                        self._reasoning_at = self.used if isinstance(usage, dict) else t.events
                finished = ch.get("finish_reason") is not None
            if isinstance(usage, dict) and not self.force.client_continuous:
                del obj["usage"]
        elif isinstance(usage, dict) and not choices:  # the usage chunk: exact reasoning count
            if self.reasoning_tokens is None and t.done:
                self.reasoning_tokens = self._reasoning_at
            if self.reasoning_tokens is not None:
                details = usage.get("completion_tokens_details")
                details = dict(details) if isinstance(details, dict) else {}
                details["reasoning_tokens"] = self.reasoning_tokens
                usage["completion_tokens_details"] = details
        out = [orjson.dumps(obj)]
        count = self.used if isinstance(usage, dict) else t.events
        if not t.done and not finished and count >= self.force.budget:
            out += self._cut(count)
        return out

    def _cut(self, count: int) -> list[bytes]:
        """The budget is reached inside the reasoning: end it and start the continuation."""
        self.force.on_forced()
        self.reasoning_tokens = count
        if self._src is not None:
            self._src.close()  # vLLM aborts the first request
            self._src = None
        self._request = Continuation(self.force).request(
            self.tracker, True, count, self.prompt_text
        )
        self.phase = "cut"
        t = self.tracker
        if t.splitter is not None and not t.upstream_split:
            # the normalizer's splitter ends the reasoning at the closing tag
            closing = {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "choices": [
                    {
                        "index": 0,
                        # the tag only: the newline before it is no reasoning of the model's
                        "delta": {"content": self.force.control.closing.lstrip("\n")},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ],
            }
            return [orjson.dumps(closing)]
        return []

    def _finish_first(self) -> None:
        for payload in self._decoder.flush():
            self._out += [sse(p) for p in self._first_event(payload)]
        if self.phase == "first":
            self.phase = "done"

    def _feed_first(self, chunk: bytes) -> None:
        for payload in self._decoder.feed(chunk):
            self._out += [sse(p) for p in self._first_event(payload)]
            if self.phase != "first":
                return  # what followed the budget is dropped with the first request

    # -- the continuation --------------------------------------------------------------------

    def _second_event(self, payload: bytes) -> bytes | None:
        if payload == b"[DONE]":
            return sse(payload)
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return sse(payload)
        if not isinstance(obj, dict):
            return sse(payload)
        obj["id"], obj["created"] = self._id, self._created
        obj["object"] = "chat.completion.chunk"
        choices = obj.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            ch = choices[0]
            if "text" in ch and "delta" not in ch:  # a /v1/completions continuation
                text = ch.pop("text")
                ch.pop("prompt_token_ids", None)
                if ch.get("finish_reason") is None:
                    ch.pop("stop_reason", None)
                ch["delta"] = {"content": text} if isinstance(text, str) else {}
            delta = ch.get("delta")
            if isinstance(delta, dict):
                if "role" in delta and not delta.get("content"):
                    return None  # the first stream already sent the role
                delta.pop("role", None)
                for key in ("reasoning", "reasoning_content"):
                    moved = delta.pop(key, None)  # all of it is the answer now
                    if isinstance(moved, str) and not delta.get("content"):
                        delta["content"] = moved
        usage = obj.get("usage")
        if isinstance(usage, dict):
            if choices and not self.force.client_continuous:
                del obj["usage"]
            else:
                _usage_total(usage, self.prompt_tokens, self.used, self.reasoning_tokens)
        return sse(orjson.dumps(obj))

    async def _begin(self) -> ChunkSource:
        assert self._request is not None
        path, body = self._request
        return await self._start_fn(path, body)

    async def _await_second(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._begin())
            self.phase = "starting"
        try:
            # a read cancelled by relay's timers (heartbeat) leaves the request running
            self._second = await asyncio.shield(self._task)
        except UpstreamStatusError as exc:
            self.phase = "done"
            body = error_body(exc.message, exc.type, code=exc.upstream_code, param=exc.param)
            self._out += [sse_frame(body), DONE_FRAME]
            return
        self.phase = "second"

    # -- ChunkSource -------------------------------------------------------------------------

    def read_nowait(self) -> bytes:
        if not self._out:
            if self.phase == "first" and self._src is not None:
                chunk = self._src.read_nowait()
                if chunk:
                    self._feed_first(chunk)
            elif self.phase == "second" and self._second is not None:
                chunk = self._second.read_nowait()
                if chunk:
                    self._feed_second(chunk)
        return self._take()

    async def read_chunk(self) -> bytes:
        while not self._out:
            if self.phase == "first":
                assert self._src is not None
                chunk = await self._src.read_chunk()
                if chunk:
                    self._feed_first(chunk)
                else:
                    self._finish_first()
            elif self.phase in ("cut", "starting"):
                await self._await_second()
            elif self.phase == "second":
                assert self._second is not None
                chunk = await self._second.read_chunk()
                if chunk:
                    self._feed_second(chunk)
                else:
                    self._out += [
                        b for p in self._second_decoder.flush() if (b := self._second_event(p))
                    ]
                    self.phase = "done"
            else:
                return b""
        return self._take()

    def _feed_second(self, chunk: bytes) -> None:
        for payload in self._second_decoder.feed(chunk):
            frame = self._second_event(payload)
            if frame is not None:
                self._out.append(frame)

    def _take(self) -> bytes:
        out, self._out = b"".join(self._out), []
        return out

    def close(self, *, reuse: bool = False) -> None:
        """Close whatever upstream is open (idempotent, synchronous)."""
        if self._src is not None:
            src, self._src = self._src, None
            src.close(reuse=reuse and self.phase in ("first", "done"))
        task, self._task = self._task, None
        if task is not None:
            if task.done():
                if not task.cancelled() and task.exception() is None and self._second is None:
                    task.result().close()
            else:
                task.cancel()
        if self._second is not None:
            second, self._second = self._second, None
            second.close(reuse=reuse)


def sse(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


# -- non-stream -----------------------------------------------------------------------------


async def continue_json(raw: bytes, force: Force, start: StartJson) -> bytes:
    """The non-stream answer of a request whose first part was limited to the budget."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError("upstream sent a response that is not JSON") from None
    if not isinstance(obj, dict):
        raise UpstreamProtocolError("upstream sent an unexpected response")
    prompt_text = obj.get("prompt_text")
    if "prompt_text" in obj:
        obj["prompt_text"] = None
    choices = obj.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        return orjson.dumps(obj)
    ch: dict[str, Any] = choices[0]
    msg = ch.get("message")
    raw_usage = obj.get("usage")
    usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
    completion = usage.get("completion_tokens")
    used: int = completion if type(completion) is int else 0
    tracker = Tracker(force.rules, force.assistant_prefix)
    if isinstance(msg, dict):
        tracker.feed(msg)
    if ch.get("finish_reason") != "length" or not isinstance(msg, dict):
        return orjson.dumps(obj)
    forced = not tracker.done
    if not forced and force.answer_max is not None and used >= force.answer_max:
        return orjson.dumps(obj)  # the answer reached the client's own max_tokens
    if forced and force.budget == 0:
        # vLLM generates at least one token: a budget of 0 drops it (as the stream does)
        tracker, used = Tracker(force.rules, force.assistant_prefix), 0
        for key in ("reasoning", "reasoning_content"):
            msg.pop(key, None)
        msg["content"] = None
    if forced:
        force.on_forced()
    path, body = Continuation(force).request(
        tracker, forced, used, prompt_text if isinstance(prompt_text, str) else None
    )
    raw2 = await start(path, body)
    try:
        obj2 = orjson.loads(raw2)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError("upstream sent a response that is not JSON") from None
    choices2 = obj2.get("choices") if isinstance(obj2, dict) else None
    if not isinstance(choices2, list) or not choices2 or not isinstance(choices2[0], dict):
        raise UpstreamProtocolError("upstream sent an unexpected response")
    ch2: dict[str, Any] = choices2[0]
    text2: Any
    if "text" in ch2 and "message" not in ch2:
        text2 = ch2.get("text") or ""
    else:
        raw_msg2 = ch2.get("message")
        msg2: dict[str, Any] = raw_msg2 if isinstance(raw_msg2, dict) else {}
        # vLLM's non-stream reasoning parser puts a continued answer in `reasoning`
        text2 = msg2.get("content") or msg2.get("reasoning") or msg2.get("reasoning_content") or ""
        if msg2.get("tool_calls"):
            msg["tool_calls"] = msg2["tool_calls"]
    if not isinstance(text2, str):
        text2 = ""
    if tracker.upstream_split:
        answer = "" if forced else (msg.get("content") or "")
        msg["content"] = answer + text2
    else:
        # as in the stream: the closing tag ends the reasoning, its newline is not reasoning
        closing = force.control.closing.lstrip("\n") if forced else ""
        msg["content"] = "".join(tracker.raw) + closing + text2
    ch["finish_reason"] = ch2.get("finish_reason")
    ch["stop_reason"] = ch2.get("stop_reason")
    usage2 = obj2.get("usage")
    if isinstance(usage2, dict):
        prompt_tokens = usage.get("prompt_tokens")
        prompt = prompt_tokens if type(prompt_tokens) is int else None
        _usage_total(usage2, prompt, used, used if forced else None)
        obj["usage"] = usage2
    return orjson.dumps(obj)
