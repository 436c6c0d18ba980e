"""The Responses API (``/v1/responses``): pure functions from a request to its upstream body,
and from vLLM's answer (a response object) to the client's.

The request, in the order of :mod:`transform` for chat:

1. ``model`` becomes the profile's ``upstream_model``.
2. ``defaults`` fill absent fields and ``overrides`` replace fields (``null`` removes one),
   under their Responses names (:data:`RENAMED`: ``max_tokens`` / ``max_completion_tokens``
   set ``max_output_tokens``, ``reasoning_effort`` sets ``reasoning.effort``).
3. ``stop_token_ids``: the client's, then the profile's, without duplicates.
4. Prompt rules on the input items: reasoning history hygiene (``reasoning`` items dropped,
   ``<think>`` blocks and reasoning fields removed from earlier assistant messages), the
   ``system`` rule for ``instructions`` and system/developer items, ``leading_newline`` on the
   last user input, and the ``assistant_prefix`` as a partial assistant message (status
   ``in_progress``), which vLLM continues (``continue_final_message``).
5. The client's ``request_id`` is dropped: the gateway names each attempt's response itself
   (:mod:`responses_ids`).

A response object (non-stream answers, ``GET``, ``cancel``) gets the stream's rules at once:
the public model name, the stop-text guard on the message text, reasoning left in the text
split into a ``reasoning`` item (or hidden), per the profile's ``reasoning``.
"""

from __future__ import annotations

import secrets
from typing import Any

from .profiles import Profile, ReasoningRules
from .reasoning import ThinkSplitter, starts_in_reasoning
from .transform import REASONING_FIELDS, strip_think

#: chat-side profile fields and where they go in a Responses request
RENAMED = {
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
}
_TEXT_PARTS = ("input_text", "output_text", "text")


def _is_message(item: Any) -> bool:
    return isinstance(item, dict) and item.get("type", "message") == "message" and "role" in item


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text") or ""
            for p in content
            if isinstance(p, dict) and p.get("type") in _TEXT_PARTS
        )
    return ""


def _prepend(content: Any, prefix: str) -> Any:
    """``prefix`` + content, for string content or a list of content parts."""
    if isinstance(content, list):
        parts = list(content)
        for i, part in enumerate(parts):
            if isinstance(part, dict) and part.get("type") in _TEXT_PARTS:
                parts[i] = {**part, "text": prefix + (part.get("text") or "")}
                return parts
        return [{"type": "input_text", "text": prefix}, *parts]
    return prefix + (content or "")


def _apply_fields(out: dict[str, Any], fields: dict[str, Any], *, override: bool) -> None:
    for key, value in fields.items():
        if key == "reasoning_effort":
            reasoning = out.get("reasoning")
            reasoning = dict(reasoning) if isinstance(reasoning, dict) else {}
            if override or reasoning.get("effort") is None:
                reasoning["effort"] = value
                out["reasoning"] = reasoning
            continue
        key = RENAMED.get(key, key)
        if override or out.get(key) is None:
            out[key] = value


def strip_history(items: list[Any]) -> list[Any]:
    """Input items without earlier reasoning: ``reasoning`` items dropped; assistant
    messages without ``<think>`` blocks and reasoning fields."""
    out = []
    for item in items:
        if isinstance(item, dict) and item.get("type") == "reasoning":
            continue
        if _is_message(item) and item.get("role") == "assistant":
            item = {k: v for k, v in item.items() if k not in REASONING_FIELDS}
            content = item.get("content")
            if isinstance(content, str):
                item["content"] = strip_think(content)
            elif isinstance(content, list):
                item["content"] = [
                    {**p, "text": strip_think(p.get("text") or "")}
                    if isinstance(p, dict) and p.get("type") in _TEXT_PARTS
                    else p
                    for p in content
                ]
        out.append(item)
    return out


def apply_system_rule(out: dict[str, Any], items: str | list[Any], rule: str) -> str | list[Any]:
    """``instructions`` and system/developer items: kept, dropped, or merged into the first
    user input (``out`` loses ``instructions`` unless kept)."""
    if rule == "keep":
        return items
    instructions = out.pop("instructions", None)
    texts = [instructions] if isinstance(instructions, str) and instructions else []
    if isinstance(items, list):
        system = [m for m in items if _is_message(m) and m["role"] in ("system", "developer")]
        items = [m for m in items if not (_is_message(m) and m["role"] in ("system", "developer"))]
        texts += [t for t in (_text_of(m.get("content")) for m in system) if t]
    if rule == "drop" or not texts:
        return items
    text = "\n\n".join(texts)
    if isinstance(items, str):
        return text + "\n\n" + items
    for i, m in enumerate(items):
        if _is_message(m) and m["role"] == "user":
            items[i] = {**m, "content": _prepend(m.get("content"), text + "\n\n")}
            return items
    # no user input to fold into: the system text becomes the user input
    return [{"role": "user", "content": text}, *items]


def apply_leading_newline(items: str | list[Any]) -> str | list[Any]:
    if isinstance(items, str):
        return items if items.startswith("\n") else "\n" + items
    for i in range(len(items) - 1, -1, -1):
        m = items[i]
        if _is_message(m) and m["role"] == "user":
            if not _text_of(m.get("content")).startswith("\n"):
                items = list(items)
                items[i] = {**m, "content": _prepend(m.get("content"), "\n")}
            return items
    return items


def build_upstream_body(body: dict[str, Any], profile: Profile) -> dict[str, Any]:
    """The upstream body (without ``request_id``: set per attempt); ``body`` is unchanged."""
    out = dict(body)
    out["model"] = profile.upstream_model
    _apply_fields(out, profile.defaults, override=False)
    _apply_fields(out, profile.overrides, override=True)
    for key in profile.remove:  # ``overrides: {field: null}``
        out.pop(key, None)
        out.pop(RENAMED.get(key, key), None)
    if profile.stop_token_ids:
        client_ids = out.get("stop_token_ids") or []
        out["stop_token_ids"] = list(dict.fromkeys([*client_ids, *profile.stop_token_ids]))
    items: str | list[Any] = body["input"]
    if isinstance(items, list):
        items = list(items)
        if profile.reasoning is not None and profile.reasoning.strip_history:
            items = strip_history(items)
    items = apply_system_rule(out, items, profile.system)
    if profile.leading_newline:
        items = apply_leading_newline(items)
    prefix = profile.assistant_prefix
    if prefix:
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
        last = items[-1] if items else None
        if not (isinstance(last, dict) and _is_message(last) and last["role"] == "assistant"):
            items = [
                *items,
                {
                    "type": "message",
                    "role": "assistant",
                    "status": "in_progress",  # vLLM continues a partial assistant message
                    "content": [{"type": "output_text", "text": prefix}],
                },
            ]
    out["input"] = items
    out.pop("request_id", None)
    return out


def affinity_key(profile: Profile, body: dict[str, Any], headers: dict[bytes, bytes]) -> str | None:
    """The conversation key for a sticky backend (see :func:`handler.affinity_key`):
    instructions, system/developer items and the first user input."""
    if profile.affinity == "header":
        value = headers.get(profile.affinity_header.encode())
        return value.decode("latin-1") if value else None
    if profile.affinity != "prefix":
        return None
    items = body.get("input")
    stable = [body.get("instructions") or ""]
    if isinstance(items, str):
        stable.append(items)
    elif isinstance(items, list):
        stable += [_text_of(m.get("content")) for m in items if _is_message(m)][:1]
        stable += [
            _text_of(m.get("content"))
            for m in items
            if _is_message(m) and m["role"] in ("system", "developer")
        ]
    return "\n".join(stable)[:4096]


# -- response objects -------------------------------------------------------------------------


def reasoning_item(text: str, item_id: str | None = None, status: Any = None) -> dict[str, Any]:
    """A ``reasoning`` output item as vLLM builds it."""
    return {
        "id": item_id or "rs_" + secrets.token_hex(16),
        "summary": [],
        "type": "reasoning",
        "content": [{"text": text, "type": "reasoning_text"}],
        "encrypted_content": None,
        "status": status,
    }


def message_text(item: dict[str, Any]) -> str:
    return _text_of(item.get("content"))


def with_text(item: dict[str, Any], text: str, status: Any = None) -> dict[str, Any]:
    """A message output item with ``text`` as its one output_text part (an empty text: no
    part, as vLLM sends an empty message)."""
    parts = item.get("content")
    first = (
        next(
            (p for p in parts if isinstance(p, dict) and p.get("type") == "output_text"),
            None,
        )
        if isinstance(parts, list)
        else None
    )
    part = dict(first) if first else {"annotations": [], "text": "", "type": "output_text"}
    part["text"] = text
    part.setdefault("logprobs", None)
    out = {**item, "content": [part] if text else []}
    if status is not None:
        out["status"] = status
    return out


def usage_record(usage: Any) -> dict[str, Any] | None:
    """A Responses ``usage`` in the chat names the metrics read."""
    if not isinstance(usage, dict):
        return None
    details = usage.get("output_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
    return {
        "prompt_tokens": usage.get("input_tokens"),
        "completion_tokens": usage.get("output_tokens"),
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


#: a response's status as a finish_reason (metrics and the access log)
STATUS_FINISH = {"completed": "stop", "incomplete": "length", "failed": "error"}


def normalize_response(
    obj: dict[str, Any], profile: Profile, public_model: str | None = None
) -> dict[str, Any]:
    """A whole response object by the contract (see module doc), in place."""
    obj["model"] = public_model or profile.name
    output = obj.get("output")
    if not isinstance(output, list):
        return obj
    rules = profile.reasoning
    upstream_split = any(isinstance(i, dict) and i.get("type") == "reasoning" for i in output)
    kept: list[Any] = []
    for item in output:
        if not isinstance(item, dict):
            kept.append(item)
            continue
        kind = item.get("type")
        if kind == "reasoning" and rules is not None and rules.mode == "hide":
            continue
        if kind != "message":
            kept.append(item)
            continue
        text = message_text(item)
        hits = [(i, s) for s in profile.stop_text if (i := text.find(s)) != -1]
        if hits:
            i, matched = min(hits)
            text = text[:i]
            obj["status"] = "completed"
            obj["incomplete_details"] = None
            obj["gateway_termination"] = "stop_text"
            obj["stop_reason"] = matched
        kept += _split(item, text, rules, upstream_split, obj.get("status"), profile)
        if hits:
            break  # nothing the model made after the stop string reaches the client
    obj["output"] = kept
    return obj


def _split(
    item: dict[str, Any],
    text: str,
    rules: ReasoningRules | None,
    upstream_split: bool,
    status: Any,
    profile: Profile,
) -> list[dict[str, Any]]:
    """One message item by the profile's reasoning rules: [reasoning item?, message?]."""
    reasoning: str | None = None
    if rules is None:
        pass
    elif upstream_split:
        text = text.lstrip("\n")  # as in the stream: vLLM leaves them after </think>
    elif rules.mode == "inline":
        text = profile.assistant_prefix + text
    elif rules.parser == "think_tags":
        splitter = ThinkSplitter(starts_in_reasoning(rules, profile.assistant_prefix))
        r1, c1 = splitter.feed(text)
        r2, c2 = splitter.flush()
        reasoning, content = (r1 + r2) or None, c1 + c2
        if not splitter.closed and reasoning and status == "completed":
            reasoning, content = None, text  # answered without thinking: the text is the answer
        text = content
    out = []
    if reasoning and rules is not None and rules.mode != "hide":
        out.append(reasoning_item(reasoning))
    if text or not out:
        out.append(with_text(item, text))
    return out
