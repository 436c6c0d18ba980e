"""Chat and completions output of the simulated vLLM: non-stream bodies and the stream.

The plans come from ``gateway.sim_plan``; this module renders them in vLLM 0.32's format
(see ``gateway/sim.py`` for the facts and the knobs).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from . import sim_plan as sp
from .sim_metrics import Slot
from .sim_plan import new_id

if TYPE_CHECKING:
    from .sim import SimVLLM

FINGERPRINT = "vllm-sim"
DONE = b"data: [DONE]\n\n"


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def usage_block(
    prompt: int, completion: int, reasoning: int | None, *, full: bool
) -> dict[str, Any]:
    """vLLM's ``UsageInfo``: a non-stream body lists the detail fields (null when unknown); the
    stream's usage chunk drops the nulls."""
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
    }
    details = None if reasoning is None else {"reasoning_tokens": reasoning}
    if full:
        usage["prompt_tokens_details"] = None
        usage["completion_tokens_details"] = details
    elif details is not None:
        usage["completion_tokens_details"] = details
    return usage


@dataclass(slots=True)
class Job:
    """A validated chat/completions request, ready to generate."""

    body: dict[str, Any]
    sim: dict[str, Any]
    chat: bool
    model: str
    choices: list[sp.Choice]
    prompt_tokens: int
    reasoning: bool  # split at </think> (a reasoning parser)
    tool_mode: Any  # the tool_choice when a tool parser handles this request, else None
    budget_error: bool = False  # a stream that must carry the budget refusal
    rid: str = ""
    created: int = field(default_factory=lambda: int(time.time()))


def full_body(job: Job) -> dict[str, Any]:
    """A non-stream chat.completion / text_completion body."""
    completion = sum(len(c.tokens) for c in job.choices)
    reasoning_count = (
        sum(sp.count_reasoning_tokens(c.tokens) for c in job.choices) if job.reasoning else None
    )
    usage = usage_block(job.prompt_tokens, completion, reasoning_count, full=True)
    if not job.chat:
        return {
            "id": job.rid,
            "object": "text_completion",
            "created": job.created,
            "model": job.model,
            "choices": [
                {
                    "index": i,
                    "text": "".join(p for _, p in c.tokens),
                    "logprobs": None,
                    "finish_reason": c.finish,
                    "stop_reason": c.stop_reason,
                    "token_ids": None,
                    "prompt_logprobs": None,
                    "prompt_token_ids": None,
                    "routed_experts": None,
                }
                for i, c in enumerate(job.choices)
            ],
            "service_tier": None,
            "system_fingerprint": FINGERPRINT,
            "usage": usage,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }
    return {
        "id": job.rid,
        "object": "chat.completion",
        "created": job.created,
        "model": job.model,
        "choices": [message_choice(job, i, c) for i, c in enumerate(job.choices)],
        "service_tier": None,
        "system_fingerprint": FINGERPRINT,
        "usage": usage,
        "prompt_logprobs": None,
        "prompt_token_ids": None,
        "prompt_text": sp.render_prompt(job.body) if job.body.get("return_prompt_text") else None,
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "metrics": None,
    }


def message_choice(job: Job, index: int, c: sp.Choice) -> dict[str, Any]:
    """One non-stream chat choice, through vLLM's deepseek_r1 and hermes parsers."""
    tokens = c.tokens
    reasoning: str | None = None
    if job.reasoning:  # vLLM's deepseek_r1 parser, non-streaming
        _, end, answer = sp.split_think(tokens)
        if end is None:
            reasoning, tokens = "".join(p for _, p in tokens), []
        else:
            reasoning = "".join(p for _, p in tokens[: len(tokens) - len(answer) - 1])
            tokens = answer
    content: str | None = "".join(p for _, p in tokens)
    if job.reasoning and not content:
        content = None
    finish = c.finish
    tool_calls: list[dict[str, Any]] | None = None
    mode = job.tool_mode
    if mode is not None:
        forced = mode == "required" or isinstance(mode, dict)
        parsed = sp.parse_tool_calls(tokens)
        if parsed is not None:
            before, calls = parsed
            tool_calls = [
                {
                    "id": new_id("chatcmpl-tool-"),
                    "type": "function",
                    "function": {"name": name, "arguments": args},
                }
                for name, args in calls
            ]
            content = before or ("" if forced else None)
            if (mode == "auto" and calls) or (mode == "required" and finish == "stop"):
                finish = "tool_calls"
        elif forced:
            content = content or ""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content,
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    message["reasoning"] = reasoning
    return {
        "index": index,
        "message": message,
        "logprobs": None,
        "finish_reason": finish,
        "stop_reason": c.stop_reason,
        "token_ids": None,
        "routed_experts": None,
    }


class ChatStream:
    """Writes one chat/completions stream: the choices advance together, step by step."""

    def __init__(
        self,
        sim: SimVLLM,
        request: web.Request,
        resp: web.StreamResponse,
        job: Job,
        slot: Slot,
    ) -> None:
        self.server = sim
        self.request = request
        self.resp = resp
        self.job = job
        self.slot = slot
        self.faults = job.sim
        self.include_usage = bool((job.body.get("stream_options") or {}).get("include_usage"))
        self.base = {
            "id": job.rid,
            "object": "chat.completion.chunk" if job.chat else "text_completion",
            "created": job.created,
            "model": job.model,
        }
        # a prompt that closed the think block (thinking off, a continued answer) starts the
        # stream in content
        reasoning = (
            job.reasoning
            and not sp.thinking_off(job.body)
            and not sp.prompt_closed_think(job.body, job.chat)
        )
        opts = job.body.get("stream_options") or {}
        #: vLLM's stream_options.continuous_usage_stats: usage on every chunk
        self.continuous = bool(opts.get("continuous_usage_stats"))
        self.parsers = [
            sp.StreamParser(reasoning=reasoning, tool_mode=job.tool_mode, new_id=new_id)
            for _ in job.choices
        ]
        self.named = isinstance(job.tool_mode, dict)
        self.plain = job.tool_mode is None and not reasoning  # content deltas only

    async def pause(self, seconds: float) -> None:
        keepalive = self.faults.get("keepalive")
        if keepalive:
            end = time.monotonic() + seconds
            while (left := end - time.monotonic()) > 0:
                await asyncio.sleep(min(keepalive, left))
                if time.monotonic() < end:
                    await self.resp.write(b": keep-alive\n\n")
        elif seconds > 0:
            await asyncio.sleep(seconds)

    def usage_so_far(self, i: int, count: int) -> dict[str, Any]:
        """vLLM's per-chunk usage (continuous_usage_stats): the choice's tokens so far."""
        job = self.job
        reasoning = None
        if job.reasoning and job.chat:
            reasoning = sp.count_reasoning_tokens(job.choices[i].tokens[:count])
        return usage_block(job.prompt_tokens, count, reasoning, full=False)

    def chunk(
        self,
        i: int,
        group: list[tuple[int, str]],
        fin: str | None = None,
        sr: Any = None,
        final: bool = False,
        count: int = 0,
    ) -> bytes:
        text = group[0][1] if len(group) == 1 else "".join(p for _, p in group)
        if self.job.chat:
            if self.plain:
                delta: dict[str, Any] = {"content": text}
            else:
                parser = self.parsers[i]
                delta = parser.delta(group)
                if fin == "stop" and parser.tools_streamed and not self.named:
                    fin = "tool_calls"
            ch: dict[str, Any] = {
                "index": i,
                "delta": delta,
                "logprobs": None,
                "finish_reason": fin,
            }
            if final:
                ch["stop_reason"] = sr
            ch["token_ids"] = None
        else:
            ch = {
                "index": i,
                "text": text,
                "logprobs": None,
                "finish_reason": fin,
                "stop_reason": sr,
                "prompt_token_ids": None,
                "token_ids": None,
            }
        out: dict[str, Any] = {**self.base, "choices": [ch]}
        if final and fin is not None and not self.include_usage:
            out["system_fingerprint"] = FINGERPRINT  # vLLM stamps the terminal chunk
        if self.continuous:
            out["usage"] = self.usage_so_far(i, count)
        return sse(out)

    def role_chunk(self, i: int) -> bytes:
        body = self.job.body
        out: dict[str, Any] = {
            **self.base,
            "choices": [
                {
                    "index": i,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
            "prompt_token_ids": None,
            "prompt_text": sp.render_prompt(body) if body.get("return_prompt_text") else None,
        }
        if self.continuous:
            out["usage"] = self.usage_so_far(i, 0)
        return sse(out)

    def finish_mode(self, i: int) -> Any:
        mode = self.faults.get("finish")
        if isinstance(mode, list):
            return mode[i] if i < len(mode) else None
        return mode

    async def run(self) -> None:
        job, resp, faults = self.job, self.resp, self.faults
        delay = float(faults.get("token_delay", self.server.token_delay))
        merge = max(1, int(faults.get("merge", 1)))
        choices = job.choices
        await self.pause(float(faults.get("first_token_delay", 0)))
        if job.chat:
            await resp.write(b"".join(self.role_chunk(i) for i in range(len(choices))))
        # the fault thresholds, read once (this loop is the benchmark's upstream)
        error_after = faults.get("error_after")
        malformed_after = faults.get("malformed_after")
        drop_after = faults.get("drop_after")
        stall_after = faults.get("stall_after")
        single = len(choices) == 1
        pos = [0] * len(choices)
        open_ = list(range(len(choices)))
        while open_:
            out: list[bytes] = []
            still: list[int] = []
            for i in open_:
                c = choices[i]
                group = c.tokens[pos[i] : pos[i] + merge]
                pos[i] += len(group)
                if pos[i] < len(c.tokens):
                    out.append(self.chunk(i, group, count=pos[i]))
                    still.append(i)
                    continue
                mode = self.finish_mode(i)
                if mode == "omit":
                    if group:
                        out.append(self.chunk(i, group, count=pos[i]))
                elif mode == "null":
                    out.append(self.chunk(i, group, None, None, final=True, count=pos[i]))
                else:
                    fin = "abort" if mode == "abort" else c.finish
                    out.append(self.chunk(i, group, fin, c.stop_reason, final=True, count=pos[i]))
                    self.server.load.finished(fin)
            done = pos[0] if single else max(pos)
            self.slot.generated = done if single else sum(pos)
            if error_after is not None and done > error_after:
                err = {
                    "error": {
                        "message": "simulated engine error",
                        "type": "InternalServerError",
                        "param": None,
                        "code": 500,
                    }
                }
                await resp.write(sse(err) + DONE)
                await resp.write_eof()
                return
            if malformed_after is not None and done > malformed_after:
                await resp.write(b'data: {"id": "broken", "choices": [\n\n')
                malformed_after = None
            if drop_after is not None and done > drop_after:
                assert self.request.transport is not None
                self.request.transport.abort()
                return
            await resp.write(out[0] if single else b"".join(out))
            open_ = still
            if stall_after is not None and done == stall_after:
                await self.pause(float(faults.get("stall_for", 3600)))
            elif delay and open_:
                await asyncio.sleep(delay)
        if self.include_usage:
            completion = sum(len(c.tokens) for c in choices)
            reasoning = (
                sum(sp.count_reasoning_tokens(c.tokens) for c in choices)
                if job.reasoning and job.chat
                else None
            )
            usage = usage_block(job.prompt_tokens, completion, reasoning, full=False)
            await resp.write(
                sse({**self.base, "choices": [], "usage": usage, "system_fingerprint": FINGERPRINT})
            )
        if not faults.get("omit_done"):
            await resp.write(DONE)
        await resp.write_eof()
