from __future__ import annotations

import pytest

from gateway.stoptext import StopTextMatcher

STOP = "<｜end▁of▁sentence｜>"


def run(stops: list[str], parts: list[str]) -> tuple[str, bool, str | None]:
    m = StopTextMatcher(stops)
    out = []
    for p in parts:
        text, hit = m.feed(p)
        out.append(text)
        if hit:
            return "".join(out), True, m.matched
    out.append(m.flush())
    return "".join(out), False, None


TEXT = "The answer is 4." + STOP + "<｜User｜>more"


@pytest.mark.parametrize("split", range(len(TEXT) + 1))
def test_stop_text_every_split_point(split: int) -> None:
    assert run([STOP], [TEXT[:split], TEXT[split:]]) == ("The answer is 4.", True, STOP)


@pytest.mark.parametrize("split", range(len(TEXT) + 1))
def test_stop_text_three_way_splits(split: int) -> None:
    for second in range(split, len(TEXT) + 1, 3):
        parts = [TEXT[:split], TEXT[split:second], TEXT[second:]]
        assert run([STOP], parts)[0] == "The answer is 4."


def test_character_by_character_and_nothing_after_hit() -> None:
    m = StopTextMatcher([STOP])
    released = ""
    for ch in TEXT:
        text, _ = m.feed(ch)
        released += text
    assert released == "The answer is 4." and m.hit
    assert m.feed("x") == ("", True) and m.flush() == ""


def test_earliest_of_several_stops_wins() -> None:
    assert run(["<|im_end|>", "<|endoftext|>"], ["a<|endoftext|>b<|im_end|>"]) == (
        "a",
        True,
        "<|endoftext|>",
    )


def test_only_a_possible_prefix_is_held_back() -> None:
    m = StopTextMatcher(["<|im_end|>"])
    assert m.feed("x <|im") == ("x ", False)  # "<|im" could start the stop string
    assert m.feed("portant") == ("<|important", False)  # it did not: released at once
    assert m.feed("no angle bracket") == ("no angle bracket", False)


def test_partial_prefix_released_on_flush() -> None:
    assert run(["<|im_end|>"], ["ends with <|im_e"]) == ("ends with <|im_e", False, None)


def test_empty_stop_rejected() -> None:
    with pytest.raises(ValueError):
        StopTextMatcher([""])


def test_overlapping_stops_exhaustively() -> None:
    """Every string up to 5 characters over a small alphabet, with pairs of overlapping stop
    strings, split in up to three parts: the released text is exactly the text before the
    earliest-starting stop (a later-starting stop found first must not win while an earlier
    one may still be completing; found by hypothesis)."""
    import itertools

    def run(parts: list[str], stops: list[str]) -> tuple[str, bool]:
        m = StopTextMatcher(stops)
        out = []
        for p in parts:
            released, hit = m.feed(p)
            out.append(released)
            if hit:
                return "".join(out), True
        tail = m.flush()
        return "".join(out) + tail, m.hit

    pool = ["<", ">", "<>", "><", ">a", "a<", "<<>", "><>", "b><"]
    for length in range(1, 6):
        for s in map("".join, itertools.product("ab<>", repeat=length)):
            for stops in map(list, itertools.combinations(pool, 2)):
                first = min((i for x in stops if (i := s.find(x)) != -1), default=None)
                want = (s[:first], True) if first is not None else (s, False)
                assert run([s], stops) == want, (s, stops)
                for i in range(1, length):
                    for j in range(i, length):
                        assert run([s[:i], s[i:j], s[j:]], stops) == want, (s, stops, i, j)
