"""vLLM's wire format reduced to shapes, to keep the simulated backend faithful.

The same scenarios run against the real vLLM server (``tests/vllm``, which records
``tests/vllm/transcripts.json``) and against the simulator (``tests/test_sim_fidelity.py``,
which must match the recording). A shape keeps key order and value types, not values;
consecutive identical shapes collapse into one, in streams and in lists (vLLM merges tokens
into chunks as it likes, so the count of content chunks is not part of the format).
``semantics`` checks the value-level facts (indices, finish reasons, exact error messages)
that both servers must show.

Each scenario runs on one server *flavour*, started alike on both sides:

- ``plain``: ``--max-model-len 512``, no parsers, no Responses store;
- ``reasoning``: ``--max-model-len 512 --reasoning-parser deepseek_r1``;
- ``tools``: ``--max-model-len 256 --enable-auto-tool-choice --tool-call-parser hermes`` and
  ``VLLM_ENABLE_RESPONSES_API_STORE=1``.

Random weights emit no chosen token on their own: ``logit_bias`` steers the real model (the
sim ignores it and follows its ``sim`` script, which the real server ignores).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

# Token ids of the tiny model's tokenizer (tests/vllm/build_tiny_model.py checks them).
STOP_ID = 300  # an ordinary token, forced with logit_bias
EOS_ID = 2  # <|im_end|>
THINK_END_ID = 418
TOOL_START_ID = 419
TOOL_END_ID = 420
WHITESPACE_IDS = [200, 201, 202, 203, 204, 219, 220, 221, 222, 223, 363, 416]

SCRIPT = [[401, "alpha"], [402, " beta"], [403, " gamma"], [404, " delta"], [405, " epsilon"]]
THINK_SCRIPT = [
    [401, "alpha"],
    [402, " beta"],
    [403, " gamma"],
    [151649, "</think>"],
    *[[410 + i, f" w{i}"] for i in range(8)],
]
USER = [{"role": "user", "content": "hi"}]
SCHEMA = {
    "type": "object",
    "properties": {"unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["unit"],
    "additionalProperties": False,
}
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "weather",
        "parameters": SCHEMA,
        "strict": True,
    },
}
RESPONSES_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "weather",
    "parameters": SCHEMA,
    "strict": True,
}
NAMED = {"type": "function", "function": {"name": "get_weather"}}
# The grammar allows any whitespace; the random model would fill max_tokens with it.
NO_WHITESPACE = {str(i): -100 for i in WHITESPACE_IDS}
JSON_BIAS = {**NO_WHITESPACE, str(EOS_ID): 30}
TOOL_BIAS = {**NO_WHITESPACE, str(TOOL_END_ID): 50, str(EOS_ID): 30}
AUTO_CALL_BIAS = {**TOOL_BIAS, str(TOOL_START_ID): 100}
LONG = "hi " * 600
CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
RESP = "/v1/responses"


@dataclass(frozen=True)
class Scenario:
    flavour: str
    run: Callable[[str, str], dict[str, Any]]  # (base url, model) -> capture
    subset: bool = False  # the sim may serve a subset (metric families)


# ---------------------------------------------------------------------------------------------
# shapes and captures


def shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return collapse([shape(v) for v in value])
    return "null" if value is None else type(value).__name__


def collapse(shapes: list[Any]) -> list[Any]:
    out: list[Any] = []
    for s in shapes:
        if not out or out[-1] != s:
            out.append(s)
    return out


def sse(raw: bytes) -> list[Any]:
    """Decoded events: ``"[DONE]"``, a data object, or ``{"event": name, "data": object}``."""
    out: list[Any] = []
    for block in raw.split(b"\n\n"):
        lines = [ln for ln in block.split(b"\n") if ln and not ln.startswith(b":")]
        if not lines:
            continue
        name = None
        data = b""
        for ln in lines:
            if ln.startswith(b"event: "):
                name = ln[7:].decode()
            elif ln.startswith(b"data: "):
                data = ln[6:]
        value = "[DONE]" if data == b"[DONE]" else orjson.loads(data)
        out.append(value if name is None else {"event": name, "data": value})
    return out


def canonical(event: Any) -> list[Any]:
    """A chat chunk as one chunk per delta part. vLLM hands its parsers whatever tokens
    arrived since the last step, so under load one chunk may carry what is otherwise two
    (the end of reasoning and the first content, a tool's name and its first arguments), and
    the bare ``</think>`` token's empty delta may or may not get a chunk of its own. Split
    parts and drop empty non-final deltas so the shape does not depend on timing."""
    if not isinstance(event, dict) or len(event.get("choices") or ()) != 1:
        return [event]
    (choice,) = event["choices"]
    delta = choice.get("delta")
    if not isinstance(delta, dict) or "role" in delta:
        return [event]
    parts: list[dict[str, Any]] = []
    if "reasoning" in delta:
        parts.append({"reasoning": delta["reasoning"]})
    if delta.get("content") is not None and not (delta["content"] == "" and "tool_calls" in delta):
        parts.append({"content": delta["content"]})
    for call in delta.get("tool_calls") or ():
        fn = call.get("function") or {}
        if "name" in fn and "arguments" in fn:
            head = {**call, "function": {"name": fn["name"]}}
            tail = {"index": call["index"], "function": {"arguments": fn["arguments"]}}
            parts += [
                {"content": None, "tool_calls": [head]},
                {"content": None, "tool_calls": [tail]},
            ]
        else:
            parts.append({"content": None, "tool_calls": [call]})
    if choice.get("finish_reason") is not None:
        return [event]
    # an empty text (a partial UTF-8 byte, the end token merged in) has a non-empty twin
    parts = [p for p in parts if p.get("reasoning", p.get("content")) != "" or "tool_calls" in p]
    return [{**event, "choices": [{**choice, "delta": part}]} for part in parts]


def chunk_kinds(events: list[Any]) -> dict[str, Any]:
    """A chat/completions stream's shape: the distinct chunk shapes (sorted) and whether it
    ends with ``[DONE]``. How many chunks there are, which tokens share one and how choices
    interleave depend on timing; the order rules are checked by ``stream_rules``."""
    kinds = {orjson.dumps(shape(c), option=orjson.OPT_SORT_KEYS): shape(c)
             for e in events if e != "[DONE]" for c in canonical(e)}  # fmt: skip
    return {
        "chunks": [kinds[k] for k in sorted(kinds)],
        "done": bool(events) and events[-1] == "[DONE]",
    }


def _capture(r: httpx.Response, raw: bytes, cut: bool = False) -> dict[str, Any]:
    ctype = r.headers.get("content-type", "").split(";")[0]
    got: Any
    if ctype == "text/event-stream":
        parsed: Any = sse(raw)
        if any(isinstance(p, dict) and "event" in p for p in parsed):  # Responses: in order
            got = collapse([shape(p) for p in parsed])
        else:
            got = chunk_kinds(parsed)
    elif ctype == "application/json":
        parsed = orjson.loads(raw)
        got = shape(parsed)
    else:
        parsed = raw.decode(errors="replace")
        got = ctype
    cap = {"status": r.status_code, "content_type": ctype, "shape": got, "raw": raw.decode()}
    if cut:
        cap["cut"] = True
    cap["_parsed"] = parsed
    return cap


def request(method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One exchange; a body cut short by the server is recorded as ``cut``."""
    with httpx.stream(method, url, json=body, timeout=120) as r:
        chunks: list[bytes] = []
        try:
            for chunk in r.iter_raw():
                chunks.append(chunk)
        except httpx.RemoteProtocolError:
            return _capture(r, b"".join(chunks), cut=True)
        return _capture(r, b"".join(chunks))


def capture(base_url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """Send one scenario; return status, content type, raw text and the shape."""
    return request("POST", base_url + path, body)


def steps(caps: list[dict[str, Any]]) -> dict[str, Any]:
    """Several exchanges recorded as one scenario (a store, then a GET, ...)."""
    return {
        "status": [c["status"] for c in caps],
        "content_type": [c["content_type"] for c in caps],
        "shape": [c["shape"] for c in caps],
        "raw": [c["raw"] for c in caps],
        "cut": [bool(c.get("cut")) for c in caps],
        "_parsed": [c["_parsed"] for c in caps],
    }


def metrics_shape(text: str) -> dict[str, Any]:
    """vLLM's metric families: type, help and each sample's label names."""
    out: dict[str, Any] = {}
    for fam in text_string_to_metric_families(text):
        if not fam.name.startswith("vllm:"):
            continue
        samples: dict[str, list[str]] = {}
        for s in fam.samples:
            samples[s.name] = sorted(s.labels)
        out[fam.name] = {"type": fam.type, "help": fam.documentation, "samples": samples}
    return out


def metric_values(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (s.labels, s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name
    ]


def load_during_stream(base_url: str, model: str) -> dict[str, float]:
    """``/metrics`` while one long stream runs: what a load-aware router reads."""
    body = {
        "model": model,
        "messages": USER,
        "stream": True,
        "max_tokens": 300,
        "ignore_eos": True,
        "sim": {"repeat": 60, "token_delay": 0.01},
    }
    started = threading.Event()
    seen: dict[str, float] = {}

    def stream() -> None:
        with httpx.stream("POST", base_url + CHAT, json=body, timeout=120) as r:
            for _ in r.iter_lines():
                started.set()

    t = threading.Thread(target=stream, daemon=True)
    t.start()
    assert started.wait(60), "the stream did not start"
    time.sleep(0.2)
    text = httpx.get(base_url + "/metrics", timeout=30).text
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
    ):
        ((labels, value),) = metric_values(text, name)
        assert labels == {"engine": "0", "model_name": model}, labels
        seen[name] = value
    t.join(120)
    return seen


# ---------------------------------------------------------------------------------------------
# scenarios


def _post(path: str, body: dict[str, Any]) -> Callable[[str, str], dict[str, Any]]:
    def run(url: str, model: str) -> dict[str, Any]:
        return capture(url, path, {"model": model, **body})

    return run


def _get(path: str) -> Callable[[str, str], dict[str, Any]]:
    def run(url: str, model: str) -> dict[str, Any]:
        return request("GET", url + path.format(model=model))

    return run


def _metrics(url: str, model: str) -> dict[str, Any]:
    r = httpx.get(url + "/metrics", timeout=30)
    return {
        "status": r.status_code,
        "content_type": r.headers.get("content-type", ""),
        "shape": metrics_shape(r.text),
        "raw": "",
        "_parsed": r.text,
    }


def _store_flow(url: str, model: str) -> dict[str, Any]:
    first = capture(
        url,
        RESP,
        {
            "model": model,
            "input": "hi",
            "max_output_tokens": 3,
            "instructions": "be brief",
            "seed": 1,  # the random model's 3 tokens decide the output items' shape
            "sim": {"tokens": SCRIPT},
        },
    )
    rid = first["_parsed"]["id"]
    return steps(
        [
            first,
            request("GET", f"{url}{RESP}/{rid}"),
            capture(
                url,
                RESP,
                {
                    "model": model,
                    "input": "again",
                    "max_output_tokens": 3,
                    "previous_response_id": rid,
                    "seed": 1,
                    "sim": {"tokens": SCRIPT},
                },
            ),
            request("POST", f"{url}{RESP}/{rid}/cancel"),
            request("GET", f"{url}{RESP}/resp_missing"),
            request("POST", f"{url}{RESP}/resp_missing/cancel"),
            request("GET", f"{url}{RESP}/{rid}?stream=true"),
        ]
    )


def _background_flow(url: str, model: str) -> dict[str, Any]:
    body = {
        "model": model,
        "input": "hi",
        "max_output_tokens": 250,
        "ignore_eos": True,
        "background": True,
        "sim": {"first_token_delay": 30},
    }
    first = capture(url, RESP, body)
    rid = first["_parsed"]["id"]
    return steps(
        [
            first,
            request("GET", f"{url}{RESP}/{rid}"),
            request("POST", f"{url}{RESP}/{rid}/cancel"),
            request("GET", f"{url}{RESP}/{rid}"),
        ]
    )


def _background_stream_flow(url: str, model: str) -> dict[str, Any]:
    body = {
        "model": model,
        "input": "hi",
        "max_output_tokens": 3,
        "seed": 1,
        "background": True,
        "stream": True,
        # like the real model's: the empty second token makes no delta event
        "sim": {"tokens": [[401, "alpha"], [402, ""], [403, " gamma"]]},
    }
    first = capture(url, RESP, body)
    rid = first["_parsed"][0]["data"]["response"]["id"]
    # replay from the text's done event on (how many deltas came before it varies)
    (done,) = [e["data"]["sequence_number"] for e in first["_parsed"]
               if e["event"] == "response.output_text.done"]  # fmt: skip
    return steps(
        [
            first,
            request("GET", f"{url}{RESP}/{rid}?stream=true&starting_after={done - 1}"),
            request("GET", f"{url}{RESP}/{rid}"),
        ]
    )


def scenarios(model: str = "") -> dict[str, Scenario]:
    """name -> scenario. ``sim`` scripts the simulator; vLLM ignores the field."""
    stop = {
        "stop_token_ids": [STOP_ID],
        "logit_bias": {str(STOP_ID): 100},
        "sim": {"tokens": [[STOP_ID, "<stop>"], *SCRIPT]},
    }
    length = {"max_tokens": 3, "seed": 1, "sim": {"tokens": SCRIPT}}
    usage = {"stream_options": {"include_usage": True}}
    many = {"max_tokens": 3, "seed": 1, "ignore_eos": True, "sim": {"tokens": SCRIPT}}
    think = {"max_tokens": 8, "seed": 1, "sim": {"tokens": THINK_SCRIPT}}
    budget = {
        **think,
        "thinking_token_budget": 3,
        "chat_template_kwargs": {"enable_thinking": True},
    }
    off = {**think, "chat_template_kwargs": {"enable_thinking": False}}
    json_schema = {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": SCHEMA, "strict": True},
    }
    items = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"unit": "c"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "20C"},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "ok"}],
        },
        {
            "type": "reasoning",
            "summary": [],
            "content": [{"type": "reasoning_text", "text": "hmm"}],
        },
        {"role": "user", "content": [{"type": "input_text", "text": "more"}]},
    ]
    s: dict[str, Scenario] = {}

    def add(name: str, flavour: str, run: Callable[[str, str], dict[str, Any]], **kw: Any) -> None:
        s[name] = Scenario(flavour, run, **kw)

    # -- plain: chat/completions basics (the first recordings) --
    add("chat_stream_stop_id", "plain", _post(CHAT, {"messages": USER, "stream": True, **stop}))
    add("chat_stream_length", "plain", _post(CHAT, {"messages": USER, "stream": True, **length}))
    add(
        "chat_stream_usage",
        "plain",
        _post(CHAT, {"messages": USER, "stream": True, **length, **usage}),
    )
    add("chat_nonstream", "plain", _post(CHAT, {"messages": USER, **length}))
    add("completions_stream", "plain", _post(COMP, {"prompt": "hi", "stream": True, **length}))
    add(
        "completions_stream_usage",
        "plain",
        _post(COMP, {"prompt": "hi", "stream": True, **length, **usage}),
    )
    add("completions_nonstream", "plain", _post(COMP, {"prompt": "hi", **length}))
    add(
        "error_unknown_model",
        "plain",
        lambda url, m: capture(url, CHAT, {"model": "no-such-model", "messages": USER}),
    )
    add("error_bad_max_tokens", "plain", _post(CHAT, {"messages": USER, "max_tokens": -1}))
    # -- n and list prompts --
    prompts = ["hi", "hello there"]
    add(
        "completions_list_n_stream",
        "plain",
        _post(COMP, {"prompt": prompts, "n": 2, "stream": True, **many, **usage}),
    )
    add("completions_list_n_nonstream", "plain", _post(COMP, {"prompt": prompts, "n": 2, **many}))
    add(
        "completions_token_prompts_stream",
        "plain",
        _post(COMP, {"prompt": [[74, 75], [325]], "n": 2, "stream": True, **many}),
    )
    add(
        "chat_n_stream",
        "plain",
        _post(CHAT, {"messages": USER, "n": 2, "stream": True, **many, **usage}),
    )
    add("chat_n_nonstream", "plain", _post(CHAT, {"messages": USER, "n": 2, **many}))
    add("error_n_zero", "plain", _post(CHAT, {"messages": USER, "n": 0}))
    # -- max_model_len --
    add("models_list", "plain", _get("/v1/models"))
    add("models_retrieve_is_not_served", "plain", _get("/v1/models/{model}"))
    add("error_max_tokens_over_len", "plain", _post(CHAT, {"messages": USER, "max_tokens": 513}))
    add(
        "error_max_completion_tokens_over_len",
        "plain",
        _post(CHAT, {"messages": USER, "max_completion_tokens": 513}),
    )
    add(
        "error_completions_max_tokens_over_len",
        "plain",
        _post(COMP, {"prompt": "hi", "max_tokens": 513}),
    )
    add(
        "error_prompt_too_long",
        "plain",
        _post(CHAT, {"messages": [{"role": "user", "content": LONG}], "max_tokens": 5}),
    )
    add(
        "error_completions_prompt_too_long", "plain", _post(COMP, {"prompt": LONG, "max_tokens": 5})
    )
    add(
        "chat_prompt_plus_max_tokens_clamped",
        "plain",
        _post(
            CHAT,
            {
                "messages": USER,
                "max_tokens": 512,
                "logit_bias": {str(EOS_ID): 100},
                "sim": {"tokens": SCRIPT},
            },
        ),
    )
    # -- other validation --
    add("error_missing_messages", "plain", _post(CHAT, {}))
    add("error_missing_prompt", "plain", _post(COMP, {}))
    add("error_empty_prompt_list", "plain", _post(COMP, {"prompt": []}))
    add("error_empty_prompt", "plain", _post(COMP, {"prompt": ""}))
    add("error_n_too_large", "plain", _post(CHAT, {"messages": USER, "n": 16385}))
    add("error_stream_options_without_stream", "plain", _post(CHAT, {"messages": USER, **usage}))
    # -- tools without a tool parser --
    add(
        "error_tools_auto_without_parser", "plain", _post(CHAT, {"messages": USER, "tools": [TOOL]})
    )
    add(
        "error_tools_required_without_parser",
        "plain",
        _post(CHAT, {"messages": USER, "tools": [TOOL], "tool_choice": "required"}),
    )
    add(
        "error_tools_named_without_parser",
        "plain",
        _post(CHAT, {"messages": USER, "tools": [TOOL], "tool_choice": NAMED}),
    )
    add(
        "chat_tools_none_without_parser",
        "plain",
        _post(CHAT, {"messages": USER, "tools": [TOOL], "tool_choice": "none", **length}),
    )
    add("error_tools_empty", "plain", _post(CHAT, {"messages": USER, "tools": []}))
    add(
        "error_tool_choice_without_tools",
        "plain",
        _post(CHAT, {"messages": USER, "tool_choice": "auto"}),
    )
    add(
        "error_tool_choice_unknown_name",
        "plain",
        _post(
            CHAT,
            {
                "messages": USER,
                "tools": [TOOL],
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
            },
        ),
    )
    # -- structured output --
    add(
        "chat_json_schema",
        "plain",
        _post(
            CHAT,
            {
                "messages": USER,
                "response_format": json_schema,
                "max_tokens": 40,
                "seed": 1,
                "logit_bias": JSON_BIAS,
            },
        ),
    )
    add(
        "chat_json_schema_stream",
        "plain",
        _post(
            CHAT,
            {
                "messages": USER,
                "response_format": json_schema,
                "max_tokens": 40,
                "seed": 1,
                "logit_bias": JSON_BIAS,
                "stream": True,
            },
        ),
    )
    add(
        "chat_json_object",
        "plain",
        _post(
            CHAT,
            {
                "messages": USER,
                "response_format": {"type": "json_object"},
                "max_tokens": 10,
                "seed": 1,
                "logit_bias": JSON_BIAS,
            },
        ),
    )
    add(
        "error_json_schema_missing",
        "plain",
        _post(CHAT, {"messages": USER, "response_format": {"type": "json_schema"}}),
    )
    # -- thinking budget without a reasoning parser --
    add(
        "error_budget_without_parser",
        "plain",
        _post(CHAT, {"messages": USER, "max_tokens": 4, "thinking_token_budget": 3}),
    )
    add(
        "budget_without_parser_stream",
        "plain",
        _post(
            CHAT, {"messages": USER, "max_tokens": 4, "thinking_token_budget": 3, "stream": True}
        ),
    )
    # -- metrics --
    add("metrics", "plain", _metrics, subset=True)
    # -- Responses API, no store --
    rlen = {"max_output_tokens": 3, "seed": 1, "sim": {"tokens": SCRIPT}}
    rstop = {
        "stop_token_ids": [STOP_ID],
        "logit_bias": {str(STOP_ID): 100},
        "sim": {"tokens": [[STOP_ID, "<stop>"], *SCRIPT]},
    }
    add("responses_nonstream", "plain", _post(RESP, {"input": "hi", **rlen}))
    add("responses_stream", "plain", _post(RESP, {"input": "hi", "stream": True, **rlen}))
    add("responses_empty", "plain", _post(RESP, {"input": "hi", **rstop}))
    add("responses_empty_stream", "plain", _post(RESP, {"input": "hi", "stream": True, **rstop}))
    add("responses_input_items", "plain", _post(RESP, {"input": items, **rlen}))
    add(
        "responses_tools_without_parser",
        "plain",
        _post(RESP, {"input": "hi", "tools": [RESPONSES_TOOL], **rlen}),
    )
    add(
        "responses_json_schema",
        "plain",
        _post(
            RESP,
            {
                "input": "hi",
                "max_output_tokens": 20,
                "seed": 1,
                "logit_bias": JSON_BIAS,
                "text": {
                    "format": {"type": "json_schema", "name": "w", "schema": SCHEMA, "strict": True}
                },
                "reasoning": {"effort": "low"},
                "metadata": {"a": "b"},
                "user": "u",
                "temperature": 0.5,
                "top_p": 0.9,
            },
        ),
    )
    add("error_responses_missing_input", "plain", _post(RESP, {"max_output_tokens": 2}))
    add(
        "error_responses_background_without_store",
        "plain",
        _post(RESP, {"input": "hi", "background": True}),
    )
    add(
        "error_responses_background_store_false",
        "plain",
        _post(RESP, {"input": "hi", "background": True, "store": False}),
    )
    add(
        "error_responses_previous_not_stored",
        "plain",
        _post(RESP, {"input": "hi", "previous_response_id": "resp_nope"}),
    )
    add(
        "error_responses_max_output_over_len",
        "plain",
        _post(RESP, {"input": "hi", "max_output_tokens": 600}),
    )
    add("error_responses_prompt_too_long", "plain", _post(RESP, {"input": LONG}))
    add(
        "error_responses_required_without_tools",
        "plain",
        _post(RESP, {"input": "hi", "tool_choice": "required"}),
    )
    add(
        "error_responses_named_without_tools",
        "plain",
        _post(RESP, {"input": "hi", "tool_choice": {"type": "function", "name": "x"}}),
    )
    add(
        "error_responses_unknown_model",
        "plain",
        lambda url, m: capture(url, RESP, {"model": "no-such-model", "input": "hi"}),
    )

    # -- reasoning parser (deepseek_r1) --
    add(
        "reasoning_chat_stream_usage",
        "reasoning",
        _post(CHAT, {"messages": USER, "stream": True, **length, **usage}),
    )
    add("reasoning_chat_nonstream", "reasoning", _post(CHAT, {"messages": USER, **length}))
    add(
        "reasoning_chat_stream_stop_id",
        "reasoning",
        _post(CHAT, {"messages": USER, "stream": True, **stop}),
    )
    add("reasoning_chat_nonstream_stop_id", "reasoning", _post(CHAT, {"messages": USER, **stop}))
    add(
        "reasoning_chat_n_stream",
        "reasoning",
        _post(CHAT, {"messages": USER, "n": 2, "stream": True, **many}),
    )
    add(
        "reasoning_budget_stream",
        "reasoning",
        _post(CHAT, {"messages": USER, "stream": True, **budget}),
    )
    add("reasoning_budget_nonstream", "reasoning", _post(CHAT, {"messages": USER, **budget}))
    add(
        "reasoning_budget_zero_stream",
        "reasoning",
        _post(CHAT, {"messages": USER, "stream": True, **budget, "thinking_token_budget": 0}),
    )
    add(
        "reasoning_thinking_off_stream",
        "reasoning",
        _post(CHAT, {"messages": USER, "stream": True, **off}),
    )
    add("reasoning_thinking_off_nonstream", "reasoning", _post(CHAT, {"messages": USER, **off}))
    add(
        "reasoning_effort_none_stream",
        "reasoning",
        _post(CHAT, {"messages": USER, "stream": True, **think, "reasoning_effort": "none"}),
    )
    add(
        "error_reasoning_budget_negative",
        "reasoning",
        _post(CHAT, {"messages": USER, "thinking_token_budget": -2}),
    )
    add(
        "reasoning_completions_budget",
        "reasoning",
        _post(
            COMP,
            {
                "prompt": "<think>\n",
                "max_tokens": 6,
                "seed": 1,
                "thinking_token_budget": 2,
                "sim": {"tokens": THINK_SCRIPT},
            },
        ),
    )
    add(
        "reasoning_responses_stream",
        "reasoning",
        _post(RESP, {"input": "hi", "stream": True, **rlen}),
    )
    add("reasoning_responses_nonstream", "reasoning", _post(RESP, {"input": "hi", **rlen}))
    roff = {
        "input": "hi",
        "max_output_tokens": 6,
        "seed": 1,
        "reasoning": {"effort": "none"},
        "sim": {"tokens": THINK_SCRIPT},
    }
    add(
        "reasoning_responses_thinking_off_stream",
        "reasoning",
        _post(RESP, {**roff, "stream": True}),
    )
    add("reasoning_responses_thinking_off_nonstream", "reasoning", _post(RESP, roff))

    # -- tool parser (hermes), small max_model_len, Responses store --
    named = {
        "messages": USER,
        "tools": [TOOL],
        "tool_choice": NAMED,
        "max_tokens": 60,
        "seed": 1,
        "logit_bias": TOOL_BIAS,
    }
    required = {**named, "tool_choice": "required"}
    auto = {
        "messages": USER,
        "tools": [TOOL],
        "parallel_tool_calls": False,
        "max_tokens": 60,
        "seed": 1,
        "logit_bias": AUTO_CALL_BIAS,
        "sim": {"tool_calls": [{"name": "get_weather", "arguments": {"unit": "c"}}]},
    }
    add("tools_models_list", "tools", _get("/v1/models"))
    add("tools_named_nonstream", "tools", _post(CHAT, named))
    add("tools_named_stream", "tools", _post(CHAT, {**named, "stream": True}))
    add("tools_required_nonstream", "tools", _post(CHAT, required))
    add("tools_required_stream", "tools", _post(CHAT, {**required, "stream": True, **usage}))
    add("tools_auto_call_nonstream", "tools", _post(CHAT, auto))
    add("tools_auto_call_stream", "tools", _post(CHAT, {**auto, "stream": True}))
    add("tools_auto_text", "tools", _post(CHAT, {"messages": USER, "tools": [TOOL], **length}))
    add("tools_named_cut_by_length", "tools", _post(CHAT, {**named, "max_tokens": 3}))
    add(
        "error_tools_max_tokens_over_len",
        "tools",
        _post(CHAT, {"messages": USER, "max_tokens": 300}),
    )
    rtool = {
        "input": "hi",
        "tools": [RESPONSES_TOOL],
        "tool_choice": "required",
        "max_output_tokens": 60,
        "seed": 1,
        "logit_bias": TOOL_BIAS,
    }
    add("responses_tools_required", "tools", _post(RESP, rtool))
    add("responses_tools_required_stream", "tools", _post(RESP, {**rtool, "stream": True}))
    add("responses_store_flow", "tools", _store_flow)
    add("responses_background_flow", "tools", _background_flow)
    add("responses_background_stream_flow", "tools", _background_stream_flow)
    return s


# ---------------------------------------------------------------------------------------------
# value-level facts


def _chunks(cap: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in cap["_parsed"] if isinstance(e, dict) and "choices" in e]


def _error_message(cap: dict[str, Any]) -> str:
    return str(cap["_parsed"]["error"]["message"])


def _finals_by_index(chunks: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Each choice's final chunk; fails on a second final or a chunk after the final."""
    finals: dict[int, dict[str, Any]] = {}
    for e in chunks:
        for c in e["choices"]:
            assert c["index"] not in finals, f"a chunk after choice {c['index']} finished"
            if c["finish_reason"] is not None:
                finals[c["index"]] = c
    return finals


def _responses_events(cap: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    events = [(e["event"], e["data"]) for e in cap["_parsed"]]
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    assert all(name == d["type"] for name, d in events)
    assert "[DONE]" not in cap["raw"]
    return events


def stream_rules(cap: dict[str, Any]) -> None:
    """The order of a chat/completions stream: role chunks first, each choice's chunks end
    with its one final chunk, the usage chunk last, then ``[DONE]`` (or one error event)."""
    events = cap["_parsed"]
    assert events and events[-1] == "[DONE]" and events.count("[DONE]") == 1
    body = events[:-1]
    if any("error" in e for e in body):
        assert len(body) == 1 or "error" not in body[0]
        assert "error" in body[-1] and sum("error" in e for e in body) == 1
        return
    roles = [
        i
        for i, e in enumerate(body)
        if e["choices"] and "role" in (e["choices"][0].get("delta") or {})
    ]
    assert roles == list(range(len(roles))), "role chunks come first"
    usage = [i for i, e in enumerate(body) if not e["choices"]]
    assert usage in ([], [len(body) - 1]), "the usage chunk comes last"
    finals = _finals_by_index(body)
    indices = {c["index"] for e in body for c in e["choices"]}
    assert sorted(finals) == sorted(indices), "every choice has a final chunk"


def semantics(name: str, cap: dict[str, Any], model: str) -> None:
    """Value-level facts both servers must show, beyond the shape."""
    if isinstance(cap["shape"], dict) and "chunks" in cap["shape"]:
        stream_rules(cap)
    raw = cap["raw"] if isinstance(cap["raw"], str) else ""
    flat = raw.replace(" ", "")
    if name.startswith("error_"):  # the exact messages are held to the recording
        want = 404 if ("not_stored" in name or "unknown_model" in name) else 400
        assert cap["status"] == want and _error_message(cap), cap["raw"]
    if name in ("error_unknown_model", "error_responses_unknown_model"):
        assert cap["status"] == 404
        assert _error_message(cap).startswith("The model `no-such-model` does not exist.")
    if name.endswith("stop_id"):
        assert '"finish_reason":"stop","stop_reason":300' in flat
    if name in (
        "chat_stream_length",
        "chat_stream_usage",
        "completions_stream",
        "completions_stream_usage",
        "chat_nonstream",
        "completions_nonstream",
    ):
        assert '"finish_reason":"length"' in flat
    if name in ("completions_list_n_stream", "completions_token_prompts_stream"):
        finals = _finals_by_index(_chunks(cap))
        assert sorted(finals) == [0, 1, 2, 3]
        assert all(f["finish_reason"] == "length" for f in finals.values())
        if name == "completions_list_n_stream":
            (u,) = [e for e in _chunks(cap) if not e["choices"]]
            assert u["usage"]["completion_tokens"] == 12  # every choice's tokens
    if name == "completions_list_n_nonstream":
        choices = cap["_parsed"]["choices"]
        assert [c["index"] for c in choices] == [0, 1, 2, 3]
        assert cap["_parsed"]["usage"]["completion_tokens"] == 12
    if name in ("chat_n_stream", "reasoning_chat_n_stream"):
        chunks = _chunks(cap)
        roles = [c["index"] for e in chunks for c in e["choices"] if "role" in c["delta"]]
        assert roles == [0, 1], "one role chunk per choice, first"
        assert sorted(_finals_by_index(chunks)) == [0, 1]
    if name == "chat_n_nonstream":
        assert [c["index"] for c in cap["_parsed"]["choices"]] == [0, 1]
    if name in ("models_list", "tools_models_list"):
        (card,) = cap["_parsed"]["data"]
        assert card["id"] == model and card["owned_by"] == "vllm"
        assert card["max_model_len"] == (512 if name == "models_list" else 256)
    if name == "models_retrieve_is_not_served":
        assert cap["status"] == 404 and cap["_parsed"] == {"detail": "Not Found"}
    if name == "chat_prompt_plus_max_tokens_clamped":
        assert cap["status"] == 200  # clamped to max_model_len - prompt, not refused
    if name in ("chat_json_schema", "chat_json_schema_stream"):
        if name == "chat_json_schema":
            text = cap["_parsed"]["choices"][0]["message"]["content"]
        else:
            text = "".join(
                c["delta"].get("content") or "" for e in _chunks(cap) for c in e["choices"]
            )
        assert json.loads(text)["unit"] in ("c", "f")
    if name == "chat_json_object":
        assert cap["_parsed"]["choices"][0]["message"]["content"].startswith("{")
    if name == "budget_without_parser_stream":
        assert cap["status"] == 200
        (err, done) = cap["_parsed"][-2:]
        assert done == "[DONE]" and err["error"]["message"].startswith(
            "thinking_token_budget is set"
        )
    if name == "metrics":
        assert cap["status"] == 200
        assert cap["content_type"].startswith("text/plain")
        for fam in (
            "vllm:num_requests_running",
            "vllm:num_requests_waiting",
            "vllm:kv_cache_usage_perc",
            "vllm:num_requests_waiting_by_reason",
        ):
            assert fam in cap["shape"], fam
            for labels, _ in metric_values(cap["_parsed"], fam):
                assert labels["model_name"] == model and labels["engine"] == "0"
    if name.startswith("reasoning_chat") and name.endswith("usage"):
        (u,) = [e for e in _chunks(cap) if not e["choices"]]
        assert u["usage"]["completion_tokens_details"] == {
            "reasoning_tokens": 0
        }  # no <think> generated
    if name == "reasoning_chat_nonstream_stop_id":
        msg = cap["_parsed"]["choices"][0]["message"]
        assert msg["reasoning"] == "" and msg["content"] is None
    if name in ("reasoning_budget_stream", "reasoning_budget_zero_stream"):
        deltas = [c["delta"] for e in _chunks(cap) for c in e["choices"]][1:]
        first_content = next(i for i, d in enumerate(deltas) if "content" in d)
        assert not any("reasoning" in d for d in deltas[first_content + 1 :])
        thought = "".join(d.get("reasoning", "") for d in deltas)
        # budget 3: the prompt's "\n" after <think> counts, 2 tokens are generated
        assert bool(thought) == (name == "reasoning_budget_stream")
    if name == "reasoning_budget_nonstream":
        msg = cap["_parsed"]["choices"][0]["message"]
        assert msg["reasoning"] and msg["content"]
    if name in ("reasoning_thinking_off_stream", "reasoning_effort_none_stream"):
        deltas = [c["delta"] for e in _chunks(cap) for c in e["choices"]][1:]
        assert deltas and all("reasoning" not in d for d in deltas)
    if (
        name == "reasoning_thinking_off_nonstream"
    ):  # vLLM 0.32: the non-stream parser ignores the prompt
        msg = cap["_parsed"]["choices"][0]["message"]
        assert msg["reasoning"] and msg["content"] is None
    if name == "reasoning_completions_budget":
        assert "</think>" in cap["_parsed"]["choices"][0]["text"]
    if name.startswith("tools_") and name.endswith("nonstream"):
        (choice,) = cap["_parsed"]["choices"]
        (call,) = choice["message"]["tool_calls"]
        assert call["function"]["name"] == "get_weather" and call["id"].startswith("chatcmpl-tool-")
        assert json.loads(call["function"]["arguments"])["unit"] in ("c", "f")
        want = {"named": ("stop", ""), "required": ("tool_calls", ""), "auto": ("tool_calls", None)}
        kind = name.split("_")[1]
        assert (choice["finish_reason"], choice["message"]["content"]) == want[kind]
    if name.startswith("tools_") and name.endswith("_stream"):
        chunks = _chunks(cap)
        calls = [
            t for e in chunks for c in e["choices"] for t in c["delta"].get("tool_calls") or ()
        ]
        assert calls[0]["function"] == {"name": "get_weather"} and calls[0]["index"] == 0
        args = "".join(t["function"].get("arguments", "") for t in calls[1:])
        assert json.loads(args)["unit"] in ("c", "f")
        (final,) = _finals_by_index(chunks).values()
        assert final["finish_reason"] == ("stop" if "named" in name else "tool_calls")
    if name == "tools_auto_text":
        msg = cap["_parsed"]["choices"][0]["message"]
        assert "tool_calls" not in msg and msg["content"]
    if name == "tools_named_cut_by_length":
        (choice,) = cap["_parsed"]["choices"]
        assert choice["finish_reason"] == "length" and "tool_calls" not in choice["message"]
        assert choice["message"]["content"].startswith("<")  # the raw, unparsed markup
    if name.startswith("responses") or name.startswith("reasoning_responses"):
        _responses_semantics(name, cap)


def _responses_semantics(name: str, cap: dict[str, Any]) -> None:
    if name in ("responses_nonstream", "reasoning_responses_nonstream"):
        r = cap["_parsed"]
        assert r["status"] == "incomplete" and r["incomplete_details"] == {
            "reason": "max_output_tokens"
        }
        assert r["usage"]["output_tokens"] == 3
    if name.endswith("_stream") and not name.endswith("flow"):
        events = _responses_events(cap)
        names = [n for n, _ in events]
        assert names[:2] == ["response.created", "response.in_progress"]
        assert names[-1] == "response.completed" and names.count("response.completed") == 1
        final = events[-1][1]["response"]
        done_items = [d["item"] for n, d in events if n == "response.output_item.done"]
        assert final["output"] == done_items
        if name == "responses_stream":
            assert final["status"] == "incomplete"
            assert "response.output_text.delta" in names
        if name == "responses_empty_stream":
            assert final["output"] == [] and final["status"] == "completed"
        if name == "reasoning_responses_stream":
            assert (
                "response.reasoning_text.delta" in names
                and "response.output_text.delta" not in names
            )
        if name == "reasoning_responses_thinking_off_stream":
            assert (
                "response.output_text.delta" in names
                and "response.reasoning_text.delta" not in names
            )
        if name == "responses_tools_required_stream":
            args = "".join(
                d["delta"] for n, d in events if n == "response.function_call_arguments.delta"
            )
            assert json.loads(args)["unit"] in ("c", "f")
    if name == "responses_empty":
        (item,) = cap["_parsed"]["output"]
        assert item["type"] == "message" and item["content"] == []
    if name == "reasoning_responses_thinking_off_nonstream":
        assert [i["type"] for i in cap["_parsed"]["output"]] == ["reasoning"]
    if name == "responses_tools_required":
        (item,) = cap["_parsed"]["output"]
        assert item["type"] == "function_call" and item["name"] == "get_weather"
    if name == "responses_json_schema":
        r = cap["_parsed"]
        assert json.loads(r["output"][0]["content"][0]["text"])["unit"] in ("c", "f")
        assert r["temperature"] == 0.5 and r["top_p"] == 0.9 and r["metadata"] == {"a": "b"}
    if name == "responses_store_flow":
        first, got, follow, cancel, missing, cancel_missing, replay = cap["_parsed"]
        assert cap["status"] == [200, 200, 200, 400, 404, 404, 200]
        assert got == first
        assert follow["previous_response_id"] == first["id"]
        # that the history is counted is checked in test_real_responses.py: here the
        # follow-up ("again") can be shorter than the first's instructions (not carried
        # over) when the random model's 3 tokens are reasoning the template drops
        assert type(follow["usage"]["input_tokens"]) is int
        assert cancel["error"]["message"] == "Cannot cancel a synchronous response."
        assert missing["error"]["message"] == "Response with id 'resp_missing' not found."
        assert cancel_missing == missing
        assert cap["cut"] == [False] * 6 + [True]  # vLLM cuts a replay of a non-background response
    if name == "responses_background_flow":
        created, got, cancelled, after = cap["_parsed"]
        assert cap["status"] == [200, 200, 200, 200]
        assert created["status"] == "queued" and created["output"] == [] and created["background"]
        assert got["status"] == "queued"
        assert cancelled["status"] == "cancelled" and after["status"] == "cancelled"
    if name == "responses_background_stream_flow":
        assert cap["status"] == [200, 200, 200]
        first = [e["data"] for e in cap["_parsed"][0]]
        replay = [e["data"] for e in cap["_parsed"][1]]
        assert replay[0]["type"] == "response.output_text.done"
        start = replay[0]["sequence_number"]
        assert [e["sequence_number"] for e in replay] == list(range(start, len(first)))
        assert replay[-1]["type"] == "response.completed"
        assert cap["_parsed"][2]["status"] == "incomplete"


def error_messages(cap: dict[str, Any], model: str) -> list[str]:
    """Every error message in a capture (a JSON body or stream events, each step of a flow),
    with the served model's name replaced."""
    raws = cap["raw"] if isinstance(cap["raw"], list) else [cap["raw"]]
    found: list[str] = []
    for raw in raws:
        for m in re.finditer(r'"error": ?\{"message": ?("(?:[^"\\]|\\.)*")', raw):
            found.append(json.loads(m.group(1)).replace(model, "<model>"))
    return found


def fidelity_check(
    name: str, sc: Scenario, got: dict[str, Any], want: dict[str, Any], models: tuple[str, str]
) -> None:
    """The simulator's capture against the real server's recording (``models``: the sim's
    served name, the real one's)."""
    assert error_messages(got, models[0]) == error_messages(want, models[1]), name
    assert (got["status"], got["content_type"]) == (want["status"], want["content_type"]), name
    if sc.subset:
        extra = set(got["shape"]) - set(want["shape"])
        assert not extra, f"the simulator serves families vLLM does not: {extra}"
        for key, value in got["shape"].items():
            assert value == want["shape"][key], f"{name}: {key} differs from vLLM"
    else:
        assert got["shape"] == want["shape"], f"simulator drifted from vLLM for {name}"
    if "cut" in want:
        assert got.get("cut") == want["cut"], name


def same_or_fewer_kinds(live: Any, recorded: Any) -> bool:
    """A live real stream may lack chunk kinds of the recording (its tokens merged into fewer
    chunks); it must not show new ones. Anything else must be equal."""
    if isinstance(live, dict) and "chunks" in live and isinstance(recorded, dict):
        return live["done"] == recorded.get("done") and all(
            c in recorded["chunks"] for c in live["chunks"]
        )
    return bool(live == recorded)


def union_kinds(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two captures of one stream scenario as one recording: every chunk kind seen."""
    if not (isinstance(a["shape"], dict) and "chunks" in a["shape"]):
        return a
    kinds = {
        orjson.dumps(k, option=orjson.OPT_SORT_KEYS): k
        for k in a["shape"]["chunks"] + b["shape"]["chunks"]
    }
    return {**a, "shape": {**a["shape"], "chunks": [kinds[k] for k in sorted(kinds)]}}


def recordable(cap: dict[str, Any]) -> dict[str, Any]:
    """What goes into transcripts.json (the parsed copy is for checks only)."""
    out = {k: v for k, v in cap.items() if not k.startswith("_")}
    if isinstance(out.get("raw"), str) and len(out["raw"]) > 20000:
        out["raw"] = out["raw"][:20000]
    return out


def redact_ids(text: str) -> str:
    return re.sub(r"[0-9a-f]{16}", "x" * 16, text)
