"""A simulated vLLM OpenAI server for the demo, the tests and the benchmark.

It speaks vLLM's wire format (checked against vLLM's ``serving.py``): a role chunk with
``"content": ""``; one chunk per token (``"logprobs": null, "finish_reason": null``); a finish
chunk carrying the last token's text, ``finish_reason`` and ``stop_reason``; a usage chunk
with ``"choices": []`` when ``stream_options.include_usage``; ``data: [DONE]``; errors as
``{"error": {"message", "type", "param", "code": <int>}}`` (validation errors are 400).

Generation is scripted: a list of ``[token_id, text]``. It stops the way vLLM does: at the
first token whose id is in ``stop_token_ids`` (``finish_reason: "stop"``, ``stop_reason: id``,
the token's text not emitted), at the model's eos id (``stop_reason: null``), at a ``stop``
string, or at ``max_tokens`` (``length``). Without a matching stop id the script runs on,
emitting end-of-turn text as a misconfigured server does.

A request may carry ``"sim": {...}`` (an extra field the gateway passes through) to script
faults: ``tokens``, ``token_delay``, ``first_token_delay``, ``stall_after``/``stall_for``,
``drop_after``, ``finish`` (``"abort"``, ``"null"``, ``"omit"``), ``omit_done``,
``keepalive``, ``error_after``, ``malformed_after``, ``status``, ``merge``, ``repeat``
(the script n times, for long streams), and
``split_reasoning`` (act like vLLM's ``deepseek_r1`` reasoning parser: text before
``</think>`` goes to ``delta.reasoning`` / ``message.reasoning``).
``GET /sim/requests`` returns the bodies received; ``GET /sim/stats`` counts streams
cancelled by the client; ``POST /sim/reset`` clears both.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections import deque
from typing import Any

import orjson
from aiohttp import web

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

_ids = itertools.count(1)
FINGERPRINT = "vllm-sim"


def _error(message: str, type_: str, status: int, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": status}}
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


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
    ) -> None:
        self.served_models = served_models
        self.script = script or R1_DEMO
        self.eos_token_id = eos_token_id
        self.token_delay = token_delay
        self.requests: deque[dict[str, Any]] = deque(maxlen=record)
        #: the Authorization header of each request (None when absent), in order
        self.auth: deque[str | None] = deque(maxlen=record)
        self.cancelled = 0
        self.active = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/sim/requests", self.get_requests)
        app.router.add_get("/sim/stats", self.stats)
        app.router.add_post("/sim/reset", self.reset)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def models(self, request: web.Request) -> web.Response:
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "vllm"}
            for m in self.served_models
        ]
        return web.json_response({"object": "list", "data": data})

    async def get_requests(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(list(self.requests)), content_type="application/json")

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"cancelled": self.cancelled, "active": self.active, "auth": list(self.auth)}
        )

    async def reset(self, request: web.Request) -> web.Response:
        self.requests.clear()
        self.auth.clear()
        self.cancelled = 0
        return web.json_response({"ok": True})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, chat=False)

    async def _guarded(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        # vLLM validates every field with pydantic and answers 400 for what it cannot use;
        # the simulator does the same for input its scripts cannot handle.
        try:
            return await self._generate(request, chat=chat)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            return _error(f"invalid request: {type(exc).__name__}", "BadRequestError", 400)

    def _plan(
        self, body: dict[str, Any], tokens: list[tuple[int, str]]
    ) -> tuple[list[tuple[int, str]], str | None, int | str | None]:
        """Which tokens are emitted, and how generation ends (finish_reason, stop_reason)."""
        stop_ids = set(body.get("stop_token_ids") or ())
        if self.eos_token_id is not None and not body.get("ignore_eos"):
            stop_ids.add(self.eos_token_id)
        stops = body.get("stop") or []
        if isinstance(stops, str):
            stops = [stops]
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 1 << 30
        out: list[tuple[int, str]] = []
        text = ""
        for tid, piece in tokens:
            if tid in stop_ids:
                out.append((tid, ""))
                return out, "stop", (None if tid == self.eos_token_id else tid)
            for s in stops:
                j = (text + piece).find(s)
                if j != -1:
                    out.append((tid, (text + piece)[len(text) : j] if j >= len(text) else ""))
                    return out, "stop", s
            out.append((tid, piece))
            text += piece
            if len(out) >= max_tokens:
                return out, "length", None
        # The script ran out: as if the model emitted its eos.
        return out, "stop", None

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error("Invalid JSON body", "BadRequestError", 400)
        self.requests.append(body)
        self.auth.append(request.headers.get("Authorization"))
        sim: dict[str, Any] = body.get("sim") or {}
        if sim.get("status"):
            return _error("simulated failure", "InternalServerError", int(sim["status"]))
        model = body.get("model")
        if model not in self.served_models:
            return _error(
                f"The model `{model}` does not exist. Valid aliases: "
                f"{', '.join(self.served_models)}.",
                "NotFoundError",
                404,
                "model",
            )
        if chat and not isinstance(body.get("messages"), list):
            return _error("messages: Field required", "BadRequestError", 400, "messages")
        if not chat and "prompt" not in body:
            return _error("prompt: Field required", "BadRequestError", 400, "prompt")
        max_tokens = body.get("max_tokens")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            return _error(
                f"max_tokens must be at least 1, got {max_tokens}. "
                f"(parameter=max_tokens, value={max_tokens})",
                "BadRequestError",
                400,
                "max_tokens",
            )
        script = [tuple(t) for t in sim["tokens"]] if "tokens" in sim else self.script
        if sim.get("repeat"):  # a long stream: the script (without its stop token) n times
            script = [t for t in script if t[0] != 151643] * int(sim["repeat"])
        emitted, finish, stop_reason = self._plan(body, script)
        prompt_tokens = self._count_prompt(body, chat)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{next(_ids):016x}"
        created = int(time.time())
        if body.get("stream"):
            return await self._stream(
                request,
                body,
                sim,
                chat,
                rid,
                created,
                model,
                emitted,
                finish,
                stop_reason,
                prompt_tokens,
            )
        self.active += 1
        try:  # a client that leaves a non-stream request cancels it, as in vLLM
            await asyncio.sleep(sim.get("first_token_delay", 0) + self.token_delay * len(emitted))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active -= 1
        text = "".join(p for _, p in emitted)
        reasoning: str | None = None
        content: str | None = text
        if sim.get("split_reasoning"):  # vLLM's deepseek_r1 parser, non-streaming
            before, sep, after = text.partition("</think>")
            reasoning, content = (before, after or None) if sep else (text, None)
        if sim.get("finish") == "abort":
            finish = "abort"
        usage = {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + len(emitted),
            "completion_tokens": len(emitted),
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        }
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "refusal": None,
                    "annotations": None,
                    "audio": None,
                    "function_call": None,
                    "reasoning": reasoning,
                },
                "logprobs": None,
                "finish_reason": finish,
                "stop_reason": stop_reason,
                "token_ids": None,
                "routed_experts": None,
            }
            resp = {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [choice],
                "service_tier": None,
                "system_fingerprint": FINGERPRINT,
                "usage": usage,
                "prompt_logprobs": None,
                "prompt_token_ids": None,
                "prompt_text": None,
                "kv_transfer_params": None,
                "ec_transfer_params": None,
                "metrics": None,
            }
        else:
            resp = {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "text": text,
                        "logprobs": None,
                        "finish_reason": finish,
                        "stop_reason": stop_reason,
                        "token_ids": None,
                        "prompt_logprobs": None,
                        "prompt_token_ids": None,
                        "routed_experts": None,
                    }
                ],
                "service_tier": None,
                "system_fingerprint": FINGERPRINT,
                "usage": usage,
                "kv_transfer_params": None,
                "ec_transfer_params": None,
                "metrics": None,
            }
        return web.Response(body=orjson.dumps(resp), content_type="application/json")

    @staticmethod
    def _count_prompt(body: dict[str, Any], chat: bool) -> int:
        if chat:
            text = " ".join(str(m.get("content") or "") for m in body.get("messages") or ())
            return len(text.split()) + 4 * len(body.get("messages") or ())
        prompt = body.get("prompt")
        return len(prompt.split()) if isinstance(prompt, str) else len(prompt or ())

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        sim: dict[str, Any],
        chat: bool,
        rid: str,
        created: int,
        model: str,
        emitted: list[tuple[int, str]],
        finish: str | None,
        stop_reason: int | str | None,
        prompt_tokens: int,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        base = {
            "id": rid,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
        }
        delay = float(sim.get("token_delay", self.token_delay))
        keepalive = sim.get("keepalive")
        merge = max(1, int(sim.get("merge", 1)))

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        in_reasoning = bool(sim.get("split_reasoning")) and chat

        def chunk(
            text: str,
            fin: str | None = None,
            sr: Any = None,
            role: bool = False,
            final: bool = False,
        ) -> bytes:
            nonlocal in_reasoning
            if chat and role:
                return _sse(
                    {
                        **base,
                        "choices": [
                            {
                                "index": 0,
                                "delta": {"role": "assistant", "content": ""},
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ],
                        "prompt_token_ids": None,
                        "prompt_text": None,
                    }
                )
            if chat:
                delta: dict[str, Any] = {"content": text}
                if in_reasoning:  # as vLLM's deepseek_r1 parser: text before </think>
                    before, sep, after = text.partition("</think>")
                    delta = {"reasoning": before} if before else {}
                    if sep:
                        in_reasoning = False
                        if after:
                            delta["content"] = after
                ch: dict[str, Any] = {
                    "index": 0,
                    "delta": delta,
                    "logprobs": None,
                    "finish_reason": fin,
                }
                if final:
                    ch["stop_reason"] = sr
                ch["token_ids"] = None
            else:
                ch = {
                    "index": 0,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": fin,
                    "stop_reason": sr,
                    "prompt_token_ids": None,
                    "token_ids": None,
                }
            out = {**base, "choices": [ch]}
            if final and not include_usage:
                out["system_fingerprint"] = FINGERPRINT  # vLLM stamps the terminal chunk
            return _sse(out)

        async def pause(seconds: float) -> None:
            if keepalive:
                end = time.monotonic() + seconds
                while (left := end - time.monotonic()) > 0:
                    await asyncio.sleep(min(keepalive, left))
                    if time.monotonic() < end:
                        await resp.write(b": keep-alive\n\n")
            elif seconds > 0:
                await asyncio.sleep(seconds)

        self.active += 1
        try:
            await pause(float(sim.get("first_token_delay", 0)))
            if chat:
                await resp.write(chunk("", role=True))
            last = len(emitted) - 1
            i = 0
            while i <= last:
                group = emitted[i : i + merge]
                i += len(group)
                n_done = i
                text = "".join(p for _, p in group)
                if sim.get("error_after") is not None and n_done > sim["error_after"]:
                    err = {
                        "error": {
                            "message": "simulated engine error",
                            "type": "InternalServerError",
                            "param": None,
                            "code": 500,
                        }
                    }
                    await resp.write(_sse(err) + b"data: [DONE]\n\n")
                    await resp.write_eof()
                    return resp
                if sim.get("malformed_after") is not None and n_done > sim["malformed_after"]:
                    await resp.write(b'data: {"id": "broken", "choices": [\n\n')
                    sim = {**sim, "malformed_after": None}
                if sim.get("drop_after") is not None and n_done > sim["drop_after"]:
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
                if i > last:
                    mode = sim.get("finish")
                    if mode == "omit":
                        if text:
                            await resp.write(chunk(text))
                    elif mode == "null":
                        await resp.write(chunk(text, None, None, final=True))
                    else:
                        fin = "abort" if mode == "abort" else finish
                        await resp.write(chunk(text, fin, stop_reason, final=True))
                else:
                    await resp.write(chunk(text))
                if sim.get("stall_after") is not None and n_done == sim["stall_after"]:
                    await pause(float(sim.get("stall_for", 3600)))
                elif delay and i <= last:
                    await asyncio.sleep(delay)
            if include_usage:
                usage = {
                    "prompt_tokens": prompt_tokens,
                    "total_tokens": prompt_tokens + len(emitted),
                    "completion_tokens": len(emitted),
                }
                await resp.write(
                    _sse({**base, "choices": [], "usage": usage, "system_fingerprint": FINGERPRINT})
                )
            if not sim.get("omit_done"):
                await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
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
    args = p.parse_args(argv)
    sim = SimVLLM(args.model, eos_token_id=args.eos_token_id, token_delay=args.token_delay)

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
