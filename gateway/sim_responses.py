"""vLLM 0.32's Responses API (``/v1/responses``) in the simulated server.

Facts from ``vllm/entrypoints/openai/responses/`` and recordings of the real server:

- Stream: ``event: <type>\\ndata: <json>\\n\\n`` frames, no ``data: [DONE]``;
  ``response.created`` and ``response.in_progress`` (status ``in_progress``), then per output
  item ``output_item.added`` / ``content_part.added`` / deltas (``output_text.delta``,
  ``reasoning_text.delta``, ``function_call_arguments.delta``) / ``*.done`` /
  ``output_item.done``, then always ``response.completed``, also when the status is
  ``incomplete`` (max_output_tokens; ``incomplete_details.reason``): vLLM never sends
  ``response.incomplete`` or ``response.failed``. ``sequence_number`` counts from 0.
- ``store`` is ignored unless the server stores (``VLLM_ENABLE_RESPONSES_API_STORE=1``);
  ``background`` then needs it (400 otherwise). ``previous_response_id`` that is not stored
  is a 404 (``invalid_request_error``, param ``response_id``). ``GET /v1/responses/{id}``
  returns the stored response (a background one stays ``queued`` until it ends);
  ``?stream=true&starting_after=N`` replays a background stream's events after N (for any
  other response vLLM starts a 200 and drops the connection). ``cancel`` works only for a
  queued/in-progress background response (400 "Cannot cancel a synchronous response."
  otherwise) and returns it with status ``cancelled``.
- With a reasoning parser the non-stream output has a ``reasoning`` item only when there is
  reasoning text and a ``message`` only when there is content; without any parser, one
  ``message`` (``content: []`` when empty). ``thinking_token_budget`` is not a Responses
  field in 0.32 (ignored); ``chat_template_kwargs`` and ``reasoning.effort`` reach the
  template as for chat. A generation error cannot be serialised as a stream event in 0.32:
  the stream is cut (``sim.error_after`` does the same).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from . import sim_checks as chk
from . import sim_plan as sp
from .sim_items import (
    Event,
    ItemStream,
    call_item,
    message_item,
    normalized_reasoning,
    normalized_text,
    normalized_tool,
    reasoning_item,
    usage,
)
from .sim_plan import new_id as _new_id

if TYPE_CHECKING:
    from .sim import SimVLLM


def frame(event: Event) -> bytes:
    if "_raw" in event:  # a scripted malformed event
        raw: bytes = event["_raw"]
        return raw
    kind: str = event["type"]
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def not_found(response_id: str) -> chk.Refusal:
    return chk.Refusal(
        f"Response with id '{response_id}' not found.",
        type="invalid_request_error",
        param="response_id",
        status=404,
    )


def _words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(p.get("text") or p.get("output")) for p in value if isinstance(p, dict))
    return 0


def input_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's input as chat messages (what vLLM renders), for size and history."""
    out: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str):
        out.append({"role": "system", "content": body["instructions"]})
    items = body["input"]
    if isinstance(items, str):
        return [*out, {"role": "user", "content": items}]
    if not isinstance(items, list):
        raise TypeError("input")
    for item in items:
        if not isinstance(item, dict):
            raise TypeError("input item")
        kind = item.get("type", "message")
        if kind == "message":
            out.append({"role": item.get("role", "user"), "content": item.get("content")})
        elif kind == "function_call":
            out.append({"role": "assistant", "content": item.get("arguments")})
        elif kind == "function_call_output":
            out.append({"role": "tool", "content": item.get("output")})
        elif kind == "reasoning":
            out.append({"role": "assistant", "content": item.get("content")})
        else:
            raise TypeError(f"input item type {kind}")
    return out


def prompt_size(messages: list[dict[str, Any]]) -> int:
    return sum(_words(m.get("content")) + 4 for m in messages)


def thinking_off(body: dict[str, Any]) -> bool:
    kwargs = body.get("chat_template_kwargs") or {}
    if isinstance(kwargs, dict) and "enable_thinking" in kwargs:
        return kwargs["enable_thinking"] is False
    reasoning = body.get("reasoning")
    return isinstance(reasoning, dict) and reasoning.get("effort") == "none"


class Plan:
    """A validated Responses request, planned."""

    def __init__(
        self,
        body: dict[str, Any],
        sim: dict[str, Any],
        messages: list[dict[str, Any]],
        prompt_tokens: int,
        max_tokens: int,
        choice: sp.Choice,
        parser: bool,
        reasoning: bool,
        tool_mode: Any,
        rid: str,
    ) -> None:
        self.body = body
        self.sim = sim
        self.messages = messages
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.choice = choice
        self.parser = parser
        self.reasoning = reasoning
        self.tool_mode = tool_mode
        self.rid = rid
        self.created = int(time.time())


class SimResponses:
    """``/v1/responses``: create (stream, background), retrieve, cancel; the in-memory store."""

    def __init__(self, server: SimVLLM, *, store: bool) -> None:
        self.server = server
        self.store_enabled = store
        self.store: dict[str, Event] = {}
        self.history: dict[str, list[dict[str, Any]]] = {}
        self.events: dict[str, tuple[list[Event], asyncio.Event]] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def register(self, app: web.Application) -> None:
        app.router.add_post("/v1/responses", self.create)
        app.router.add_get("/v1/responses/{response_id}", self.retrieve)
        app.router.add_post("/v1/responses/{response_id}/cancel", self.cancel)

    # -- validation and planning ----------------------------------------------------------

    def validate(self, body: dict[str, Any]) -> chk.Refusal | None:
        """``ResponsesRequest``'s validators, in vLLM's order (the ``mode="before"`` ones,
        which may add ``tool_choice``, then the fields)."""
        if body.get("background") and not body.get("store", True):
            return chk.param_error("background can only be used when `store` is true", "background")
        if body.get("prompt") is not None:
            return chk.param_error("prompt template is not supported", "prompt")
        tools = body.get("tools") or []
        choice = body.get("tool_choice", "auto")
        named = isinstance(choice, dict) and choice.get("type") in ("function", "custom")
        if not tools:
            if choice in ("auto", "none"):
                body["tool_choice"] = "none"
            elif choice == "required":
                return chk.param_error(
                    "Tool choice 'required' must be specified with 'tools' parameter.",
                    "tool_choice",
                )
            elif named:
                return chk.param_error(
                    "Tool choice 'function' not found in 'tools' parameter.", "tool_choice"
                )
        elif named and not any(
            isinstance(t, dict) and t.get("name") == choice.get("name") for t in tools
        ):
            return chk.param_error(
                "Tool choice 'function' not found in 'tools' parameter.", "tool_choice"
            )
        if "input" not in body:
            return chk.missing_field(body, "input")
        return None

    def plan(self, body: dict[str, Any]) -> Plan | chk.Refusal:
        server = self.server
        sim: dict[str, Any] = body.get("sim") or {}
        if not isinstance(sim, dict):
            raise TypeError("sim")
        if (refusal := self.validate(body)) is not None:
            return refusal
        if body.get("model") not in server.served_models:
            return chk.Refusal(
                f"The model `{body.get('model')}` does not exist. Valid aliases: "
                f"{', '.join(server.served_models)}.",
                type="NotFoundError",
                param="model",
                status=404,
            )
        if body.get("store", True) and not self.store_enabled and body.get("background"):
            return chk.Refusal(
                "This vLLM engine does not support `store=True` and therefore does not "
                "support the background mode. To enable these features, set the environment "
                "variable `VLLM_ENABLE_RESPONSES_API_STORE=1` when launching the vLLM server.",
                type="invalid_request_error",
                param="background",
            )
        # vLLM silently ignores store=True (the default) unless its store is enabled
        body["store"] = bool(body.get("store", True)) and self.store_enabled
        messages = input_messages(body)
        history: list[dict[str, Any]] = []
        prev = body.get("previous_response_id")
        if prev is not None:
            if prev not in self.store:
                return not_found(prev)
            history = [
                *self.history.get(prev, []),
                *({"role": "assistant", "content": _output_text(self.store[prev])},),
            ]
        size = (
            int(sim["prompt_tokens"])
            if "prompt_tokens" in sim
            else prompt_size([*history, *messages])
        )
        caps = server.caps
        checked = chk.check_lengths(
            size, False, body.get("max_output_tokens"), "max_output_tokens", caps
        )
        if isinstance(checked, chk.Refusal):
            if size == caps.max_model_len and checked.param == "max_tokens":
                return chk.Refusal(
                    f"The engine prompt length {size} exceeds the max_model_len "
                    f"{caps.max_model_len}. Please reduce prompt.",
                    type="invalid_request_error",
                    param="input",
                )
            return checked
        reasoning = caps.reasoning_parser is not None or bool(sim.get("split_reasoning"))
        tool_mode = None
        calls: list[tuple[str, str]] = []
        if caps.tool_parser is not None and body.get("tools") and body.get("tool_choice") != "none":
            tool_mode = body.get("tool_choice", "auto")
            calls = sp.planned_tool_calls(body, sim, caps, responses=True)
        structured = sp.structured_text(body, sim) if not calls else None
        script = server.base_script(sim)
        if reasoning:
            script = sp.shape_thinking(script, off=thinking_off(body), budget=None)
        if calls or structured is not None:
            tail = sp.tool_call_tokens(calls) if calls else sp.pieces(structured or "", sp.TEXT_ID)
            head, end, _ = sp.split_think(script) if reasoning else ([], None, [])
            script = [*head, end, *tail] if end is not None else (script if reasoning else tail)
        choice = sp.plan(script, body, checked, server.eos_token_id)
        return Plan(
            body,
            sim,
            [*history, *messages],
            size,
            checked,
            choice,
            parser=reasoning or caps.tool_parser is not None,
            reasoning=reasoning,
            tool_mode=tool_mode,
            rid=str(body.get("request_id") or _new_id("resp_")),
        )

    # -- the response object --------------------------------------------------------------

    def response(
        self,
        p: Plan,
        status: str,
        output: list[Event],
        with_usage: bool,
    ) -> Event:
        body = p.body
        tokens = p.choice.tokens
        reasoning_count = sp.count_reasoning_tokens(tokens) if p.reasoning else 0
        return {
            "id": p.rid,
            "created_at": p.created,
            "incomplete_details": {"reason": "max_output_tokens"}
            if status == "incomplete"
            else None,
            "instructions": body.get("instructions"),
            "metadata": body.get("metadata"),
            "model": body["model"],
            "object": "response",
            "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True) is not False,
            "temperature": float(body["temperature"])
            if body.get("temperature") is not None
            else 1.0,
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": [normalized_tool(t) for t in body.get("tools") or []],
            "top_p": float(body["top_p"]) if body.get("top_p") is not None else 1.0,
            "background": bool(body.get("background")),
            "max_output_tokens": p.max_tokens,
            "max_tool_calls": body.get("max_tool_calls"),
            "previous_response_id": body.get("previous_response_id"),
            "prompt": None,
            "reasoning": normalized_reasoning(body.get("reasoning")),
            "service_tier": body.get("service_tier", "auto"),
            "status": status,
            "text": normalized_text(body.get("text")),
            "top_logprobs": None,
            "truncation": body.get("truncation", "disabled"),
            "usage": usage(p.prompt_tokens, len(tokens), reasoning_count) if with_usage else None,
            "user": body.get("user"),
            "presence_penalty": float(body.get("presence_penalty") or 0.0),
            "frequency_penalty": float(body.get("frequency_penalty") or 0.0),
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "input_messages": None,
            "output_messages": None,
        }

    def final_status(self, p: Plan) -> str:
        return "incomplete" if p.choice.finish == "length" else "completed"

    def output_items(self, p: Plan) -> list[Event]:
        """The non-streaming output (vLLM's ``_make_response_output_items``)."""
        tokens = p.choice.tokens
        if not p.parser:
            return [message_item(_new_id("msg_"), "".join(t for _, t in tokens), "completed")]
        reasoning: str | None = None
        if p.reasoning:
            _, end, answer = sp.split_think(tokens)
            if end is None:
                reasoning, tokens = "".join(t for _, t in tokens), []
            else:
                reasoning = "".join(t for _, t in tokens[: len(tokens) - len(answer) - 1])
                tokens = answer
        content = "".join(t for _, t in tokens)
        calls: list[tuple[str, str]] = []
        if p.tool_mode is not None and (parsed := sp.parse_tool_calls(tokens)) is not None:
            content, calls = parsed
        out: list[Event] = []
        if reasoning:
            out.append(reasoning_item(_new_id("rs_"), reasoning, None))
        if content:
            out.append(message_item(_new_id("msg_"), content, "completed"))
        for name, args in calls:
            out.append(
                call_item(_new_id("fc_"), _new_id("chatcmpl-tool-"), name, args, "completed")
            )
        return out

    def remember(self, p: Plan, response: Event) -> None:
        if p.body.get("store"):
            stored = self.store.get(p.rid)
            if stored is None or stored.get("status") != "cancelled":
                self.store[p.rid] = response

    # -- routes ---------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.StreamResponse:
        server = self.server
        body = await server.read_body(request)
        if isinstance(body, web.Response):
            return body
        sim = body.get("sim") or {}
        if isinstance(sim, dict) and sim.get("status"):
            return _refusal(
                chk.Refusal("simulated failure", "InternalServerError", None, int(sim["status"]))
            )
        try:
            p = self.plan(body)
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            return _refusal(chk.Refusal(f"invalid request: {type(exc).__name__}"))
        if isinstance(p, chk.Refusal):
            return _refusal(p)
        if body.get("store"):
            self.history[p.rid] = p.messages
        if body.get("background"):
            queued = self.response(p, "queued", [], with_usage=False)
            self.store[p.rid] = queued
            if body.get("stream"):
                events: list[Event] = []
                signal = asyncio.Event()
                self.events[p.rid] = (events, signal)
                self._spawn(p, self._collect(p, events, signal))
                return await self._replay(request, p.rid, None)
            self._spawn(p, self._background(p))
            return _send(queued)
        if body.get("stream"):
            return await self._stream(request, p)
        server.active += 1
        try:  # a client that leaves cancels the request, as in vLLM
            async with server.load.admit(1, p.prompt_tokens) as slot:
                await asyncio.sleep(
                    float(p.sim.get("first_token_delay", 0))
                    + server.token_delay * len(p.choice.tokens)
                )
                slot.generated = len(p.choice.tokens)
        except asyncio.CancelledError:
            server.cancelled += 1
            raise
        finally:
            server.active -= 1
        server.load.finished(p.choice.finish)
        response = self.response(p, self.final_status(p), self.output_items(p), with_usage=True)
        self.remember(p, response)
        return _send(response)

    def _spawn(self, p: Plan, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self.tasks[p.rid] = task
        task.add_done_callback(lambda _: self.tasks.pop(p.rid, None))

    async def _background(self, p: Plan) -> None:
        async with self.server.load.admit(1, p.prompt_tokens) as slot:
            await asyncio.sleep(
                float(p.sim.get("first_token_delay", 0))
                + self.server.token_delay * len(p.choice.tokens)
            )
            slot.generated = len(p.choice.tokens)
        response = self.response(p, self.final_status(p), self.output_items(p), with_usage=True)
        response["background"] = True
        self.remember(p, response)

    async def _collect(self, p: Plan, events: list[Event], signal: asyncio.Event) -> None:
        try:
            async for event in self.events_of(p):
                events.append(event)
                signal.set()
        finally:
            signal.set()

    async def _replay(
        self, request: web.Request, response_id: str, starting_after: int | None
    ) -> web.StreamResponse:
        """vLLM's ``responses_background_stream_generator``: the stored events after
        ``starting_after``, then the new ones until ``response.completed``."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        if response_id not in self.events:  # vLLM raises inside the stream: the body is cut
            assert request.transport is not None
            request.transport.abort()
            return resp
        events, signal = self.events[response_id]
        i = 0 if starting_after is None else starting_after + 1
        while True:
            signal.clear()
            while i < len(events):
                await resp.write(frame(events[i]))
                if events[i]["type"] == "response.completed":
                    await resp.write_eof()
                    return resp
                i += 1
            if response_id not in self.tasks:
                await resp.write_eof()
                return resp
            await signal.wait()

    async def retrieve(self, request: web.Request) -> web.StreamResponse:
        response_id = request.match_info["response_id"]
        response = self.store.get(response_id)
        if response is None:
            return _refusal(not_found(response_id))
        if request.query.get("stream", "").lower() in ("true", "1"):
            after = request.query.get("starting_after")
            return await self._replay(request, response_id, int(after) if after else None)
        return _send(response)

    async def cancel(self, request: web.Request) -> web.Response:
        response_id = request.match_info["response_id"]
        response = self.store.get(response_id)
        if response is None:
            return _refusal(not_found(response_id))
        if response.get("status") not in ("queued", "in_progress"):
            return _refusal(
                chk.Refusal(
                    "Cannot cancel a synchronous response.",
                    type="invalid_request_error",
                    param="response_id",
                )
            )
        response["status"] = "cancelled"
        task = self.tasks.get(response_id)
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        return _send(response)

    # -- streaming ------------------------------------------------------------------------

    async def _stream(self, request: web.Request, p: Plan) -> web.StreamResponse:
        server = self.server
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        server.active += 1
        try:
            async for event in self.events_of(p, request, resp):
                await resp.write(frame(event))
            await resp.write_eof()
        except _Cut:
            assert request.transport is not None
            request.transport.abort()
        except (asyncio.CancelledError, ConnectionResetError):
            server.cancelled += 1
            raise
        finally:
            server.active -= 1
        return resp

    async def events_of(
        self,
        p: Plan,
        request: web.Request | None = None,
        resp: web.StreamResponse | None = None,
    ) -> AsyncIterator[Event]:
        """Every event of one streamed response, with vLLM's timing and the sim's faults."""
        server = self.server
        faults = p.sim
        seq = 0

        def numbered(event: Event) -> Event:
            nonlocal seq
            event["sequence_number"] = seq
            seq += 1
            return event

        initial = self.response(p, "in_progress", [], with_usage=False)
        yield numbered({"response": initial, "sequence_number": 0, "type": "response.created"})
        yield numbered({"response": initial, "sequence_number": 0, "type": "response.in_progress"})
        machine = ItemStream(
            parser=p.parser,
            reasoning=p.reasoning and not thinking_off(p.body),
            tool_mode=p.tool_mode,
        )
        delay = float(faults.get("token_delay", server.token_delay))
        merge = max(1, int(faults.get("merge", 1)))
        tokens = p.choice.tokens
        async with server.load.admit(1, p.prompt_tokens) as slot:
            await _pause(faults, float(faults.get("first_token_delay", 0)), resp)
            i = 0
            while i < len(tokens):
                group = tokens[i : i + merge]
                i += len(group)
                slot.generated = i
                if faults.get("error_after") is not None and i > faults["error_after"]:
                    raise _Cut  # vLLM 0.32 fails to serialise its error event
                if faults.get("drop_after") is not None and i > faults["drop_after"]:
                    raise _Cut
                if faults.get("malformed_after") is not None and i > faults["malformed_after"]:
                    faults = {**faults, "malformed_after": None}
                    yield {
                        "type": "malformed",
                        "_raw": b'event: response.output_text.delta\ndata: {"broken": [\n\n',
                    }
                for event in machine.feed(group):
                    yield numbered(event)
                if faults.get("stall_after") is not None and i == faults["stall_after"]:
                    await _pause(faults, float(faults.get("stall_for", 3600)), resp)
                elif delay and i < len(tokens):
                    await asyncio.sleep(delay)
            server.load.finished(p.choice.finish)
        for event in machine.close():
            yield numbered(event)
        final = self.response(p, self.final_status(p), machine.items, with_usage=True)
        if p.body.get("background"):
            final["background"] = True
        self.remember(p, final)
        mode = faults.get("finish")
        if mode == "omit":
            return
        for _ in range(2 if mode == "twice" else 1):
            yield numbered({"response": final, "sequence_number": 0, "type": "response.completed"})


class _Cut(Exception):
    """The stream ends without its terminal event: the connection is closed."""


async def _pause(faults: dict[str, Any], seconds: float, resp: web.StreamResponse | None) -> None:
    keepalive = faults.get("keepalive")
    if keepalive and resp is not None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(keepalive, left))
            if time.monotonic() < end:
                await resp.write(b": keep-alive\n\n")
    elif seconds > 0:
        await asyncio.sleep(seconds)


def _output_text(response: Event) -> str:
    texts = []
    for item in response.get("output") or ():
        for part in item.get("content") or ():
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
    return "".join(texts)


def _send(obj: Any) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type="application/json")


def _refusal(r: chk.Refusal) -> web.Response:
    return web.Response(
        body=orjson.dumps(r.body()), status=r.status, content_type="application/json"
    )
