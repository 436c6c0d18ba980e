"""Reasoning ("thinking") text: a sans-I/O ``<think>`` splitter and per-choice stream state.

Profiles say how a model marks its reasoning (``reasoning:`` key). Modes:

* ``split``: text inside the think block goes to the configured delta/message fields (e.g.
  ``reasoning_content`` and ``reasoning``), the rest to ``content``; the tags are dropped, and
  so are newlines right after ``</think>``.
* ``inline``: untouched text; only upstream-split fields are renamed to the configured ones.
* ``hide``: reasoning dropped (its characters are still counted).

DeepSeek-R1-Distill and Qwen3-Thinking-2507 templates open ``<think>`` in the prompt, so the
output has only ``</think>``: ``starts_in_reasoning: true``. The rule for a think block that
never closes: if the choice finishes with ``stop``, the model answered without thinking and the
text is the answer: the final chunk carries it as ``content`` (in ``split`` mode it was already
streamed as reasoning) and the choice is flagged ``reasoning_unterminated: true``; if it
finishes with ``length``, it ran out of budget while thinking: ``reasoning_truncated: true``.
"""

from __future__ import annotations

from typing import Any

from .profiles import ReasoningRules

OPEN, CLOSE = "<think>", "</think>"
UPSTREAM_FIELDS = ("reasoning", "reasoning_content")


def _partial(s: str, tag: str) -> int:
    """Length of the longest suffix of ``s`` that is a proper prefix of ``tag``."""
    top = min(len(s), len(tag) - 1)
    if s.find("<", len(s) - top) == -1:  # the common case: no tag can start in the tail
        return 0
    for k in range(top, 0, -1):
        if s.endswith(tag[:k]):
            return k
    return 0


class ThinkSplitter:
    """``feed(text) -> (reasoning, content)``; tags may be split anywhere across feeds."""

    __slots__ = ("_after_close", "_held", "closed", "in_reasoning")

    def __init__(self, starts_in_reasoning: bool) -> None:
        self.in_reasoning = starts_in_reasoning
        #: a ``</think>`` was seen
        self.closed = False
        self._held = ""
        self._after_close = False

    def feed(self, text: str) -> tuple[str, str]:
        s = self._held + text if self._held else text
        self._held = ""
        reasoning: list[str] = []
        content: list[str] = []
        while s:
            tag = CLOSE if self.in_reasoning else OPEN
            i = s.find(tag)
            if i == -1:
                keep = _partial(s, tag)
                part, self._held = (s[:-keep], s[-keep:]) if keep else (s, "")
                self._emit(part, reasoning, content)
                break
            self._emit(s[:i], reasoning, content)
            s = s[i + len(tag) :]
            if self.in_reasoning:
                self.closed = self._after_close = True
            self.in_reasoning = not self.in_reasoning
        return "".join(reasoning), "".join(content)

    def _emit(self, part: str, reasoning: list[str], content: list[str]) -> None:
        if not part:
            return
        if self.in_reasoning:
            reasoning.append(part)
            return
        if self._after_close:  # the answer starts after the newlines that follow </think>
            part = part.lstrip("\n")
            if not part:
                return
            self._after_close = False
        content.append(part)

    def flush(self) -> tuple[str, str]:
        held, self._held = self._held, ""
        return (held, "") if self.in_reasoning else ("", held)


class ReasoningStream:
    """One choice's reasoning handling on a chat stream (after the stop-text scrub)."""

    __slots__ = (
        "answer_chars",
        "answering",
        "chars",
        "prefix",
        "rules",
        "splitter",
        "unterminated_text",
        "upstream_split",
    )

    def __init__(self, rules: ReasoningRules, assistant_prefix: str = "") -> None:
        self.rules = rules
        self.splitter = (
            ThinkSplitter(starts_in_reasoning(rules, assistant_prefix))
            if rules.parser == "think_tags" and rules.mode != "inline"
            else None
        )
        self.upstream_split = False
        #: answer text has started (after upstream-split reasoning)
        self.answering = False
        #: reasoning characters seen (also in ``hide`` mode)
        self.chars = 0
        #: answer characters sent (with ``chars``: the share behind the reasoning-token
        #: estimate, :mod:`usage`)
        self.answer_chars = 0
        #: text streamed as reasoning while no ``</think>`` closed it (see module doc)
        self.unterminated_text: list[str] = []
        #: ``inline`` mode shows the gateway-sent assistant prefix before the first text, so
        #: the client sees what the model was made to say
        self.prefix = assistant_prefix if rules.mode == "inline" else ""

    def _put(self, delta: dict[str, Any], reasoning: str, content: str | None) -> None:
        if reasoning:
            self.chars += len(reasoning)
            if self.rules.mode != "hide":
                for f in self.rules.fields:
                    delta[f] = reasoning
        if content is not None:
            delta["content"] = content

    def fast_delta(self, key: str, text: str) -> dict[str, str] | None:
        """The rewritten delta for plain text (``text`` has no ``<``; the caller checked)
        arriving in field ``key``; ``{}`` when it is hidden; None when the full
        :meth:`delta` must handle it (a prefix to show, a tag held, newlines to drop)."""
        if self.prefix:
            return None
        if key == "content":
            if self.upstream_split:
                if not self.answering:
                    return None
                self.answer_chars += len(text)
                return {"content": text}
            sp = self.splitter
            if sp is None:
                self.answer_chars += len(text)
                return {"content": text}
            if sp._held or sp._after_close:
                return None
            if not sp.in_reasoning:
                self.answer_chars += len(text)
                return {"content": text}
            if sp.closed:
                self.unterminated_text.clear()
            else:
                self.unterminated_text.append(text)
        elif key in UPSTREAM_FIELDS:
            self.upstream_split = True
        else:
            return None
        self.chars += len(text)
        if self.rules.mode == "hide":
            return {}
        return dict.fromkeys(self.rules.fields, text)

    def delta(self, delta: dict[str, Any]) -> bool:
        """Rewrite a delta in place; False when nothing is left to send."""
        had_content = "content" in delta
        upstream = None
        for f in UPSTREAM_FIELDS:
            value = delta.pop(f, None)
            if isinstance(value, str) and upstream is None:
                upstream = value
        if upstream is not None:
            self.upstream_split = True
            self._put(delta, upstream, None)
        text = delta.get("content")
        if self.upstream_split and not self.answering and isinstance(text, str):
            # vLLM's reasoning parser leaves the newlines after </think> at the start of the
            # answer; the gateway's own splitter drops them: the same result both ways
            text = text.lstrip("\n")
            if text:
                self.answering = True
                delta["content"] = text
            else:
                delta.pop("content", None)
        if isinstance(text, str) and text:
            if self.prefix:
                text, self.prefix = self.prefix + text, ""
            if self.splitter is not None and not self.upstream_split:
                r, c = self.splitter.feed(text)
                if self.splitter.closed:
                    self.unterminated_text.clear()
                elif r:
                    self.unterminated_text.append(r)
                if c:
                    delta["content"] = c
                else:
                    delta.pop("content", None)
                self._put(delta, r, None)
            else:
                delta["content"] = text
        answer = delta.get("content")
        if isinstance(answer, str):
            self.answer_chars += len(answer)
        for key in delta:
            if key != "role":
                return True
        return had_content and "role" in delta

    def finish(self, delta: dict[str, Any], choice: dict[str, Any], finish_reason: str) -> None:
        """At the choice's final chunk: release held text, apply the unterminated rule."""
        if self.splitter is None or self.upstream_split:
            return
        r, c = self.splitter.flush()
        if r and not self.splitter.closed:
            self.unterminated_text.append(r)
        if c:
            delta["content"] = delta.get("content", "") + c
            self.answer_chars += len(c)
        self._put(delta, r, None)
        if not self.splitter.closed and self.unterminated_text:
            if finish_reason == "stop":
                text = delta["content"] = "".join(self.unterminated_text)
                choice["reasoning_unterminated"] = True
                # it was the answer after all
                self.chars -= len(text)
                self.answer_chars += len(text)
            elif finish_reason == "length":
                choice["reasoning_truncated"] = True


def starts_in_reasoning(rules: ReasoningRules, assistant_prefix: str) -> bool:
    """In reasoning from the first token: the template or the gateway's prefix opened it."""
    return rules.starts_in_reasoning or assistant_prefix.rfind(OPEN) > assistant_prefix.rfind(CLOSE)


def split_message(
    message: dict[str, Any],
    choice: dict[str, Any],
    rules: ReasoningRules,
    finish_reason: str,
    assistant_prefix: str = "",
) -> int:
    """The same rules for a non-streaming message, in place; returns the number of
    reasoning characters (also when hidden)."""
    upstream = None
    for f in UPSTREAM_FIELDS:
        value = message.pop(f, None)
        if isinstance(value, str) and upstream is None:
            upstream = value
    text = message.get("content")
    if upstream is not None and isinstance(text, str):
        text = message["content"] = text.lstrip("\n") or None  # as in the stream
    reasoning: str | None = upstream
    if rules.mode == "inline" and assistant_prefix and isinstance(text, str):
        message["content"] = assistant_prefix + text
    elif upstream is None and rules.parser == "think_tags" and isinstance(text, str):
        splitter = ThinkSplitter(starts_in_reasoning(rules, assistant_prefix))
        if rules.mode != "inline":
            r1, c1 = splitter.feed(text)
            r2, c2 = splitter.flush()
            reasoning, content = (r1 + r2) or None, c1 + c2
            if not splitter.closed and reasoning:
                if finish_reason == "stop":
                    reasoning, content = None, text
                    choice["reasoning_unterminated"] = True
                elif finish_reason == "length":
                    choice["reasoning_truncated"] = True
            message["content"] = content or None
    if reasoning is None:
        return 0
    if rules.mode != "hide":
        for f in rules.fields:
            message[f] = reasoning
    return len(reasoning)
