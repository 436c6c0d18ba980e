from __future__ import annotations

import pytest

from gateway.profiles import ReasoningRules
from gateway.reasoning import ReasoningStream, ThinkSplitter, split_message
from gateway.transform import strip_history_reasoning, strip_think

SPLIT = ReasoningRules("think_tags", True, ("reasoning_content", "reasoning"), "split", True)

R1 = "Okay, 2+2.\nIt is 4.\n</think>\n\nThe answer is **4**."
QWEN = "<think>\nHmm, 2+2.\n</think>\n\nFour."


def split_all(text: str, starts: bool, cuts: list[int]) -> tuple[str, str, bool]:
    sp = ThinkSplitter(starts)
    r, c = [], []
    prev = 0
    for cut in [*cuts, len(text)]:
        a, b = sp.feed(text[prev:cut])
        r.append(a)
        c.append(b)
        prev = cut
    a, b = sp.flush()
    return "".join(r) + a, "".join(c) + b, sp.closed


@pytest.mark.parametrize("cut", range(len(R1) + 1))
def test_r1_style_every_split_point(cut: int) -> None:
    assert split_all(R1, True, [cut]) == ("Okay, 2+2.\nIt is 4.\n", "The answer is **4**.", True)


@pytest.mark.parametrize("cut", range(len(QWEN) + 1))
def test_both_tags_every_split_point(cut: int) -> None:
    assert split_all(QWEN, False, [cut]) == ("\nHmm, 2+2.\n", "Four.", True)


def test_char_by_char_and_no_tags() -> None:
    assert split_all(R1, True, list(range(1, len(R1)))) == split_all(R1, True, [])
    assert split_all("plain answer <thin", False, [3, 9]) == ("", "plain answer <thin", False)


def test_stream_unterminated_stop_is_the_answer() -> None:
    rs = ReasoningStream(SPLIT)
    d1 = {"content": "Just an"}
    assert rs.delta(d1) and d1 == {"reasoning_content": "Just an", "reasoning": "Just an"}
    d2: dict[str, object] = {"content": " answer."}
    rs.delta(d2)
    final: dict[str, object] = {"content": ""}
    choice: dict[str, object] = {}
    rs.delta(final)
    rs.finish(final, choice, "stop")
    assert final["content"] == "Just an answer." and choice == {"reasoning_unterminated": True}


def test_stream_length_while_thinking_is_flagged() -> None:
    rs = ReasoningStream(SPLIT)
    rs.delta({"content": "thinking..."})
    final: dict[str, object] = {}
    choice: dict[str, object] = {}
    rs.finish(final, choice, "length")
    assert choice == {"reasoning_truncated": True} and "content" not in final


def test_hide_counts_but_drops() -> None:
    rs = ReasoningStream(ReasoningRules("think_tags", True, ("reasoning",), "hide", True))
    d = {"content": "secret</think>\n\nshown"}
    assert rs.delta(d) and d == {"content": "shown"} and rs.chars == len("secret")


def test_upstream_split_fields_renamed_not_parsed() -> None:
    rs = ReasoningStream(ReasoningRules("think_tags", True, ("reasoning_content",), "split", True))
    d = {"reasoning": "thought"}
    rs.delta(d)
    assert d == {"reasoning_content": "thought"}
    d2 = {"content": "answer with </think> literal"}
    rs.delta(d2)
    assert d2 == {"content": "answer with </think> literal"}


@pytest.mark.parametrize(
    ("content", "finish", "expected", "flags"),
    [
        (R1, "stop", ("Okay, 2+2.\nIt is 4.\n", "The answer is **4**."), {}),
        ("Just an answer.", "stop", (None, "Just an answer."), {"reasoning_unterminated": True}),
        ("still thinking", "length", ("still thinking", None), {"reasoning_truncated": True}),
    ],
)
def test_split_message_rules(content: str, finish: str, expected: tuple, flags: dict) -> None:
    message = {"role": "assistant", "content": content}
    choice: dict[str, object] = {}
    split_message(message, choice, SPLIT, finish)
    assert (message.get("reasoning_content"), message["content"]) == expected
    assert message.get("reasoning") == expected[0]
    assert choice == flags


def test_strip_history_all_forms() -> None:
    msgs = [
        {"role": "user", "content": "<think>user text is untouched</think>"},
        {"role": "assistant", "content": "r1 style thought</think>\n\nanswer one"},
        {"role": "assistant", "content": "pre <think>x</think>\n\nanswer two"},
        {
            "role": "assistant",
            "content": "answer three",
            "reasoning_content": "t",
            "reasoning": "t",
        },
        {"role": "assistant", "content": [{"type": "text", "text": "<think>y</think>four"}]},
    ]
    out = strip_history_reasoning(msgs)
    assert out[0] == msgs[0]
    assert out[1]["content"] == "answer one"
    assert out[2]["content"] == "pre \n\nanswer two"
    assert out[3] == {"role": "assistant", "content": "answer three"}
    assert out[4]["content"] == [{"type": "text", "text": "four"}]
    assert strip_think("no tags") == "no tags"
