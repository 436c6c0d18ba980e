"""Property tests (hypothesis): any split of any input gives the same output as the unsplit
input, for the SSE decoder, the stop-text matcher and the <think> splitter; malformed profile
files always answer with key-path messages, never a traceback."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import ProfileError
from gateway.profiles import parse_profiles
from gateway.reasoning import ThinkSplitter
from gateway.sse import SSEDecoder
from gateway.stoptext import StopTextMatcher


def splits(data: Any, cuts: list[int]) -> list[Any]:
    points = sorted({min(c, len(data)) for c in cuts})
    parts, prev = [], 0
    for p in [*points, len(data)]:
        parts.append(data[prev:p])
        prev = p
    return parts


sse_line = st.one_of(
    st.builds(
        lambda t: b"data: " + t,
        st.binary(max_size=20).filter(lambda b: b"\r" not in b and b"\n" not in b),
    ),
    st.just(b": keep-alive"),
    st.just(b"event: x"),
    st.just(b""),
)
newline = st.sampled_from([b"\n", b"\r\n", b"\r"])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(sse_line, newline), max_size=12), st.lists(st.integers(0, 400), max_size=6)
)
def test_sse_decoder_split_invariant(lines: list[tuple[bytes, bytes]], cuts: list[int]) -> None:
    stream = b"".join(line + nl for line, nl in lines)
    whole = SSEDecoder()
    expected = whole.feed(stream) + whole.flush()
    parted = SSEDecoder()
    got = [e for p in splits(stream, cuts) for e in parted.feed(p)] + parted.flush()
    assert got == expected


text = st.text(alphabet=st.sampled_from(list("ab<|>/endthik｜▁ \n")), max_size=60)
stops = st.lists(
    st.text(alphabet=st.sampled_from(list("ab<|>end｜▁")), min_size=1, max_size=6),
    min_size=1,
    max_size=3,
)


@settings(max_examples=500, deadline=None)
@given(text, stops, st.lists(st.integers(0, 60), max_size=6))
def test_stop_text_split_invariant(s: str, stop_list: list[str], cuts: list[int]) -> None:
    def run(parts: list[str]) -> tuple[str, bool]:
        m = StopTextMatcher(stop_list)
        out = []
        for p in parts:
            released, hit = m.feed(p)
            out.append(released)
            if hit:
                return "".join(out), True
        tail = m.flush()  # end of input: a stop held back in the tail still counts
        return "".join(out) + tail, m.hit

    expected = run([s])
    assert run(splits(s, cuts)) == expected
    released, hit = expected
    if hit:  # what is released is exactly the text before the first occurrence of any stop
        assert released == s[: min(i for x in stop_list if (i := s.find(x)) != -1)]
    else:
        assert released == s and not any(x in s for x in stop_list)


@settings(max_examples=500, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list("ab<>/thinkx\n")), max_size=60),
    st.booleans(),
    st.lists(st.integers(0, 60), max_size=6),
)
def test_think_splitter_split_invariant(s: str, starts: bool, cuts: list[int]) -> None:
    def run(parts: list[str]) -> tuple[str, str, bool]:
        sp = ThinkSplitter(starts)
        r, c = [], []
        for p in parts:
            a, b = sp.feed(p)
            r.append(a)
            c.append(b)
        a, b = sp.flush()
        return "".join(r) + a, "".join(c) + b, sp.closed

    assert run(splits(s, cuts)) == run([s])


yaml_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**6), 10**12),
        st.floats(allow_nan=False),
        st.text(max_size=10),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
keys = st.sampled_from(
    [
        "timeouts",
        "models",
        "health",
        "limits",
        "auth",
        "backends",
        "url",
        "defaults",
        "temperature",
        "stop_token_ids",
        "prompt",
        "system",
        "reasoning",
        "variants",
        "max_tokens_limit",
        "weight",
        "junk",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        keys, st.one_of(yaml_values, st.dictionaries(keys, yaml_values, max_size=3)), max_size=4
    )
)
def test_malformed_profiles_answer_with_key_paths(doc: dict[str, Any]) -> None:
    text = yaml.safe_dump(doc)
    try:
        parse_profiles(text)
    except ProfileError as exc:
        assert exc.errors and all(isinstance(e, str) and ":" in e for e in exc.errors)
        assert not any("Traceback" in e for e in exc.errors)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_as_profile_file(raw: bytes) -> None:
    try:
        parse_profiles(raw.decode("utf-8", "replace"))
    except ProfileError as exc:
        assert exc.errors


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=6)),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
chunk_like = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "model": json_values,
        "usage": json_values,
        "error": json_values,
        "choices": st.one_of(
            json_values,
            st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "index": json_values,
                        "delta": json_values,
                        "text": json_values,
                        "finish_reason": st.one_of(
                            json_values, st.sampled_from(["stop", "abort", "length"])
                        ),
                    },
                ),
                max_size=2,
            ),
        ),
    },
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(chunk_like, json_values), max_size=6), st.booleans(), st.booleans())
def test_normalizer_survives_any_json_and_always_ends(
    chunks: list[Any], chat: bool, usage: bool
) -> None:
    import orjson

    from gateway.profiles import ReasoningRules
    from gateway.stream import StreamNormalizer

    norm = StreamNormalizer(
        public_model="m",
        endpoint="chat" if chat else "completions",
        stop_text=("<|im_end|>",),
        include_usage=usage,
        n=1,
        reasoning=ReasoningRules("think_tags", True, ("reasoning",), "split", True),
    )
    frames = [f for c in chunks for f in norm.feed(orjson.dumps(c))]
    tail = norm.close(None)
    assert tail.endswith(b"data: [DONE]\n\n")
    for frame in frames:
        assert frame.startswith(b"data: ") and frame.endswith(b"\n\n")
        orjson.loads(frame[6:-2])


# -- the normalizer's fast path is the full path, byte for byte ------------------------------

_texts = st.text(alphabet=st.sampled_from(list("ab <>/thinkx\n|｜end")), min_size=0, max_size=12)
_fields = st.sampled_from(["content", "reasoning", "reasoning_content", "text"])


@st.composite
def _upstream_chunk(draw: Any) -> dict[str, Any]:
    index = draw(st.sampled_from([0, 0, 0, 1]))
    kind = draw(st.sampled_from(["text", "text", "text", "role", "finish", "two", "usage"]))
    choice: dict[str, Any] = {"index": index, "logprobs": None, "finish_reason": None}
    if kind == "role":
        choice["delta"] = {"role": "assistant", "content": ""}
    elif kind == "two":
        choice["delta"] = {"content": draw(_texts), "reasoning": draw(_texts)}
    else:
        field = draw(_fields)
        value = draw(_texts)
        choice["delta"] = {field: value}
        choice["text"] = value
    if kind == "finish":
        choice["finish_reason"] = draw(st.sampled_from(["stop", "length", "abort"]))
    if draw(st.booleans()) and kind == "text":
        choice["logprobs"] = {"content": []}
    chunk: dict[str, Any] = {"id": "c1", "created": 1, "model": "up", "choices": [choice]}
    if kind == "usage":
        chunk["usage"] = {"completion_tokens": 3}
    return chunk


@settings(max_examples=400, deadline=None)
@given(
    st.lists(_upstream_chunk(), max_size=14),
    st.booleans(),
    st.sampled_from(["split", "hide", "inline"]),
    st.booleans(),
    st.booleans(),
    st.sampled_from([None, "idle_timeout"]),
    st.booleans(),
)
def test_fast_path_is_the_full_path(
    chunks: list[dict[str, Any]],
    chat: bool,
    mode: str,
    in_reasoning: bool,
    graceful: bool,
    cause: str | None,
    started: bool,
) -> None:
    import re

    import orjson

    from gateway.profiles import ReasoningRules
    from gateway.stream import StreamNormalizer

    if started:  # as vLLM does: a role chunk per choice first, so the fast path applies
        roles = [
            {"id": "c1", "model": "up", "choices": [{"index": i, "delta": {"role": "assistant"}}]}
            for i in (0, 1)
        ]
        chunks = roles + chunks

    def run(fast: bool) -> tuple[Any, ...]:
        norm = StreamNormalizer(
            public_model="m",
            endpoint="chat" if chat else "completions",
            stop_text=("<|im_end|>", "｜end"),
            include_usage=True,
            n=2,
            reasoning=ReasoningRules(
                "think_tags", in_reasoning, ("reasoning_content",), mode, True
            ),  # type: ignore[arg-type]
            termination="graceful" if graceful else "error",
            fast=fast,
        )
        frames = [f for c in chunks for f in norm.feed(orjson.dumps(c))]
        frames.append(norm.close(cause))
        synthesized = re.compile(
            rb'"id":"(chat)?cmpl-gateway-[0-9a-f]+","object":"([a-z._]+)","created":[0-9]+'
        )
        return (
            [synthesized.sub(b"<synthesized>", f) for f in frames],
            norm.cause,
            norm.finishes,
            norm.reasoning_chars,
            norm.usage,
            norm.stop_text_hits,
            norm.first_text_at is None,
            norm.first_content_at is None,
        )

    assert run(fast=True) == run(fast=False)
