"""Pure functions: a validated client request + a profile -> the body sent upstream.

Order of application (documented in the README):
1. ``model`` becomes the profile's ``upstream_model``.
2. ``defaults`` fill fields the client did not send (or sent as ``null``).
3. ``overrides`` replace fields whatever the client sent.
4. ``stop_token_ids``: the client's ids, then the profile's, without duplicates.
5. Chat prompt rules: the ``system`` rule first, then ``leading_newline`` on the final user turn.
6. Streams always ask the upstream for usage (the gateway needs the counts); whether the
   client asked is returned so the usage chunk can be dropped for it.
"""

from __future__ import annotations

from typing import Any

from .profiles import Profile


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
    for key, value in profile.defaults.items():
        if out.get(key) is None:
            out[key] = value
    out.update(profile.overrides)
    if profile.stop_token_ids:
        client_ids = out.get("stop_token_ids") or []
        out["stop_token_ids"] = list(dict.fromkeys([*client_ids, *profile.stop_token_ids]))
    if endpoint == "chat":
        messages = body["messages"]
        messages = apply_system_rule(messages, profile.system)
        if profile.leading_newline:
            messages = apply_leading_newline(messages)
        out["messages"] = messages
    wants_usage = False
    if out.get("stream"):
        opts = dict(out.get("stream_options") or {})
        wants_usage = bool(opts.get("include_usage"))
        opts["include_usage"] = True
        out["stream_options"] = opts
    return out, wants_usage
