"""The Responses API's sans-I/O parts (#15): the request transform, response ids, the
normalization of whole responses and the stream normalizer (upstream events as vLLM 0.32
makes them, from the simulator's own event generator; the client side checked with the
openai SDK's stream state machine, which refuses inconsistent streams)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import omit
from openai._models import construct_type
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent

from gateway.errors import ProfileError, RequestError
from gateway.profiles import LimitsSpec, ReasoningRules, parse_profiles
from gateway.protocol import parse_request
from gateway.responses import build_upstream_body, normalize_response
from gateway.responses_ids import ResponseIds
from gateway.responses_stream import ResponsesStreamNormalizer
from gateway.sim import R1_DEMO
from gateway.sim_items import ItemStream
from gateway.transform import check_request

EOS_TEXT = "<｜end▁of▁sentence｜>"
REASONING = "Okay, the user asks for 2 + 2. That is 4.\n"
ANSWER = "2 + 2 = **4**."
SPLIT = ReasoningRules("think_tags", True, ("reasoning_content",), "split", True)
HIDE = ReasoningRules("think_tags", True, ("reasoning_content",), "hide", True)
INLINE = ReasoningRules("think_tags", True, ("reasoning_content",), "inline", True)


def profile(extra: str = "", name: str = "r1") -> Any:
    text = f"""
models:
  {name}:
    upstream_model: up-r1
    backends: [{{url: "http://10.0.0.7:8000"}}, {{url: "http://10.0.0.8:8000"}}]
    {extra}
"""
    return parse_profiles(text).models[name]


# -- upstream events --------------------------------------------------------------------------


def upstream_events(
    tokens: list[tuple[int, str]],
    *,
    parser: bool = False,
    merge: int = 1,
    status: str = "completed",
) -> list[bytes]:
    """vLLM's Responses stream for generated ``tokens`` (parser: --reasoning-parser)."""
    machine = ItemStream(parser=parser, reasoning=parser, tool_mode=None)
    base = {"id": "resp_up", "model": "up-r1", "object": "response", "output": []}
    events: list[dict[str, Any]] = [
        {"response": {**base, "status": "in_progress"}, "type": "response.created"},
        {"response": {**base, "status": "in_progress"}, "type": "response.in_progress"},
    ]
    for i in range(0, len(tokens), merge):
        events += machine.feed(tokens[i : i + merge])
    events += machine.close()
    final = {**base, "status": status, "output": machine.items}
    final["usage"] = {"input_tokens": 7, "output_tokens": len(tokens)}
    if status == "incomplete":
        final["incomplete_details"] = {"reason": "max_output_tokens"}
    events.append({"response": final, "type": "response.completed"})
    for n, e in enumerate(events):
        e["sequence_number"] = n
    return [orjson.dumps(e) for e in events]


ANSWERED = R1_DEMO[:25]  # up to the answer's end, without the end-of-sentence run-on


def run(norm: ResponsesStreamNormalizer, payloads: list[bytes], cause: str | None = None) -> bytes:
    out = b"".join(f for p in payloads for f in norm.feed(p))
    return out + norm.close(cause)


def events_of(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for block in raw.split(b"\n\n")[:-1]:
        head, _, data = block.partition(b"\ndata: ")
        event = orjson.loads(data)
        assert head == b"event: " + event["type"].encode()
        out.append(event)
    return out


def sdk_accepts(events: list[dict[str, Any]]) -> Any:
    """The openai SDK's own stream state machine over the events; returns its final response
    (it raises on a stream whose items, ids or terminal do not add up)."""
    state = ResponseStreamState(input_tools=omit, text_format=omit)
    for e in events:
        state.handle_event(construct_type(type_=ResponseStreamEvent, value=e))
    return state._completed_response


def check_contract(events: list[dict[str, Any]]) -> dict[str, Any]:
    """created first, numbered 0.., one terminal last; done texts = the deltas. Returns the
    terminal event."""
    assert events[0]["type"] == "response.created"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    terminals = [e for e in events if e["type"] in TERMINALS]
    assert len(terminals) == 1 and events[-1] is terminals[0], [e["type"] for e in events]
    texts: dict[str, str] = {}
    for e in events:
        if e["type"] in ("response.output_text.delta", "response.reasoning_text.delta"):
            texts[e["item_id"]] = texts.get(e["item_id"], "") + e["delta"]
        elif e["type"] in ("response.output_text.done", "response.reasoning_text.done"):
            assert e["text"] == texts.get(e["item_id"], ""), e
    for item in terminals[0]["response"]["output"]:
        content = item.get("content") or []
        if item["type"] in ("message", "reasoning") and item["id"] in texts:
            assert "".join(p["text"] for p in content) == texts[item["id"]]
    assert {e["response"]["model"] for e in events if "response" in e} == {"r1"}
    return terminals[0]


TERMINALS = {"response.completed", "response.incomplete", "response.failed"}


def output_of(terminal: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (i["type"], "".join(p["text"] for p in i.get("content") or []))
        for i in terminal["response"]["output"]
    ]


# -- the request -------------------------------------------------------------------------------


def test_profile_fields_arrive_under_their_responses_names() -> None:
    p = profile(
        "defaults: {temperature: 0.6, max_tokens: 100, reasoning_effort: low}\n"
        "    overrides: {top_k: 5}\n    stop_token_ids: [151643]"
    )
    body = {"model": "r1", "input": "hi", "stop_token_ids": [7], "request_id": "mine"}
    out = build_upstream_body(body, p)
    assert out["model"] == "up-r1" and out["temperature"] == 0.6 and out["top_k"] == 5
    assert out["max_output_tokens"] == 100 and "max_tokens" not in out
    assert out["reasoning"] == {"effort": "low"} and out["stop_token_ids"] == [7, 151643]
    assert "request_id" not in out  # the gateway names each attempt's response
    assert body == {"model": "r1", "input": "hi", "stop_token_ids": [7], "request_id": "mine"}
    # the client's values win over defaults, never over overrides
    asked = {"model": "r1", "input": "x", "max_output_tokens": 9, "reasoning": {"effort": "high"}}
    out = build_upstream_body({**asked, "top_k": 1}, p)
    assert out["max_output_tokens"] == 9 and out["reasoning"] == {"effort": "high"}
    assert out["top_k"] == 5


def test_system_rule_and_leading_newline_on_input_items() -> None:
    items = [
        {"role": "developer", "content": "Be terse."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "A?"}]},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "B?"},
    ]
    body = {"model": "r1", "input": items, "instructions": "You are R1."}
    merged = build_upstream_body(body, profile("prompt: {system: merge, leading_newline: true}"))
    assert "instructions" not in merged
    assert merged["input"][0]["content"] == [
        {"type": "input_text", "text": "You are R1.\n\nBe terse.\n\nA?"}
    ]
    assert merged["input"][2] == {"role": "user", "content": "\nB?"}
    assert len(merged["input"]) == 3
    dropped = build_upstream_body(body, profile("prompt: {system: drop}"))
    assert "instructions" not in dropped and len(dropped["input"]) == 3
    kept = build_upstream_body(body, profile("prompt: {system: keep}"))
    assert kept["instructions"] == "You are R1." and kept["input"] == items
    text = build_upstream_body(
        {"model": "r1", "input": "Q", "instructions": "S"},
        profile("prompt: {system: merge, leading_newline: true}"),
    )
    assert text["input"] == "\nS\n\nQ"
    # nothing to fold into: the system text becomes the user input
    only = build_upstream_body(
        {"model": "r1", "input": [], "instructions": "S"}, profile("prompt: {system: merge}")
    )
    assert only["input"] == [{"role": "user", "content": "S"}]


def test_reasoning_history_is_removed_from_input_items() -> None:
    items = [
        {"role": "user", "content": "2+2?"},
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [],
            "content": [{"type": "reasoning_text", "text": "thinking"}],
        },
        {
            "type": "message",
            "role": "assistant",
            "reasoning_content": "old",
            "content": [{"type": "output_text", "text": "<think>hmm</think>\n\n4"}],
        },
        {"role": "assistant", "content": "so</think>\n\nfour"},
        {"role": "user", "content": "and 3+3?"},
    ]
    out = build_upstream_body({"model": "r1", "input": items}, profile("reasoning: {}"))
    assert [i.get("type") for i in out["input"]] == [None, "message", None, None]
    assert out["input"][1] == {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "4"}],
    }
    assert out["input"][2]["content"] == "four"
    kept = build_upstream_body(
        {"model": "r1", "input": items}, profile("reasoning: {strip_history: false}")
    )
    assert kept["input"] == items


def test_a_profile_cannot_set_the_requests_own_responses_fields() -> None:
    for field in ("input", "instructions", "previous_response_id"):
        with pytest.raises(ProfileError, match=field):
            profile(f"defaults: {{{field}: x}}")
    # overrides: null removes a field, under either name
    p = profile("overrides: {max_tokens: null, user: null}")
    out = build_upstream_body({"model": "r1", "input": "x", "user": "u", "max_output_tokens": 3}, p)
    assert "user" not in out and "max_output_tokens" not in out


def test_assistant_prefix_is_a_partial_assistant_message() -> None:
    out = build_upstream_body(
        {"model": "r1", "input": "hi"}, profile('prompt: {assistant_prefix: "<think>\\n"}')
    )
    assert out["input"] == [
        {"role": "user", "content": "hi"},
        {
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [{"type": "output_text", "text": "<think>\n"}],
        },
    ]


def test_strict_validation_and_what_counts_as_prompt() -> None:
    ok, chars = parse_request(
        orjson.dumps(
            {
                "model": "r1",
                "input": [{"role": "user", "content": "abcd"}],
                "instructions": "xyz",
                "vllm_extra": {"a": 1},
            }
        ),
        "responses",
    )
    assert ok["vllm_extra"] == {"a": 1} and chars >= 7
    for bad, param in [
        ({"model": "r1", "input": "x", "stream": "false"}, "stream"),
        ({"model": "r1"}, "input"),
        ({"model": "r1", "input": "x", "max_output_tokens": "5"}, "max_output_tokens"),
        (
            {"model": "r1", "input": [{"role": "user", "content": [{"type": "input_text"}]}]},
            "input.0.content.0",
        ),
        ({"model": "r1", "input": "x", "metadata": {"a": 1}}, "metadata.a"),
    ]:
        with pytest.raises(RequestError) as err:
            parse_request(orjson.dumps(bad), "responses")
        assert err.value.param == param, (bad, err.value.message)
    p = profile("max_tokens_limit: 50")
    limits = LimitsSpec(max_prompt_chars=10, max_messages=2)
    body: dict[str, Any] = {"model": "r1", "input": "hi"}
    check_request(body, "responses", p, LimitsSpec(), 2)
    assert body["max_output_tokens"] == 50 and "max_tokens" not in body
    with pytest.raises(RequestError, match="characters"):
        check_request({"model": "r1", "input": "x"}, "responses", p, limits, 11)
    with pytest.raises(RequestError, match="at most 2"):
        check_request({"model": "r1", "input": [{}, {}, {}]}, "responses", p, limits, 3)


# -- ids ---------------------------------------------------------------------------------------


def test_response_ids_name_their_backend_without_its_address() -> None:
    snapshot = parse_profiles(
        """
models:
  a: {backends: [{url: "http://10.0.0.7:8000"}, {url: "http://10.0.0.8:8000"}]}
  b: {backends: [{url: "http://10.0.0.8:8000"}]}
"""
    )
    ids = ResponseIds("k1")
    a = snapshot.models["a"]
    rid = ids.mint(a, a.backends[1])
    assert rid.startswith("resp_") and len(rid) == 53 and "10.0.0" not in rid
    assert ids.locate(snapshot, rid) == (a, a.backends[1])
    assert ResponseIds("k1").locate(snapshot, rid) == (a, a.backends[1])  # another replica
    assert ResponseIds("k2").locate(snapshot, rid) is None  # another key
    assert ids.locate(snapshot, rid.upper()) is None and ids.locate(snapshot, "resp_x") is None
    assert ids.mint(a, a.backends[1]) != rid
    # the same backend of another model is another tag; a reload keeps what it keeps
    b = snapshot.models["b"]
    assert ids.mint(b, b.backends[0])[5:21] != rid[5:21]
    reloaded = parse_profiles(
        'models:\n  a: {backends: [{url: "http://10.0.0.8:8000"}]}\n  c: {backends: '
        '[{url: "http://10.0.0.7:8000"}]}\n'
    )
    assert ids.locate(reloaded, rid) == (reloaded.models["a"], reloaded.models["a"].backends[0])
    gone = parse_profiles('models:\n  a: {backends: [{url: "http://10.0.0.9:8000"}]}\n')
    assert ids.locate(gone, rid) is None


# -- whole responses ---------------------------------------------------------------------------


def whole(text: str, status: str = "completed", reasoning: str | None = None) -> dict[str, Any]:
    output: list[dict[str, Any]] = []
    if reasoning is not None:
        output.append(
            {
                "id": "rs_u",
                "summary": [],
                "type": "reasoning",
                "content": [{"text": reasoning, "type": "reasoning_text"}],
            }
        )
    output.append(
        {
            "id": "msg_u",
            "role": "assistant",
            "status": "completed",
            "type": "message",
            "content": [{"annotations": [], "text": text, "type": "output_text"}],
        }
    )
    return {
        "id": "resp_up",
        "model": "up-r1",
        "status": status,
        "output": output,
        "incomplete_details": {"reason": "max_output_tokens"} if status != "completed" else None,
    }


def test_whole_response_split_stop_text_and_model() -> None:
    raw = "".join(t for _, t in R1_DEMO)
    p = profile(f'stop_text: ["{EOS_TEXT}"]\n    reasoning: {{starts_in_reasoning: true}}')
    out = normalize_response(whole(raw, "incomplete"), p)
    assert out["model"] == "r1" and out["status"] == "completed"
    assert out["incomplete_details"] is None and out["gateway_termination"] == "stop_text"
    assert [(i["type"], i["content"][0]["text"]) for i in out["output"]] == [
        ("reasoning", REASONING),
        ("message", ANSWER),
    ]
    hidden = normalize_response(
        whole(raw), profile("reasoning: {starts_in_reasoning: true, mode: hide}")
    )
    assert [i["type"] for i in hidden["output"]] == ["message"]
    # vLLM split it already: passed on, the answer without the newlines after </think>
    up = normalize_response(whole("\n\n4", reasoning="r"), profile("reasoning: {}"))
    assert [(i["type"], i["content"][0]["text"]) for i in up["output"]] == [
        ("reasoning", "r"),
        ("message", "4"),
    ]
    up_hidden = normalize_response(
        whole("\n\n4", reasoning="r"), profile("reasoning: {mode: hide}")
    )
    assert [i["type"] for i in up_hidden["output"]] == ["message"]


def test_whole_response_that_never_closed_its_think_block() -> None:
    p = profile("reasoning: {starts_in_reasoning: true}")
    answered = normalize_response(whole("just 4"), p)  # completed: the text is the answer
    assert [(i["type"], i["content"][0]["text"]) for i in answered["output"]] == [
        ("message", "just 4")
    ]
    cut = normalize_response(whole("still thinking", "incomplete"), p)
    assert [(i["type"], i["content"][0]["text"]) for i in cut["output"]] == [
        ("reasoning", "still thinking")
    ]


# -- the stream --------------------------------------------------------------------------------


@pytest.mark.parametrize("merge", [1, 2, 3, 7, 25])
@pytest.mark.parametrize("parser", [False, True])
def test_stream_splits_reasoning_into_an_item_whatever_the_chunking(
    merge: int, parser: bool
) -> None:
    norm = ResponsesStreamNormalizer(public_model="r1", reasoning=SPLIT)
    events = events_of(run(norm, upstream_events(ANSWERED, parser=parser, merge=merge)))
    terminal = check_contract(events)
    assert terminal["type"] == "response.completed"
    assert output_of(terminal) == [("reasoning", REASONING), ("message", ANSWER)]
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [(e["output_index"], e["item"]["type"]) for e in added] == [
        (0, "reasoning"),
        (1, "message"),
    ]
    final = sdk_accepts(events)
    assert final.output_text == ANSWER and final.model == "r1"
    assert norm.saw_done and norm.cause is None and norm.reasoning_chars == len(REASONING)
    assert norm.usage == {
        "prompt_tokens": 7,
        "completion_tokens": len(ANSWERED),
        "completion_tokens_details": {"reasoning_tokens": None},
    }


def test_stream_hide_drops_reasoning_and_renumbers_items() -> None:
    for parser in (False, True):
        norm = ResponsesStreamNormalizer(public_model="r1", reasoning=HIDE)
        events = events_of(run(norm, upstream_events(ANSWERED, parser=parser)))
        terminal = check_contract(events)
        assert output_of(terminal) == [("message", ANSWER)]
        assert {e.get("output_index") for e in events if "output_index" in e} == {0}
        assert sdk_accepts(events).output_text == ANSWER
        assert norm.reasoning_chars == len(REASONING)


def test_stream_inline_leaves_the_text_alone() -> None:
    norm = ResponsesStreamNormalizer(public_model="r1", reasoning=INLINE)
    events = events_of(run(norm, upstream_events(ANSWERED)))
    assert output_of(check_contract(events)) == [("message", "".join(t for _, t in ANSWERED))]


@pytest.mark.parametrize("merge", [1, 2, 3, 4, 5, 9])
def test_stop_text_split_across_deltas_ends_the_response(merge: int) -> None:
    norm = ResponsesStreamNormalizer(public_model="r1", stop_text=(EOS_TEXT,), reasoning=SPLIT)
    raw = run(norm, upstream_events(R1_DEMO, merge=merge))
    events = events_of(raw)
    terminal = check_contract(events)
    sent = "".join(e.get("delta", "") + e.get("text", "") for e in events)
    assert EOS_TEXT not in sent and "Thanks" not in sent and b"Thanks" not in raw
    assert terminal["response"]["stop_reason"] == EOS_TEXT  # which stop string, as chat says
    assert terminal["type"] == "response.completed"
    assert terminal["response"]["gateway_termination"] == "stop_text"
    assert output_of(terminal) == [("reasoning", REASONING), ("message", ANSWER)]
    assert norm.ended == "stop_text" and norm.stop_text_hits == 1
    assert sdk_accepts(events).output_text == ANSWER


def test_incomplete_ends_with_response_incomplete() -> None:
    norm = ResponsesStreamNormalizer(public_model="r1")
    events = events_of(run(norm, upstream_events(R1_DEMO[:5], status="incomplete")))
    terminal = check_contract(events)
    assert terminal["type"] == "response.incomplete"
    assert terminal["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert norm.finishes == [("length", "length")]


def test_unterminated_thinking_that_completed_is_the_answer() -> None:
    tokens = [(1, "just"), (2, " 4")]
    norm = ResponsesStreamNormalizer(public_model="r1", reasoning=SPLIT)
    events = events_of(run(norm, upstream_events(tokens)))
    assert output_of(check_contract(events)) == [("reasoning", "just 4"), ("message", "just 4")]
    assert sdk_accepts(events).output_text == "just 4"
    norm = ResponsesStreamNormalizer(public_model="r1", reasoning=SPLIT)
    events = events_of(run(norm, upstream_events(tokens, status="incomplete")))
    assert output_of(check_contract(events)) == [("reasoning", "just 4")]


def test_a_second_terminal_and_anything_after_it_are_dropped() -> None:
    payloads = upstream_events(ANSWERED)
    norm = ResponsesStreamNormalizer(public_model="r1")
    events = events_of(run(norm, [*payloads, payloads[-1], payloads[3]]))
    check_contract(events)


@pytest.mark.parametrize("termination", ["error", "graceful"])
@pytest.mark.parametrize(
    "cause", ["idle_timeout", "total_timeout", "upstream_disconnect", "shutdown"]
)
def test_a_cut_stream_ends_failed_or_incomplete(termination: Any, cause: str) -> None:
    cut = upstream_events(R1_DEMO)[:28]  # inside the answer, before its end
    norm = ResponsesStreamNormalizer(
        public_model="r1", reasoning=SPLIT, stop_text=(EOS_TEXT,), termination=termination
    )
    events = events_of(run(norm, cut, cause))
    terminal = check_contract(events)
    response = terminal["response"]
    if termination == "error":
        assert terminal["type"] == "response.failed" and response["status"] == "failed"
        code = {"shutdown": "server_shutting_down"}.get(cause, cause)
        assert response["error"]["code"] == code and response["error"]["message"]
        assert norm.finishes == [(None, "error")]
    else:
        assert terminal["type"] == "response.incomplete"
        assert response["incomplete_details"] == {"reason": cause}
        assert [i["status"] for i in response["output"]] == ["completed", "incomplete"]
        sdk_accepts(events)
        assert norm.finishes == [(None, "length")]
    assert norm.cause == cause
    assert output_of(terminal)[0] == ("reasoning", REASONING)


def test_broken_upstream_events_end_failed() -> None:
    good = upstream_events(ANSWERED)
    for bad in [b'{"broken": [', b"[1]", b'{"type": "x\\nevent: y"}', b'{"type": 3}']:
        norm = ResponsesStreamNormalizer(public_model="r1")
        events = events_of(run(norm, [*good[:6], bad, *good[6:]]))
        terminal = check_contract(events)
        assert terminal["type"] == "response.failed"
        assert terminal["response"]["error"]["code"] == "upstream_protocol_error"
        assert norm.ended == "upstream_error"
    norm = ResponsesStreamNormalizer(public_model="r1")
    error = orjson.dumps({"type": "error", "code": "overloaded", "message": "busy"})
    terminal = check_contract(events_of(run(norm, [*good[:6], error, *good[6:]])))
    assert terminal["response"]["error"] == {"code": "overloaded", "message": "busy"}
    # an item event before response.created: the client still gets created first
    norm = ResponsesStreamNormalizer(public_model="r1")
    assert check_contract(events_of(run(norm, good[2:])))["type"] == "response.failed"
    norm = ResponsesStreamNormalizer(public_model="r1")
    assert check_contract(events_of(norm.protocol_error("too large") + norm.close(None)))


def test_an_upstream_that_never_stops_opening_items_is_cut() -> None:
    good = upstream_events(ANSWERED)
    added = {
        "item": {"id": "fc", "type": "function_call", "arguments": ""},
        "output_index": 0,
        "type": "response.output_item.added",
    }
    flood = [orjson.dumps({**added, "output_index": i}) for i in range(5000)]
    norm = ResponsesStreamNormalizer(public_model="r1")
    terminal = check_contract(events_of(run(norm, [*good[:2], *flood])))
    assert terminal["response"]["error"]["code"] == "upstream_protocol_error"
    assert len(terminal["response"]["output"]) == 4096
    norm = ResponsesStreamNormalizer(public_model="r1", max_chars=10)
    terminal = check_contract(events_of(run(norm, good)))
    assert terminal["response"]["error"]["code"] == "upstream_protocol_error"


@pytest.mark.parametrize("after", [0, 1, 5, 20, 34, 35, 100])
def test_a_resumed_stream_is_the_tail_of_the_same_stream(after: int) -> None:
    payloads = upstream_events(R1_DEMO)
    full = events_of(
        run(
            ResponsesStreamNormalizer(public_model="r1", reasoning=SPLIT, stop_text=(EOS_TEXT,)),
            payloads,
        )
    )
    norm = ResponsesStreamNormalizer(
        public_model="r1", reasoning=SPLIT, stop_text=(EOS_TEXT,), starting_after=after
    )
    assert events_of(run(norm, payloads)) == full[after + 1 :]


RULES = [None, SPLIT, HIDE, INLINE]
STOPS: list[tuple[str, ...]] = [(), (EOS_TEXT,), ("**", "<｜")]
DEMO_TEXT = "".join(t for _, t in R1_DEMO)


@pytest.mark.parametrize("rules", RULES)
@pytest.mark.parametrize("stop", STOPS)
def test_every_split_point_gives_the_same_stream(rules: Any, stop: Any) -> None:
    for cut in range(1, len(DEMO_TEXT)):
        check_split(DEMO_TEXT, [cut], rules, stop)
        check_split(DEMO_TEXT, [cut, cut + 5], rules, stop)  # a short delta after the cut


@settings(max_examples=150, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=len(DEMO_TEXT) - 1), max_size=12),
    rules=st.sampled_from(RULES),
    stop=st.sampled_from(STOPS),
)
def test_the_fast_path_changes_nothing(cuts: list[int], rules: Any, stop: Any) -> None:
    check_split(DEMO_TEXT, cuts, rules, stop)


def check_split(text: str, cuts: list[int], rules: Any, stop: Any) -> None:
    """A split of the text into deltas: byte-identical output with and without the fast
    path, and the same client text as one delta gives."""
    points = sorted({c for c in cuts if c < len(text)})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    payloads = upstream_events([(i, p) for i, p in enumerate(pieces)])
    fast = ResponsesStreamNormalizer(public_model="r1", stop_text=stop, reasoning=rules)
    slow = ResponsesStreamNormalizer(public_model="r1", stop_text=stop, reasoning=rules)
    slow._special = lambda text: True  # every delta takes the full path
    out = run(fast, payloads)
    assert out == run(slow, payloads)
    whole = ResponsesStreamNormalizer(public_model="r1", stop_text=stop, reasoning=rules)
    single = events_of(run(whole, upstream_events([(1, text)])))
    assert output_of(check_contract(events_of(out))) == output_of(check_contract(single))


def test_the_client_gets_nothing_after_it_left() -> None:
    norm = ResponsesStreamNormalizer(public_model="r1")
    run(norm, upstream_events(ANSWERED)[:8])
    assert norm.close("client_disconnect") == b"" and norm.close("idle_timeout") == b""
