"""``reasoning.control``: how a model's thinking is steered (the profile section).

Resolved into :class:`ReasoningControl` (frozen, cheap to read per request); the request-side
logic is in :mod:`control`, budget forcing in :mod:`forcing`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Effort = Literal["minimal", "low", "medium", "high", "xhigh", "max"]
#: every effort a client may name, ``none`` included (OpenAI's and vLLM's list)
EFFORTS: tuple[str, ...] = ("none", "minimal", "low", "medium", "high", "xhigh", "max")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class EffortBudgets(_Strict):
    """Thinking budget in tokens per effort level; ``null``: unlimited."""

    minimal: int | None = Field(default=256, ge=0, le=100_000_000)
    low: int | None = Field(default=1024, ge=0, le=100_000_000)
    medium: int | None = Field(default=4096, ge=0, le=100_000_000)
    high: int | None = Field(default=16384, ge=0, le=100_000_000)
    xhigh: int | None = Field(default=32768, ge=0, le=100_000_000)
    max: int | None = Field(default=None, ge=0, le=100_000_000)


class ReasoningControlSpec(_Strict):
    """How reasoning requests (``reasoning_effort``, ``reasoning: {...}``, ``thinking:
    {...}``, ``thinking_token_budget``) reach this model."""

    efforts: EffortBudgets = Field(default_factory=EffortBudgets)
    #: budget for a request that asks for none (``null``: unlimited, the model decides)
    default_budget: int | None = Field(default=None, ge=0, le=100_000_000)
    #: the ``chat_template_kwargs`` switch that turns thinking off (set to false for effort
    #: ``none``, true when a request asks for reasoning), e.g. ``enable_thinking`` (Qwen3)
    #: or ``thinking``; ``null``: the template has none, thinking off is a budget of 0
    off_switch: str | None = Field(
        default="enable_thinking", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
    )
    #: who enforces a budget: ``backend`` sends vLLM's ``thinking_token_budget`` (vLLM with
    #: ``--reasoning-parser`` or ``--reasoning-config``); ``gateway`` counts the reasoning
    #: tokens and ends the thinking itself (budget forcing)
    enforce: Literal["backend", "gateway"] = "backend"
    #: a client ``max_tokens`` at or below the budget: ``reject`` (400) or ``raise`` it to
    #: budget + ``answer_room``
    short_max_tokens: Literal["reject", "raise"] = "reject"
    #: tokens kept for the answer above the budget when the gateway sets or raises max_tokens
    answer_room: int = Field(default=1024, ge=1, le=100_000_000)
    #: budget forcing continues the answer with a second request: ``chat`` (the reasoning so
    #: far as a final assistant message, vLLM's ``continue_final_message``) or
    #: ``completions`` (the rendered prompt + reasoning on ``/v1/completions``: for chat
    #: templates that rewrite assistant turns, such as DeepSeek-R1's)
    continuation: Literal["chat", "completions"] = "chat"
    #: what opens the reasoning when the template does it (sent back in a continuation)
    opening: str = Field(default="<think>\n", max_length=256)
    #: what ends the reasoning in a continuation
    closing: str = Field(default="\n</think>\n\n", min_length=1, max_length=256)


@dataclass(frozen=True, slots=True)
class ReasoningControl:
    """A resolved ``reasoning.control``."""

    efforts: dict[str, int | None] = field(default_factory=lambda: EffortBudgets().model_dump())
    default_budget: int | None = None
    off_switch: str | None = "enable_thinking"
    enforce: Literal["backend", "gateway"] = "backend"
    short_max_tokens: Literal["reject", "raise"] = "reject"
    answer_room: int = 1024
    continuation: Literal["chat", "completions"] = "chat"
    opening: str = "<think>\n"
    closing: str = "\n</think>\n\n"

    @classmethod
    def from_spec(cls, spec: ReasoningControlSpec) -> ReasoningControl:
        return cls(**spec.model_dump())
