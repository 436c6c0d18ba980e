"""``usage.completion_tokens_details.reasoning_tokens``, always filled for reasoning models.

vLLM counts only a *generated* ``<think>`` block (0 for DeepSeek-R1 and Qwen3-Thinking-2507,
whose templates open the block in the prompt) and reports nothing without a reasoning
parser. The gateway fills the count, in this order:

1. the backend's own positive count is kept;
2. exact, when the gateway counted the tokens itself: budget forcing asks vLLM for per-chunk
   usage (``stream_options.continuous_usage_stats``) and the count is written by
   :mod:`forcing`, or the whole first part of a non-stream answer was reasoning;
3. otherwise an estimate: vLLM's exact ``completion_tokens`` split by the characters of
   reasoning and answer text the gateway saw (``round(completion * r / (r + a))``), flagged
   ``completion_tokens_details.reasoning_tokens_estimated: true``.

No reasoning text at all gives 0 (exact).
"""

from __future__ import annotations

from typing import Any

ESTIMATED = "reasoning_tokens_estimated"


def fill_reasoning_tokens(usage: Any, reasoning_chars: int, answer_chars: int) -> None:
    """Fill ``usage`` (in place) as the module doc says."""
    if not isinstance(usage, dict):
        return
    details = usage.get("completion_tokens_details")
    reported = details.get("reasoning_tokens") if isinstance(details, dict) else None
    if type(reported) is int and reported > 0:
        return
    estimated = False
    if reasoning_chars <= 0:
        count = 0
    else:
        completion = usage.get("completion_tokens")
        if type(completion) is not int or completion < 0:
            return
        total = reasoning_chars + max(0, answer_chars)
        count = min(completion, max(1, round(completion * reasoning_chars / total)))
        estimated = True
    out = dict(details) if isinstance(details, dict) else {}
    out["reasoning_tokens"] = count
    if estimated:
        out[ESTIMATED] = True
    usage["completion_tokens_details"] = out
