"""Pure functions: a validated client request + a profile -> the body sent upstream.

Order of application (documented in the README):
1. ``model`` becomes the profile's ``upstream_model``; ``max_tokens_limit`` fills
   ``max_tokens`` when the client sent neither spelling (the gateway's own value, which
   :mod:`control` may cap per backend).
2. ``defaults`` fill fields the client did not send (or sent as ``null``).
3. ``overrides`` replace fields whatever the client sent; an override of ``null`` removes
   the field (the client's fields were already checked against the profile's field policy,
   :mod:`fields`, at admission by :func:`check_request`).
4. ``stop_token_ids``: the client's ids, then the profile's, without duplicates.
5. Chat prompt rules: reasoning removed from earlier assistant turns (``reasoning``
   profiles), the ``system`` rule, ``leading_newline`` on the final user turn, then the
   ``assistant_prefix`` as a final assistant message continued by vLLM
   (``continue_final_message: true, add_generation_prompt: false``).
6. Streams always ask the upstream for usage (the gateway needs the counts); whether the
   client asked is returned so the usage chunk can be dropped for it.
"""

from __future__ import annotations

from typing import Any

from .errors import RequestError
from .fields import apply_field_policy
from .profiles import LimitsSpec, Profile


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if p.get("type") == "text")
    return ""


def _prepend(content: Any, prefix: str) -> Any:
    """``prefix`` + content, for string content or a list of content parts."""
    if isinstance(content, list):
        parts = list(content)
        for i, part in enumerate(parts):
            if part.get("type") == "text":
                parts[i] = {**part, "text": prefix + part.get("text", "")}
                return parts
        return [{"type": "text", "text": prefix}, *parts]
    return prefix + (content or "")


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
#: where clients send earlier reasoning back (OpenAI-compatible servers, DeepSeek, litellm
#: and its ``provider_specific_fields``, Anthropic-style thinking blocks)
REASONING_FIELDS = frozenset(
    {"reasoning", "reasoning_content", "reasoning_details", "thinking_blocks", "thinking"}
)


def strip_think(text: str) -> str:
    """Remove ``<think>...</think>`` blocks, or everything up to a lone ``</think>``.

    One left-to-right pass over the text (linear: a turn made of a million tags costs
    milliseconds, not minutes)."""
    last_close = text.rfind(THINK_CLOSE)
    if last_close == -1:
        return text
    out = []
    pos = 0
    while pos <= last_close:
        close = text.find(THINK_CLOSE, pos)
        if close == -1:
            break
        # what stands before an opening tag in this segment is kept; the rest is reasoning
        open_ = text.find(THINK_OPEN, pos, close)
        if open_ != -1:
            out.append(text[pos:open_])
        pos = close + len(THINK_CLOSE)
    out.append(text[pos:])
    return "".join(out).lstrip("\n")


def strip_history_reasoning(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Earlier assistant turns without their reasoning (DeepSeek's multi-turn guidance),
    whether it came back as ``<think>`` text or as a ``reasoning``/``reasoning_content`` field."""
    out = []
    for m in messages:
        if m.get("role") == "assistant":
            m = {k: v for k, v in m.items() if k not in REASONING_FIELDS}
            extra = m.get("provider_specific_fields")
            if isinstance(extra, dict):
                kept = {k: v for k, v in extra.items() if k not in REASONING_FIELDS}
                if kept:
                    m["provider_specific_fields"] = kept
                else:
                    del m["provider_specific_fields"]
            content = m.get("content")
            if isinstance(content, str):
                m["content"] = strip_think(content)
            elif isinstance(content, list):
                m["content"] = [
                    {**p, "text": strip_think(p.get("text", ""))} if p.get("type") == "text" else p
                    for p in content
                ]
        out.append(m)
    return out


def apply_system_rule(messages: list[dict[str, Any]], rule: str) -> list[dict[str, Any]]:
    if rule == "keep":
        return messages
    system = [m for m in messages if m.get("role") in ("system", "developer")]
    if not system:
        return messages
    rest = [m for m in messages if m.get("role") not in ("system", "developer")]
    if rule == "drop":
        return rest
    text = "\n\n".join(t for t in (_text_of(m.get("content")) for m in system) if t)
    for i, m in enumerate(rest):
        if m.get("role") == "user":
            rest[i] = {**m, "content": _prepend(m.get("content"), text + "\n\n")}
            return rest
    # No user turn to fold into: the system text becomes the user turn.
    return [{"role": "user", "content": text}, *rest]


def apply_leading_newline(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if m.get("role") == "user":
            if not _text_of(m.get("content")).startswith("\n"):
                messages = list(messages)
                messages[i] = {**m, "content": _prepend(m.get("content"), "\n")}
            return messages
    return messages


def build_upstream_body(
    body: dict[str, Any], profile: Profile, endpoint: str
) -> tuple[dict[str, Any], bool]:
    """Return ``(upstream_body, client_wants_usage)``; ``body`` is not modified."""
    out = dict(body)
    out["model"] = profile.upstream_model
    limit = profile.max_tokens_limit
    if limit is not None and out.get("max_tokens") is None:
        if out.get("max_completion_tokens") is None:
            out["max_tokens"] = limit
    for key, value in profile.defaults.items():
        if out.get(key) is None:
            out[key] = value
    out.update(profile.overrides)
    for key in profile.remove:
        out.pop(key, None)
    if profile.stop_token_ids:
        client_ids = out.get("stop_token_ids") or []
        out["stop_token_ids"] = list(dict.fromkeys([*client_ids, *profile.stop_token_ids]))
    if endpoint == "chat":
        messages = body["messages"]
        if profile.reasoning is not None and profile.reasoning.strip_history:
            messages = strip_history_reasoning(messages)
        messages = apply_system_rule(messages, profile.system)
        if profile.leading_newline:
            messages = apply_leading_newline(messages)
        if profile.assistant_prefix and messages[-1].get("role") != "assistant":
            messages = [*messages, {"role": "assistant", "content": profile.assistant_prefix}]
            out["continue_final_message"] = True
            out["add_generation_prompt"] = False
        out["messages"] = messages
    wants_usage = False
    if out.get("stream"):
        opts = dict(out.get("stream_options") or {})
        wants_usage = bool(opts.get("include_usage"))
        opts["include_usage"] = True
        out["stream_options"] = opts
    return out, wants_usage


def check_request(
    body: dict[str, Any], endpoint: str, profile: Profile, limits: LimitsSpec, chars: int
) -> None:
    """The field policy, size limits, ``n`` and ``max_tokens`` rules; clamps ``max_tokens``
    (and drops denied fields, when the policy says ``drop``) in ``body``. For chat and
    completions ``body`` keeps what the client asked for: an absent ``max_tokens`` is filled
    later, upstream only (:func:`build_upstream_body`).

    ``chars`` counts everything that reaches the model: every string of the request (message
    contents and names, tool definitions and calls, image data URLs, ...) and 4 per token id.
    Raises :class:`RequestError` (400) naming the field."""
    apply_field_policy(body, profile.policy, profile.name)
    listed = "input" if endpoint == "responses" else "messages"
    messages = body.get(listed)
    if endpoint != "completions" and isinstance(messages, list):
        if len(messages) > limits.max_messages:
            raise RequestError(
                f"{listed}: at most {limits.max_messages} messages, got {len(messages)}",
                param=listed,
            )
    if chars > limits.max_prompt_chars:
        raise RequestError(
            f"the request has {chars} characters of prompt, tools and other text, more than "
            f"the limit of {limits.max_prompt_chars}",
            param="prompt" if endpoint == "completions" else listed,
        )
    n = body.get("n") or 1
    if n > profile.max_n:
        raise RequestError(f"n: at most {profile.max_n} for this model, got {n}", param="n")
    limit = profile.max_tokens_limit
    if limit is None:
        return
    asked = False
    keys = _TOKEN_LIMITS.get(endpoint, _TOKEN_LIMITS["chat"])
    for key in keys:
        value = body.get(key)
        if value is None:
            continue
        asked = True
        if value > limit:
            if profile.max_tokens_policy == "reject":
                raise RequestError(f"{key}: at most {limit} for this model, got {value}", param=key)
            body[key] = limit
    if not asked and endpoint == "responses":
        # chat and completions get it upstream only (build_upstream_body), where it may be
        # capped per backend (control)
        body[keys[0]] = limit


#: the request fields that bound the answer's length, per endpoint (the first is set when the
#: client sent none)
_TOKEN_LIMITS = {
    "chat": ("max_tokens", "max_completion_tokens"),
    "responses": ("max_output_tokens",),
}
