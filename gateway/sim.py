"""A simulated vLLM OpenAI server (vLLM 0.32) for the demo, the tests and the benchmark.

Wire format, held to recordings of the real server (``tests/vllm`` records them,
``tests/test_sim_fidelity.py`` holds this server to them):

- Chat stream: one role chunk per choice (``"content": ""``); chunks ``"logprobs": null,
  "finish_reason": null, "token_ids": null``; each choice's finish chunk carries its last
  text, ``finish_reason`` and ``stop_reason`` (and ``system_fingerprint`` unless a usage
  chunk follows); ``stream_options.include_usage`` adds a ``"choices": []`` usage chunk;
  ``data: [DONE]``. With ``n`` > 1 the choices' chunks interleave, step by step.
- Completions: a list of prompts with ``n`` gives ``n * len(prompts)`` choices, index
  ``prompt_index * n + i``, interleaved in the stream, each with its own finish chunk; usage
  counts each prompt once and every choice's tokens. ``max_tokens`` defaults to 16.
- Errors: ``{"error": {"message", "type", "param", "code": <int>}}`` with vLLM's own messages
  (``gateway/sim_plan.py``): ``max_tokens`` over ``max_model_len`` is a 400, prompt +
  ``max_tokens`` over it is *clamped* (a 400 only when no room is left), tool choices without
  a tool parser are 400s, ``thinking_token_budget`` without a reasoning parser is a 400 (an
  error event inside a 200 stream when ``stream`` is true).
- ``GET /v1/models`` reports ``max_model_len``, ``root``, ``parent`` and ``permission``
  (``GET /v1/models/{id}`` is a 404 ``{"detail": "Not Found"}``: vLLM has no such route);
  ``GET /metrics`` serves vLLM's Prometheus families (``gateway/sim_metrics.py``);
  ``/v1/responses`` (+ ``GET``/``cancel``) is vLLM's Responses API
  (``gateway/sim_responses.py``).

Server options (constructor arguments / ``gateway sim`` flags), each as vLLM's flag:
``max_model_len`` (``--max-model-len``, default 131072), ``reasoning_parser``
(``--reasoning-parser deepseek_r1``: text before ``</think>`` goes to ``reasoning``,
``thinking_token_budget`` is enforced, usage gets ``completion_tokens_details`` whose
``reasoning_tokens`` counts only a *generated* ``<think>`` block, so 0 for R1 scripts, as
in vLLM),
``tool_call_parser`` + ``enable_auto_tool_choice`` (``--tool-call-parser hermes
--enable-auto-tool-choice``), ``enable_responses_store`` (``--enable-responses-store``, or
``VLLM_ENABLE_RESPONSES_API_STORE=1`` as for vLLM), ``max_num_seqs`` (``--max-num-seqs``,
default 256 sequences, ``n`` counting each: requests beyond it wait, reported as waiting),
``kv_cache_tokens``
(``--kv-cache-tokens``: the KV-cache size behind ``vllm:kv_cache_usage_perc``).

Generation is scripted: a list of ``[token_id, text]``. It stops the way vLLM does: at the
first token whose id is in ``stop_token_ids`` (``finish_reason: "stop"``, ``stop_reason: id``,
the token's text not emitted), at the model's eos id (``stop_reason: null``), at a ``stop``
string, or at ``max_tokens`` (``length``). Without a matching stop id the script runs on,
emitting end-of-turn text as a misconfigured server does. The script is the model's output
after its chat template opened ``<think>\\n`` (DeepSeek-R1): in reasoning mode a budget B
keeps B - 1 reasoning tokens (the prompt's ``\\n`` counts, as in vLLM), then ``</think>`` is
forced; ``chat_template_kwargs.enable_thinking: false`` (or ``reasoning_effort: "none"``)
generates only the answer, as Qwen3's template does, and then, like vLLM 0.32's
``deepseek_r1`` parser, a stream puts it in ``content`` but a non-stream answer puts it all
in ``reasoning``. Tool calls are generated in Hermes format (``<tool_call>{"name": ...,
"arguments": ...}</tool_call>``) for a named or ``required`` tool choice (arguments: a small
instance of the tool's schema), structured output (``response_format``) as a small instance
of the schema (``{}`` for ``json_object``); both replace the answer after ``</think>``.
``/v1/completions`` applies a budget when the prompt leaves a ``<think>`` block open.
Prompt size: words of each message's content + 4 per message (completions: words, or the
number of token ids).

A request may carry ``"sim": {...}`` (an extra field the gateway passes through) to script it:
``tokens`` (the script), ``choices`` (a script per choice index, cycled), ``repeat`` (the
script n times, for long streams), ``prompt_tokens`` (the prompt size to report and check),
``tool_calls`` (``[{"name", "arguments"}]``: the calls the model makes, also for ``auto``),
``json`` (the structured-output value), ``split_reasoning`` (act as if started with
``--reasoning-parser deepseek_r1`` for this request); faults: ``token_delay``,
``first_token_delay``, ``stall_after``/``stall_for``, ``keepalive`` (SSE comments every
that many seconds while stalled), ``drop_after`` (close the connection), ``error_after``
(an error event, then ``[DONE]``), ``malformed_after`` (one broken event), ``finish``
(``"abort"``, ``"null"``, ``"omit"``; a list gives one per choice), ``omit_done``,
``status`` (answer with that HTTP error), ``merge`` (tokens per chunk). In a Responses
stream: ``finish: "omit"`` leaves out ``response.completed``, ``"twice"`` sends it twice,
``error_after`` cuts the stream as vLLM 0.32 does (it cannot serialise its error event),
``drop_after``, ``malformed_after``, the delays, stalls and ``keepalive`` as above.

Test hooks: ``GET /sim/requests`` returns the bodies received; ``GET /sim/stats`` counts
streams cancelled by the client (and ``active``, ``auth``); ``POST /sim/load`` scripts the
load ``/metrics`` reports (``{"running": n, "waiting": n, "kv": 0.9}``, null clears one;
``"metrics_delay": s`` stalls ``/metrics``, ``"metrics_status": 500`` fails it,
``"metrics_drop": true`` closes it unanswered), ``GET /sim/load`` shows it;
``POST /sim/reset`` clears requests, stats and scripted load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import deque
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from . import sim_checks as chk
from . import sim_plan as sp
from .sim_chat import DONE, ChatStream, Job, full_body
from .sim_metrics import SimLoad
from .sim_plan import new_id

# A short DeepSeek-R1-Distill answer. The chat template already opened <think>, so the output
# holds only </think> (151649). After the answer comes the eos <｜end▁of▁sentence｜> (151643)
# and, for a server that was not told to stop there, a run-on of the next turn.
R1_DEMO: list[tuple[int, str]] = [
    (1001, "Okay"),
    (1002, ","),
    (1003, " the"),
    (1004, " user"),
    (1005, " asks"),
    (1006, " for"),
    (1007, " 2"),
    (1008, " +"),
    (1009, " 2"),
    (1010, "."),
    (1011, " That"),
    (1012, " is"),
    (1013, " 4"),
    (1010, "."),
    (1014, "\n"),
    (151649, "</think>"),
    (1015, "\n\n"),
    (1016, "2"),
    (1008, " +"),
    (1009, " 2"),
    (1017, " ="),
    (1018, " **"),
    (1019, "4"),
    (1020, "**"),
    (1010, "."),
    (151643, "<｜end▁of▁sentence｜>"),
    (151644, "<｜User｜>"),
    (1021, "Thanks"),
    (1022, "!"),
]


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _error(message: str, type_: str, status: int, param: str | None = None) -> web.Response:
    return _json(
        {"error": {"message": message, "type": type_, "param": param, "code": status}}, status
    )


def refuse(r: chk.Refusal) -> web.Response:
    return _json(r.body(), r.status)


class SimVLLM:
    """The simulated server's state and handlers."""

    def __init__(
        self,
        served_models: list[str],
        *,
        script: list[tuple[int, str]] | None = None,
        eos_token_id: int | None = None,
        token_delay: float = 0.0,
        record: int = 1000,
        max_model_len: int = 131072,
        reasoning_parser: str | None = None,
        tool_call_parser: str | None = None,
        enable_auto_tool_choice: bool = False,
        enable_responses_store: bool | None = None,
        max_num_seqs: int = 256,
        kv_cache_tokens: int = 1 << 20,
        model_path: str | None = None,
    ) -> None:
        self.served_models = served_models
        self.script = script or R1_DEMO
        self.eos_token_id = eos_token_id
        self.token_delay = token_delay
        self.caps = chk.Caps(
            max_model_len=max_model_len,
            reasoning_parser=reasoning_parser,
            tool_parser=tool_call_parser if enable_auto_tool_choice else None,
            enable_auto_tools=enable_auto_tool_choice,
        )
        if enable_responses_store is None:
            enable_responses_store = os.environ.get("VLLM_ENABLE_RESPONSES_API_STORE") == "1"
        self.model_path = model_path or served_models[0]
        self.requests: deque[dict[str, Any]] = deque(maxlen=record)
        #: the Authorization header of each request (None when absent), in order
        self.auth: deque[str | None] = deque(maxlen=record)
        self.cancelled = 0
        self.active = 0
        self.load = SimLoad(served_models[0], max_num_seqs, kv_cache_tokens)
        from .sim_responses import SimResponses  # the Responses API builds on this class

        self.responses = SimResponses(self, store=enable_responses_store)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{model_id:.+}", self.no_route)  # vLLM has no such route
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        self.responses.register(app)
        app.router.add_get("/sim/requests", self.get_requests)
        app.router.add_get("/sim/stats", self.stats)
        app.router.add_post("/sim/reset", self.reset)
        app.router.add_get("/sim/load", self.get_load)
        app.router.add_post("/sim/load", self.set_load)
        return app

    # -- small routes ---------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def models(self, request: web.Request) -> web.Response:
        now = int(time.time())
        data = [
            {
                "id": m,
                "object": "model",
                "created": now,
                "owned_by": "vllm",
                "root": self.model_path,
                "parent": None,
                "max_model_len": self.caps.max_model_len,
                "permission": [
                    {
                        "id": new_id("modelperm-"),
                        "object": "model_permission",
                        "created": now,
                        "allow_create_engine": False,
                        "allow_sampling": True,
                        "allow_logprobs": True,
                        "allow_search_indices": False,
                        "allow_view": True,
                        "allow_fine_tuning": False,
                        "organization": "*",
                        "group": None,
                        "is_blocking": False,
                    }
                ],
            }
            for m in self.served_models
        ]
        return _json({"object": "list", "data": data})

    async def no_route(self, request: web.Request) -> web.Response:
        return _json({"detail": "Not Found"}, 404)  # FastAPI's answer for an unknown path

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        load = self.load
        if load.metrics_delay:
            await asyncio.sleep(load.metrics_delay)
        if load.metrics_drop:
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        if load.metrics_status:
            return web.Response(status=load.metrics_status, text="simulated /metrics failure")
        return web.Response(body=load.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def get_requests(self, request: web.Request) -> web.Response:
        return _json(list(self.requests))

    async def stats(self, request: web.Request) -> web.Response:
        return _json({"cancelled": self.cancelled, "active": self.active, "auth": list(self.auth)})

    async def reset(self, request: web.Request) -> web.Response:
        self.requests.clear()
        self.auth.clear()
        self.cancelled = 0
        self.load.clear()
        return _json({"ok": True})

    async def get_load(self, request: web.Request) -> web.Response:
        return _json({**self.load.values(), "override": self.load.override})

    async def set_load(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
            if not isinstance(body, dict):
                raise TypeError("body")
            self.load.script(body)
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            return _error(f"bad /sim/load body: {exc}", "BadRequestError", 400)
        return await self.get_load(request)

    # -- chat and completions -------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def read_body(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error("Invalid JSON body", "BadRequestError", 400)
        if not isinstance(body, dict):
            return _error("Invalid JSON body", "BadRequestError", 400)
        self.requests.append(body)
        self.auth.append(request.headers.get("Authorization"))
        return body

    def unknown_model(self, model: Any) -> web.Response | None:
        if model in self.served_models:
            return None
        return _error(
            f"The model `{model}` does not exist. Valid aliases: {', '.join(self.served_models)}.",
            "NotFoundError",
            404,
            "model",
        )

    def base_script(self, sim: dict[str, Any]) -> list[tuple[int, str]]:
        script = [tuple(t) for t in sim["tokens"]] if "tokens" in sim else self.script
        if sim.get("repeat"):  # a long stream: the script (without its stop token) n times
            script = [t for t in script if t[0] != 151643] * int(sim["repeat"])
        return script

    def shape_script(
        self,
        script: list[tuple[int, str]],
        body: dict[str, Any],
        sim: dict[str, Any],
        *,
        reasoning: bool,
        budget: int | None,
        calls: list[tuple[str, str]],
        structured: str | None,
    ) -> list[tuple[int, str]]:
        """The model's output for one choice: thinking rules, then tool calls or structured
        output in place of the answer."""
        closed = sp.prompt_closed_think(body, "messages" in body)
        if reasoning or closed:  # a prompt that closed the block: only the answer
            off = closed or sp.thinking_off(body)
            script = sp.shape_thinking(script, off=off, budget=budget if reasoning else None)
        if calls or structured is not None:
            tail = sp.tool_call_tokens(calls) if calls else sp.pieces(structured or "", sp.TEXT_ID)
            if reasoning:
                head, end, _ = sp.split_think(script)
                script = [*head, end, *tail] if end is not None else script
            else:
                script = tail
        return script

    def prepare(self, body: dict[str, Any], chat: bool) -> Job | chk.Refusal | web.Response:
        """Validate as vLLM does (request model, model name, renderer, sampling params) and
        plan every choice."""
        sim: dict[str, Any] = body.get("sim") or {}
        if not isinstance(sim, dict):
            raise TypeError("sim")
        refusal = chk.check_chat_body(body) if chat else chk.check_completion_body(body)
        if refusal is not None:
            return refusal
        if (missing := self.unknown_model(body.get("model"))) is not None:
            return missing
        reasoning = chat and (
            self.caps.reasoning_parser is not None or bool(sim.get("split_reasoning"))
        )
        if chat:
            if (refusal := chk.check_tool_parser(body, self.caps)) is not None:
                return refusal
            sizes = [(chk.chat_prompt_tokens(body["messages"]), False)]
            if body.get("max_completion_tokens") is not None:
                max_tokens, param = body["max_completion_tokens"], "max_completion_tokens"
            else:
                max_tokens, param = body.get("max_tokens"), "max_tokens"
        else:
            prompt = body["prompt"]
            if prompt == []:
                return chk.Refusal("You must pass at least one prompt")
            sizes = chk.completion_prompts(prompt)
            if any(size == 0 for size, _ in sizes):
                return chk.Refusal("The decoder prompt cannot be empty")
            max_tokens, param = body.get("max_tokens", 16), "max_tokens"
        if "prompt_tokens" in sim:
            sizes = [(int(sim["prompt_tokens"]), ids) for _, ids in sizes]
        limits: list[int] = []
        for size, ids in sizes:
            checked = chk.check_lengths(size, ids, max_tokens, param, self.caps)
            if isinstance(checked, chk.Refusal):
                return checked
            limits.append(checked)
        n = chk.check_n(body.get("n"))
        if isinstance(n, chk.Refusal):
            return n
        if n * len(limits) > chk.MAX_N:  # the sim's own bound (vLLM would try)
            return chk.Refusal(f"simulated vLLM: {n * len(limits)} sequences exceed {chk.MAX_N}")
        budget = body.get("thinking_token_budget")
        budget = None if budget == -1 else budget
        budget_error = False
        if (
            budget is not None
            and self.caps.reasoning_parser is None
            and not sim.get("split_reasoning")
        ):
            if not body.get("stream"):
                return chk.BUDGET_WITHOUT_PARSER
            budget_error = True
        tool_mode = None
        calls: list[tuple[str, str]] = []
        if chat and self.caps.tool_parser is not None and body.get("tools"):
            choice = chk.tool_choice_of(body)
            if choice != "none":
                tool_mode = choice
                calls = sp.planned_tool_calls(body, sim, self.caps)
        structured = sp.structured_text(body, sim) if not calls else None
        base = self.base_script(sim)
        per_choice = sim.get("choices")
        choices: list[sp.Choice] = []
        for p, limit in enumerate(limits):
            for j in range(n):
                idx = p * n + j
                script = (
                    [tuple(t) for t in per_choice[idx % len(per_choice)]]
                    if isinstance(per_choice, list) and per_choice
                    else base
                )
                completion_budget = budget if (not chat and self._open_think(body)) else None
                script = self.shape_script(
                    script,
                    body,
                    sim,
                    reasoning=reasoning or completion_budget is not None,
                    budget=budget if chat else completion_budget,
                    calls=calls,
                    structured=structured,
                )
                choices.append(sp.plan(script, body, limit, self.eos_token_id))
        return Job(
            body=body,
            sim=sim,
            chat=chat,
            model=body["model"],
            choices=choices,
            prompt_tokens=sum(size for size, _ in sizes),
            reasoning=reasoning,
            tool_mode=tool_mode,
            budget_error=budget_error,
        )

    def _open_think(self, body: dict[str, Any]) -> bool:
        """A completions prompt that leaves a think block open (the budget then applies)."""
        prompt = body.get("prompt")
        return (
            self.caps.reasoning_parser is not None
            and isinstance(prompt, str)
            and prompt.rfind("<think>") > prompt.rfind("</think>")
        )

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        body = await self.read_body(request)
        if isinstance(body, web.Response):
            return body
        sim = body.get("sim") or {}
        if isinstance(sim, dict) and sim.get("status"):
            return _error("simulated failure", "InternalServerError", int(sim["status"]))
        try:
            job = self.prepare(body, chat)
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            # vLLM validates every field with pydantic and answers 400 for what it cannot
            # use; the simulator does the same for input its scripts cannot handle.
            return _error(f"invalid request: {type(exc).__name__}", "BadRequestError", 400)
        if isinstance(job, chk.Refusal):
            return refuse(job)
        if isinstance(job, web.Response):
            return job
        # vLLM names the request after X-Request-Id, else the body's request_id
        base = request.headers.get("X-Request-Id") or body.get("request_id")
        prefix = "chatcmpl-" if chat else "cmpl-"
        job.rid = f"{prefix}{base}" if isinstance(base, str) else new_id(prefix)
        if body.get("stream"):
            return await self._stream(request, job)
        self.active += 1
        try:  # a client that leaves a non-stream request cancels it, as in vLLM
            async with self.load.admit(len(job.choices), job.prompt_tokens) as slot:
                longest = max((len(c.tokens) for c in job.choices), default=0)
                await asyncio.sleep(
                    float(job.sim.get("first_token_delay", 0)) + self.token_delay * longest
                )
                slot.generated = sum(len(c.tokens) for c in job.choices)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active -= 1
        mode = job.sim.get("finish")
        for i, c in enumerate(job.choices):
            if (mode[i] if isinstance(mode, list) and i < len(mode) else mode) == "abort":
                c.finish = "abort"
            self.load.finished(c.finish)
        return _json(full_body(job))

    async def _stream(self, request: web.Request, job: Job) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        if job.budget_error:  # raised by the engine once the stream has started
            err = json.dumps(chk.BUDGET_WITHOUT_PARSER.body())  # vLLM uses json.dumps here
            await resp.write(f"data: {err}\n\n".encode() + DONE)
            await resp.write_eof()
            return resp
        self.active += 1
        try:
            async with self.load.admit(len(job.choices), job.prompt_tokens) as slot:
                await ChatStream(self, request, resp, job, slot).run()
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled += 1
            raise
        finally:
            self.active -= 1
        return resp


async def start_sim(
    sim: SimVLLM, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, int]:
    """Serve ``sim`` on ``host:port`` (0 = a free port); returns the runner and the port."""
    runner = web.AppRunner(sim.app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert server is not None
    bound = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return runner, int(bound)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="gateway sim", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", action="append", required=True, help="served model name")
    p.add_argument("--eos-token-id", type=int, default=None)
    p.add_argument("--token-delay", type=float, default=0.0)
    p.add_argument("--max-model-len", type=int, default=131072)
    p.add_argument("--reasoning-parser", choices=["deepseek_r1"], default=None)
    p.add_argument("--tool-call-parser", choices=["hermes"], default=None)
    p.add_argument("--enable-auto-tool-choice", action="store_true")
    p.add_argument(
        "--enable-responses-store",
        action="store_true",
        default=None,
        help="store responses (vLLM: VLLM_ENABLE_RESPONSES_API_STORE=1)",
    )
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--kv-cache-tokens", type=int, default=1 << 20)
    args = p.parse_args(argv)
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        p.error("--enable-auto-tool-choice requires --tool-call-parser")
    sim = SimVLLM(
        args.model,
        eos_token_id=args.eos_token_id,
        token_delay=args.token_delay,
        max_model_len=args.max_model_len,
        reasoning_parser=args.reasoning_parser,
        tool_call_parser=args.tool_call_parser,
        enable_auto_tool_choice=args.enable_auto_tool_choice,
        enable_responses_store=args.enable_responses_store,
        max_num_seqs=args.max_num_seqs,
        kv_cache_tokens=args.kv_cache_tokens,
    )

    async def run() -> None:
        runner, port = await start_sim(sim, args.host, args.port)
        print(f"simulated vLLM serving {args.model} on http://{args.host}:{port}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
