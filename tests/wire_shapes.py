"""vLLM's wire format reduced to shapes, to keep the simulated backend faithful.

The same scenarios run against the real vLLM server (``tests/vllm``, which records
``tests/vllm/transcripts.json``) and against the simulator (``tests/test_sim_fidelity.py``,
which must match the recording). A shape keeps key order and value types, not values;
consecutive identical chunk shapes collapse into one (vLLM merges tokens into chunks as it
likes, so the count of content chunks is not part of the format).
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

STOP_ID = 300  # an ordinary token of the tiny model; forced with logit_bias
SCRIPT = [[401, "alpha"], [402, " beta"], [403, " gamma"], [404, " delta"], [405, " epsilon"]]
USER = [{"role": "user", "content": "hi"}]


def scenarios(model: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (path, body). ``sim`` scripts the simulator; vLLM ignores the field."""
    stop = {
        "stop_token_ids": [STOP_ID],
        "logit_bias": {str(STOP_ID): 100},
        "sim": {"tokens": [[STOP_ID, "<stop>"], *SCRIPT]},
    }
    length = {"max_tokens": 3, "seed": 1, "sim": {"tokens": SCRIPT}}
    usage = {"stream_options": {"include_usage": True}}
    chat = "/v1/chat/completions"
    comp = "/v1/completions"
    return {
        "chat_stream_stop_id": (chat, {"model": model, "messages": USER, "stream": True, **stop}),
        "chat_stream_length": (chat, {"model": model, "messages": USER, "stream": True, **length}),
        "chat_stream_usage": (
            chat,
            {"model": model, "messages": USER, "stream": True, **length, **usage},
        ),
        "chat_nonstream": (chat, {"model": model, "messages": USER, **length}),
        "completions_stream": (comp, {"model": model, "prompt": "hi", "stream": True, **length}),
        "completions_stream_usage": (
            comp,
            {"model": model, "prompt": "hi", "stream": True, **length, **usage},
        ),
        "completions_nonstream": (comp, {"model": model, "prompt": "hi", **length}),
        "error_unknown_model": (chat, {"model": "no-such-model", "messages": USER}),
        "error_bad_max_tokens": (chat, {"model": model, "messages": USER, "max_tokens": -1}),
    }


def shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return "null" if value is None else type(value).__name__


def collapse(shapes: list[Any]) -> list[Any]:
    out: list[Any] = []
    for s in shapes:
        if not out or out[-1] != s:
            out.append(s)
    return out


def capture(base_url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """Send one scenario; return status, content type, raw text and the shape."""
    r = httpx.post(base_url + path, json=body, timeout=60)
    ctype = r.headers.get("content-type", "").split(";")[0]
    if ctype == "text/event-stream":
        events = [b[6:] for b in r.content.split(b"\n\n") if b.startswith(b"data: ")]
        parsed = ["[DONE]" if e == b"[DONE]" else orjson.loads(e) for e in events]
        got = collapse(["[DONE]" if p == "[DONE]" else shape(p) for p in parsed])
    else:
        parsed = r.json()
        got = shape(parsed)
    return {"status": r.status_code, "content_type": ctype, "shape": got, "raw": r.text}


def semantics(name: str, cap: dict[str, Any]) -> None:
    """Value-level facts both servers must show, beyond the shape."""
    raw = cap["raw"]
    if name == "chat_stream_stop_id":
        assert f'"finish_reason":"stop","stop_reason":{STOP_ID}' in raw.replace(" ", "")
    if name.endswith("length") or name in ("chat_nonstream", "completions_nonstream"):
        assert '"finish_reason":"length"' in raw.replace(" ", "")
    if name.startswith("error_"):
        assert cap["status"] == (404 if "model" in name else 400)
