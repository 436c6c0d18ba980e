"""The Responses API through the gateway (#15), with the openai SDK, against simulated vLLM
servers (vLLM 0.32's Responses API and store): the profile applies, the stream contract in
the Responses dialect holds whatever the upstream does, stored responses are found on the
backend that holds them (also from another replica, after a reload; 404 when it is gone),
and the same front door as chat: keys, per-key models, limits, metrics, headers."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.helpers import (
    GatewayServer,
    SimProcess,
    run_gateway,
    run_raw_backend,
    run_sim,
    scrape,
    value,
    wait_for,
)

EOS = 151643
EOS_TEXT = "<｜end▁of▁sentence｜>"
REASONING = "Okay, the user asks for 2 + 2. That is 4.\n"
ANSWER = "2 + 2 = **4**."
KEY = "sk-responses"
PLAIN_KEY = "sk-plain-only"
TERMINALS = {"response.completed", "response.incomplete", "response.failed"}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, SimProcess]]:
    """Two stores (one model on both) and one with vLLM's reasoning parser."""
    with (
        run_sim(["sim-r1"], "--enable-responses-store") as a,
        run_sim(["sim-r1"], "--enable-responses-store") as b,
        run_sim(["sim-r1"], "--enable-responses-store", "--reasoning-parser", "deepseek_r1") as c,
    ):
        yield {"a": a, "b": b, "split": c}


def profiles_yaml(sims: dict[str, SimProcess], keys: Path) -> str:
    a, b, split = sims["a"].url, sims["b"].url, sims["split"].url
    r1 = f"""
    upstream_model: sim-r1
    stop_token_ids: [{EOS}]
    stop_text: ["{EOS_TEXT}"]
    reasoning: {{starts_in_reasoning: true}}"""
    return f"""
auth: {{keys_file: {keys}}}
timeouts: {{connect: 2, first_token: 10, idle: 10, total: 30}}
limits: {{max_prompt_chars: 3000, max_messages: 12}}
models:
  r1:
    backends: [{{url: "{a}", name: a}}, {{url: "{b}", name: b}}]{r1}
    defaults: {{temperature: 0.6, max_tokens: 300}}
    overrides: {{top_k: 20}}
    prompt: {{leading_newline: true, system: merge}}
    variants:
      short: {{max_tokens_limit: 4}}
  r1-hide:
    backends: [{{url: "{a}"}}]{r1}
    reasoning: {{starts_in_reasoning: true, mode: hide}}
    timeouts: {{heartbeat: 0.2}}
  r1-text:
    upstream_model: sim-r1
    backends: [{{url: "{a}"}}]
    stop_text: ["{EOS_TEXT}"]
    reasoning: {{starts_in_reasoning: true}}
  r1-split:
    upstream_model: sim-r1
    backends: [{{url: "{split}"}}]
    stop_token_ids: [{EOS}]
    reasoning: {{}}
  r1-split-hide:
    upstream_model: sim-r1
    backends: [{{url: "{split}"}}]
    stop_token_ids: [{EOS}]
    reasoning: {{mode: hide}}
  hasty:
    backends: [{{url: "{a}"}}]{r1}
    timeouts: {{first_token: 0.6, idle: 0.6, total: 8}}
  hasty-graceful:
    backends: [{{url: "{a}"}}]{r1}
    timeouts: {{first_token: 0.6, idle: 0.6, total: 8}}
    stream_termination: graceful
  plain:
    upstream_model: sim-r1
    backends: [{{url: "{a}"}}]
"""


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.sha256"
    path.write_text(f"{sha(KEY)}\n{sha(PLAIN_KEY)} plain\n")
    return path


@pytest.fixture(scope="module")
def gw(sims: dict[str, SimProcess], keys_file: Path) -> Iterator[GatewayServer]:
    with run_gateway(profiles_yaml(sims, keys_file), response_id_key="k-test") as g:
        yield g


@pytest.fixture
def client(gw: GatewayServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0, timeout=15) as c:
        yield c


def reset(sims: dict[str, SimProcess]) -> None:
    for s in sims.values():
        s.reset()


def received(sims: dict[str, SimProcess], name: str) -> list[dict[str, Any]]:
    return [r for r in sims[name].requests() if "input" in r]


def stream_events(client: openai.OpenAI, **kwargs: Any) -> list[Any]:
    """``responses.create(stream=True)``, every event as the SDK parsed it."""
    return list(client.responses.create(stream=True, **kwargs))


def check_stream(events: list[Any]) -> Any:
    """The Responses stream contract on SDK events; returns the terminal event."""
    assert events[0].type == "response.created"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    terminals = [e for e in events if e.type in TERMINALS]
    assert len(terminals) == 1 and terminals[0] is events[-1], [e.type for e in events]
    assert {e.response.model for e in events if hasattr(e, "response")} == {
        events[0].response.model
    }
    assert {e.response.id for e in events if hasattr(e, "response")} == {events[0].response.id}
    return terminals[0]


def text_of(events: list[Any]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


# -- the profile applies ----------------------------------------------------------------------


def test_create_applies_the_profile(
    gw: GatewayServer, client: openai.OpenAI, sims: dict[str, SimProcess]
) -> None:
    reset(sims)
    raw = client.responses.with_raw_response.create(
        model="r1",
        instructions="Be brief.",
        input=[
            {"role": "developer", "content": "Answer in English."},
            {"role": "user", "content": "2+2?"},
        ],
        temperature=0.2,
        extra_body={"vllm_field": 1},
        extra_headers={"x-request-id": "req-responses-1"},
    )
    r = raw.parse()
    assert raw.headers["x-request-id"] == "req-responses-1"
    assert raw.headers["x-gateway-profile-version"] == gw.gateway.profiles.version
    backend = raw.headers["x-gateway-backend"]
    (sent,) = received(sims, backend)
    assert sent["model"] == "sim-r1" and sent["stop_token_ids"] == [EOS]
    assert sent["temperature"] == 0.2 and sent["max_output_tokens"] == 300
    assert sent["top_k"] == 20 and sent["vllm_field"] == 1
    assert "instructions" not in sent
    assert sent["input"] == [
        {"role": "user", "content": "\nBe brief.\n\nAnswer in English.\n\n2+2?"}
    ]
    assert sent["request_id"] == r.id  # the gateway names the response
    assert r.model == "r1" and r.status == "completed"
    assert [o.type for o in r.output] == ["reasoning", "message"]
    assert r.output[0].content[0].text == REASONING  # type: ignore[union-attr,index]
    assert r.output_text == ANSWER


def test_stream_with_the_sdk_helper_and_raw_events(
    client: openai.OpenAI, sims: dict[str, SimProcess]
) -> None:
    with client.responses.stream(model="r1", input="2+2?") as stream:
        seen = list(stream)
        final = stream.get_final_response()
    assert final.output_text == ANSWER and final.model == "r1"
    assert [o.type for o in final.output] == ["reasoning", "message"]
    events = stream_events(client, model="r1", input="2+2?")
    terminal = check_stream(events)
    assert terminal.type == "response.completed" and text_of(events) == ANSWER
    reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert reasoning == REASONING
    assert len(seen) >= len(events) - 1  # the helper adds its own events, never loses any


def test_stop_text_is_never_sent_and_ends_the_response(
    client: openai.OpenAI, sims: dict[str, SimProcess]
) -> None:
    reset(sims)
    # no stop id: the simulated R1 runs on into the end-of-sentence text, then stalls
    slow = {"sim": {"stall_after": 27, "stall_for": 30}}
    t0 = time.monotonic()
    events = stream_events(client, model="r1-text", input="2+2?", extra_body=slow)
    assert time.monotonic() - t0 < 8  # ended by the guard, not by a timeout
    terminal = check_stream(events)
    assert terminal.type == "response.completed" and text_of(events) == ANSWER
    assert terminal.response.output_text == ANSWER
    wait_for(lambda: sims["a"].stats()["cancelled"] >= 1, "the upstream stream to be closed")
    r = client.responses.create(model="r1-text", input="2+2?")
    assert r.output_text == ANSWER and r.status == "completed"


def test_reasoning_split_by_vllm_passes_or_hides(client: openai.OpenAI) -> None:
    for model, kinds in (("r1-split", ["reasoning", "message"]), ("r1-split-hide", ["message"])):
        r = client.responses.create(model=model, input="2+2?")
        assert [o.type for o in r.output] == kinds and r.output_text == ANSWER, model
        events = stream_events(client, model=model, input="2+2?")
        terminal = check_stream(events)
        assert [o.type for o in terminal.response.output] == kinds
        assert text_of(events) == ANSWER  # the newlines vLLM leaves after </think> are gone
        indexes = sorted({e.output_index for e in events if hasattr(e, "output_index")})
        assert indexes == list(range(len(kinds)))


def test_hidden_reasoning_keeps_the_stream_alive_with_heartbeats(gw: GatewayServer) -> None:
    body = {"model": "r1-hide", "input": "2+2?", "stream": True, "sim": {"token_delay": 0.08}}
    raw = httpx.post(
        gw.base_url + "/responses",
        json=body,
        headers={"authorization": f"Bearer {KEY}"},
        timeout=15,
    ).content
    assert b": keep-alive\n\n" in raw
    events = [
        json.loads(block.split("data: ", 1)[1])
        for block in raw.decode().split("\n\n")
        if "data: " in block
    ]
    assert not [e for e in events if "reasoning" in e["type"]]
    assert [i["type"] for i in events[-1]["response"]["output"]] == ["message"]


def test_max_output_tokens_ends_incomplete(client: openai.OpenAI) -> None:
    r = client.responses.create(model="plain", input="2+2?", max_output_tokens=3)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"  # type: ignore[union-attr]
    events = stream_events(client, model="plain", input="2+2?", max_output_tokens=3)
    terminal = check_stream(events)
    assert terminal.type == "response.incomplete"  # vLLM says response.completed
    # a variant's limit clamps max_output_tokens
    short = client.responses.create(model="r1:short", input="2+2?", max_output_tokens=100)
    assert short.max_output_tokens == 4 and short.status == "incomplete"


# -- conversations on the backend that stores them --------------------------------------------


def test_previous_response_id_stays_on_its_backend(
    client: openai.OpenAI, sims: dict[str, SimProcess]
) -> None:
    reset(sims)
    first = client.responses.create(model="r1", input="2+2?")
    backends = set()
    previous = first.id
    for turn in range(6):  # unpinned, the two backends would share these turns
        kwargs: dict[str, Any] = {"model": "r1", "input": f"turn {turn}"}
        if turn % 2:
            events = stream_events(client, previous_response_id=previous, **kwargs)
            response = check_stream(events).response
        else:
            response = client.responses.create(previous_response_id=previous, **kwargs)
        assert response.previous_response_id == previous
        previous = response.id
    for name in ("a", "b"):
        if received(sims, name):
            backends.add(name)
    assert len(backends) == 1, "a conversation moved between backends"
    (name,) = backends
    got = received(sims, name)
    assert [r.get("previous_response_id") for r in got[1:]] == [r["request_id"] for r in got[:-1]]
    # the stored history reached the model: the last prompt counts every turn
    assert client.responses.retrieve(previous).usage.input_tokens > 20  # type: ignore[union-attr]


def test_explicit_input_items_carry_the_conversation(
    client: openai.OpenAI, sims: dict[str, SimProcess]
) -> None:
    reset(sims)
    first = client.responses.create(model="r1", input="2+2?", store=False)
    history: list[Any] = [{"role": "user", "content": "2+2?"}]
    history += [item.model_dump(exclude_none=True) for item in first.output]
    history.append({"role": "user", "content": "and 3+3?"})
    second = client.responses.create(model="r1", input=history, store=False)
    assert second.output_text == ANSWER
    (sent,) = [r for n in ("a", "b") for r in received(sims, n) if isinstance(r["input"], list)]
    assert [i.get("type", "message") for i in sent["input"]] == ["message"] * 3
    assert sent["input"][1]["content"][0]["text"] == ANSWER  # its reasoning was not sent back
    assert sent["input"][2]["content"] == "\nand 3+3?"


def test_retrieve_and_cancel(client: openai.OpenAI, gw: GatewayServer) -> None:
    r = client.responses.create(model="r1", input="2+2?")
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.model == "r1" and got.output_text == ANSWER
    assert [o.type for o in got.output] == ["reasoning", "message"]
    with pytest.raises(openai.BadRequestError, match="Cannot cancel a synchronous response"):
        client.responses.cancel(r.id)
    slow = client.responses.create(
        model="r1", input="hi", background=True, extra_body={"sim": {"first_token_delay": 30}}
    )
    assert slow.status == "queued" and slow.model == "r1"
    cancelled = client.responses.cancel(slow.id)
    assert cancelled.status == "cancelled" and cancelled.model == "r1"
    assert client.responses.retrieve(slow.id).status == "cancelled"
    done = client.responses.create(model="r1", input="hi", background=True)
    wait_for(lambda: client.responses.retrieve(done.id).status == "completed", "background end")
    for unknown in ("resp_" + "0" * 48, "resp_nope", "x" * 300):
        with pytest.raises(openai.NotFoundError) as err:
            client.responses.retrieve(unknown)
        assert err.value.body["code"] == "response_not_found"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="r1", input="x", previous_response_id="resp_" + "1" * 48)
    r = httpx.get(gw.base_url + f"/responses/{got.id}?stream=true", headers=auth())
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream"
    for method, path in (
        ("DELETE", f"/responses/{got.id}"),
        ("GET", f"/responses/{got.id}/cancel"),
    ):
        r = httpx.request(method, gw.base_url + path, headers=auth())
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
        assert r.headers["x-gateway-profile-version"] == gw.gateway.profiles.version


def test_a_background_stream_resumes_where_it_left(client: openai.OpenAI) -> None:
    first: list[Any] = []
    slow = {"sim": {"token_delay": 0.05}}
    with client.responses.create(
        model="r1", input="2+2?", background=True, stream=True, extra_body=slow
    ) as stream:
        for event in stream:
            first.append(event)
            if len(first) == 12:
                break  # the connection is lost; the background response goes on
    response_id = first[0].response.id
    rest = list(
        client.responses.retrieve(
            response_id, stream=True, starting_after=first[-1].sequence_number
        )
    )
    whole = first + rest
    terminal = check_stream(whole)
    assert terminal.type == "response.completed" and text_of(whole) == ANSWER
    reasoning = "".join(e.delta for e in whole if e.type == "response.reasoning_text.delta")
    assert reasoning == REASONING
    # from the start again: the very same events, numbers and ids
    again = list(client.responses.retrieve(response_id, stream=True))
    assert [e.model_dump() for e in again] == [e.model_dump() for e in whole]
    bad = httpx.get(
        f"{client.base_url}responses/{response_id}?stream=true&starting_after=-1", headers=auth()
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "starting_after"


def auth(key: str = KEY) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_another_replica_finds_the_response_a_reload_keeps_it(
    gw: GatewayServer, sims: dict[str, SimProcess], keys_file: Path, tmp_path: Path
) -> None:
    with openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0, timeout=10) as c:
        r = c.responses.create(model="r1", input="2+2?")
    text = profiles_yaml(sims, keys_file)
    # another replica with the same key and profiles: the same backend, stateless
    with run_gateway(text, response_id_key="k-test") as other:
        got = httpx.get(f"{other.base_url}/responses/{r.id}", headers=auth())
        assert got.status_code == 200 and got.json()["id"] == r.id
        turn = httpx.post(
            other.base_url + "/responses",
            headers=auth(),
            json={"model": "r1", "input": "more", "previous_response_id": r.id},
        )
        assert turn.status_code == 200, turn.text
    with run_gateway(text, response_id_key="another-key") as stranger:
        got = httpx.get(f"{stranger.base_url}/responses/{r.id}", headers=auth())
        assert got.status_code == 404
    # a reload that keeps the model and its backend keeps the id; one without them: 404
    config = tmp_path / "profiles.yaml"
    config.write_text(text)
    with run_gateway(config=config, response_id_key="k-test", watch=False, admin_token="adm") as g:

        def reload(new: str) -> None:
            config.write_text(new)
            answer = httpx.post(g.url + "/admin/reload", headers=auth("adm"))
            assert answer.status_code == 200, answer.text

        first = httpx.get(f"{g.base_url}/responses/{r.id}", headers=auth())
        assert first.status_code == 200
        backend = first.headers["x-gateway-backend"]
        reload(text + "\n# a change elsewhere\n")
        assert httpx.get(f"{g.base_url}/responses/{r.id}", headers=auth()).status_code == 200
        entry = f'{{url: "{sims[backend].url}", name: {backend}}}'
        without = text.replace(entry + ", ", "").replace(", " + entry, "")
        assert without != text
        reload(without)
        gone = httpx.get(f"{g.base_url}/responses/{r.id}", headers=auth())
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "response_not_found"


def test_a_key_sees_only_its_models_responses(gw: GatewayServer, client: openai.OpenAI) -> None:
    r = client.responses.create(model="r1", input="2+2?")
    for path in (f"/responses/{r.id}", f"/responses/{r.id}/cancel"):
        method = "GET" if path.endswith(r.id) else "POST"
        answer = httpx.request(method, gw.base_url + path, headers=auth(PLAIN_KEY))
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["code"] == "response_not_found"
        assert httpx.request(method, gw.base_url + path).status_code == 401
    with openai.OpenAI(base_url=gw.base_url, api_key=PLAIN_KEY, max_retries=0) as plain:
        with pytest.raises(openai.NotFoundError):
            plain.responses.create(model="r1", input="x")
        with pytest.raises(openai.NotFoundError, match="not found"):
            plain.responses.create(model="plain", input="x", previous_response_id=r.id)
        assert (
            plain.responses.create(model="plain", input="x", max_output_tokens=2).model == "plain"
        )


# -- the front door -----------------------------------------------------------------------------


def test_validation_and_limits(gw: GatewayServer, sims: dict[str, SimProcess]) -> None:
    reset(sims)
    url = gw.base_url + "/responses"
    for body, param in [
        ({"model": "r1", "input": "x", "stream": "false"}, "stream"),
        ({"model": "r1"}, "input"),
        ({"model": "r1", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "r1", "input": "x", "temperature": "0.5"}, "temperature"),
        ({"model": "r1", "input": [{"role": "user", "content": 5}]}, "input.0.content"),
        ({"model": "r1", "input": "x" * 3001}, "input"),
        ({"model": "r1", "input": "x", "instructions": "y" * 3000}, "input"),
        ({"model": "r1", "input": [{"role": "user", "content": "x"}] * 13}, "input"),
        # the field policy, as for chat: vLLM's id is the gateway's to choose
        ({"model": "r1", "input": "x", "request_id": "mine"}, "request_id"),
        (
            {"model": "r1", "input": "x", "enable_response_messages": True},
            "enable_response_messages",
        ),
        (
            {
                "model": "r1",
                "input": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_image", "image_url": "http://169.254.169.254/x"}
                        ],
                    }
                ],
            },
            "input.0.content.0.image_url",
        ),
    ]:
        r = httpx.post(url, json=body, headers=auth())
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["param"] == param, (param, r.text)
        assert r.headers["x-gateway-profile-version"]
    assert httpx.post(url, json={"model": "nope", "input": "x"}, headers=auth()).status_code == 404
    assert not received(sims, "a") and not received(sims, "b")  # nothing reached a backend


def test_metrics_and_access_log(
    gw: GatewayServer, client: openai.OpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    before = scrape(gw.url)
    with caplog.at_level("INFO", logger="gateway.access"):
        client.responses.create(model="plain", input="2+2?", max_output_tokens=5)
        stream_events(client, model="plain", input="2+2?")
    after = scrape(gw.url)
    for stream in ("true", "false"):
        delta = value(after, "gateway_requests_total", model="plain", stream=stream, code="200")
        delta -= value(before, "gateway_requests_total", model="plain", stream=stream, code="200")
        assert delta == 1, stream
    tokens = value(after, "gateway_tokens_total", model="plain", kind="completion")
    assert tokens > value(before, "gateway_tokens_total", model="plain", kind="completion")
    assert value(after, "gateway_in_flight_requests", model="plain") == 0
    lines = [r.getMessage() for r in caplog.records if "endpoint=responses" in r.getMessage()]
    assert len(lines) == 2 and all("model=plain" in line for line in lines)
    assert all("2+2" not in line for line in lines)


def test_a_backend_without_the_route_is_a_clear_404(gw: GatewayServer) -> None:
    answer = (
        b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 22\r\n"
        b'connection: close\r\n\r\n{"detail":"Not Found"}'
    )
    with run_raw_backend(lambda _: answer) as url:
        profile = f'models:\n  old: {{backends: [{{url: "{url}"}}]}}\n'
        with run_gateway(profile) as g:
            r = httpx.post(g.base_url + "/responses", json={"model": "old", "input": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "responses_unsupported"


# -- the stream contract under faults ------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ({"stall_after": 3, "stall_for": 30}, "idle_timeout"),
        ({"drop_after": 4}, "upstream_disconnect"),
        ({"error_after": 4}, "upstream_disconnect"),
        ({"finish": "omit"}, "upstream_disconnect"),
        ({"malformed_after": 4}, "upstream_protocol_error"),
    ],
)
@pytest.mark.parametrize("graceful", [False, True])
def test_every_fault_ends_with_one_terminal_event(
    client: openai.OpenAI, fault: dict[str, Any], code: str, graceful: bool
) -> None:
    model = "hasty-graceful" if graceful else "hasty"
    events = stream_events(client, model=model, input="2+2?", extra_body={"sim": fault})
    terminal = check_stream(events)
    if graceful and code != "upstream_protocol_error":
        assert terminal.type == "response.incomplete"
        assert terminal.response.incomplete_details.reason == code
    else:
        assert terminal.type == "response.failed"
        assert terminal.response.error.code == code
    assert text_of(events) == "" or ANSWER.startswith(text_of(events))


def test_a_second_completed_is_dropped_and_keepalives_pass(client: openai.OpenAI) -> None:
    events = stream_events(
        client, model="hasty", input="2+2?", extra_body={"sim": {"finish": "twice"}}
    )
    assert check_stream(events).type == "response.completed"
    quiet = {"stall_after": 3, "stall_for": 1.0, "keepalive": 0.2}
    events = stream_events(client, model="r1", input="2+2?", extra_body={"sim": quiet})
    assert check_stream(events).type == "response.completed" and text_of(events) == ANSWER


def test_no_first_token_is_a_504_before_the_stream(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        stream_events(
            client, model="hasty", input="x", extra_body={"sim": {"first_token_delay": 5}}
        )
    assert err.value.status_code == 504
    assert err.value.body["code"] == "first_token_timeout"  # type: ignore[index]


def test_client_disconnect_cancels_the_upstream(
    gw: GatewayServer, sims: dict[str, SimProcess]
) -> None:
    reset(sims)
    body = {"model": "hasty", "input": "x", "stream": True, "sim": {"token_delay": 0.2}}
    with httpx.stream(
        "POST", gw.base_url + "/responses", json=body, headers=auth(), timeout=10
    ) as r:
        for line in r.iter_lines():
            if ".delta" in line:
                break
    wait_for(lambda: sims["a"].stats()["cancelled"] >= 1, "the upstream to be cancelled")
    wait_for(lambda: value(scrape(gw.url), "gateway_in_flight_requests") == 0, "in-flight 0")
    assert gw.gateway.admission.gate.total == 0
