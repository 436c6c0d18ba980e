"""Client conformance (issue #13): real client libraries against the gateway, asserting what
the APPLICATION finally sees. Each library runs as its own subprocess in the clients venvs
(tests/clients/drivers), all at once, once per module; the tests read their results.

Matrix: every client x {non-stream, stream, 3-turn history loop, async, unknown model, bad
key, a stream the gateway cuts (error and graceful mode), no first token (504), reasoning
field probes, reasoning already split by vLLM}, plus each library's own extras.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.clients.conftest import (
    ANSWER,
    API_KEY,
    DEMO,
    DRIVERS,
    REASONING,
    SHORT_CONTEXT,
    node_setup,
    python_of,
)
from tests.helpers import GatewayServer, SimProcess

pytestmark = [pytest.mark.clients, pytest.mark.timeout(400)]

#: stalls after the first answer token ("2"): the gateway's idle timeout cuts the stream
STALL = {"stall_after": 18, "stall_for": 30}
PARTIAL = "2"


@dataclass(frozen=True)
class Client:
    name: str
    driver: str
    venv: str | None  # None: Node
    job: dict[str, Any] = field(default_factory=dict)
    extra_cases: tuple[str, ...] = ()


CLIENTS = {
    c.name: c
    for c in (
        Client(
            "openai-py",
            "openai_py.py",
            "py-openai3",
            extra_cases=(
                "list_prompts",
                "custom_role",
                "retrieve",
                "azure",
                "api_key_header",
                "heartbeat",
            ),
        ),
        Client("openai-py2", "openai_py.py", "py-openai2", extra_cases=("retrieve",)),
        Client("openai-node", "openai_node.mjs", None, extra_cases=("retrieve",)),
        Client("langchain", "langchain.py", "py-openai3", extra_cases=("custom_role",)),
        Client("litellm", "litellm_sdk.py", "py-openai2", job={"provider": "hosted_vllm"}),
        Client("litellm-openai", "litellm_sdk.py", "py-openai2", job={"provider": "openai"}),
        Client("llamaindex", "llamaindex.py", "py-openai2"),
        Client("pydantic-ai", "pydantic_ai_agent.py", "py-openai3"),
        Client("agents", "openai_agents.py", "py-openai3"),
        Client("chainlit", "chainlit_app.py", "py-openai3", extra_cases=("usage_loop",)),
    )
}
NAMES = list(CLIENTS)

SPLIT = {"sim": {"split_reasoning": True}}
COMMON: dict[str, dict[str, Any]] = {
    "nonstream": {"kind": "nonstream", "model": DEMO},
    "stream": {"kind": "stream", "model": DEMO},
    "history": {"kind": "history", "model": DEMO},
    "async": {"kind": "async", "model": DEMO},
    "err_model": {"kind": "nonstream", "model": "no-such-model"},
    "err_key": {"kind": "nonstream", "model": DEMO, "api_key": "sk-wrong"},
    "cut": {"kind": "stream", "model": "r1-cut", "extra_body": {"sim": STALL}},
    "cut_graceful": {"kind": "stream", "model": "r1-cut-graceful", "extra_body": {"sim": STALL}},
    "slow_start": {
        "kind": "stream",
        "model": "r1-slow-start",
        "extra_body": {"sim": {"first_token_delay": 20}},
    },
    "rc_nonstream": {"kind": "nonstream", "model": "r1-rc"},
    "rc_stream": {"kind": "stream", "model": "r1-rc"},
    "r_nonstream": {"kind": "nonstream", "model": "r1-r"},
    "r_stream": {"kind": "stream", "model": "r1-r"},
    "split_nonstream": {"kind": "nonstream", "model": DEMO, "extra_body": SPLIT},
    "split_stream": {"kind": "stream", "model": DEMO, "extra_body": SPLIT},
    "short_context_nonstream": {"kind": "nonstream", "model": SHORT_CONTEXT},
    "short_context_stream": {"kind": "stream", "model": SHORT_CONTEXT},
}
EXTRA: dict[str, dict[str, Any]] = {
    "list_prompts": {"kind": "list_prompts", "model": "r1-textstop", "prompts": ["a b c", "d e"]},
    "custom_role": {"kind": "custom_role", "model": DEMO},
    "retrieve": {"kind": "retrieve", "model": DEMO},
    "azure": {"kind": "azure", "model": DEMO},
    "api_key_header": {"kind": "api_key_header", "model": DEMO},
    # hidden reasoning for ~2 s, SDK read timeout 1 s: only heartbeats keep it alive
    "heartbeat": {
        "kind": "stream",
        "model": "r1-hide",
        "read_timeout": 1.0,
        "extra_body": {"sim": {"token_delay": 0.12}},
    },
    "usage_loop": {"kind": "usage_loop", "model": DEMO},
}


def marker(client: str, case: str) -> str:
    return f"[{client}/{case}]"


@pytest.fixture(scope="module")
def results(cgateway: GatewayServer) -> dict[str, dict[str, Any]]:
    """Run every client's driver at once; {client: {"results", "versions", "outbound"}} or
    {client: {"missing": reason}} / {client: {"crash": output}}."""
    procs: dict[str, tuple[subprocess.Popen[bytes], Path, Any]] = {}
    out: dict[str, dict[str, Any]] = {}
    scratch = tempfile.TemporaryDirectory(prefix="gateway-clients-")
    root = Path(scratch.name)
    for c in CLIENTS.values():
        try:
            if c.venv is None:
                node, node_dir = node_setup()
                argv = [node, str(DRIVERS / c.driver)]
                env = {**os.environ, "GATEWAY_CLIENTS_NODE_DIR": str(node_dir)}
            else:
                argv = [str(python_of(c.venv)), str(DRIVERS / c.driver)]
                env = {**os.environ}
        except (pytest.skip.Exception, pytest.fail.Exception) as exc:
            out[c.name] = {"missing": str(exc)}
            continue
        cases = [
            {"id": cid, "prompt": f"{marker(c.name, cid)} What is 2 + 2?", **spec}
            for cid, spec in {**COMMON, **{k: EXTRA[k] for k in c.extra_cases}}.items()
        ]
        job = {"base_url": cgateway.base_url, "api_key": API_KEY, **c.job, "cases": cases}
        d = root / c.name
        d.mkdir()
        (d / "job.json").write_text(json.dumps(job))
        # no proxies from the environment, no telemetry, and Chainlit's files in scratch
        env.update(
            NO_PROXY="*",
            no_proxy="*",
            CHAINLIT_APP_ROOT=str(d),
            DO_NOT_TRACK="1",
            OPENAI_AGENTS_DISABLE_TRACING="1",
            LITELLM_LOCAL_MODEL_COST_MAP="True",
            PYTHONDONTWRITEBYTECODE="1",
        )
        for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
            env.pop(var, None)
        log = open(d / "output.log", "wb")
        procs[c.name] = (
            subprocess.Popen(
                [*argv, str(d / "job.json"), str(d / "out.json")],
                cwd=d,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            ),
            d,
            log,
        )
    try:
        for name, (proc, d, log) in procs.items():
            try:
                proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
            output = (d / "output.log").read_text(errors="replace")
            if proc.returncode == 0 and (d / "out.json").is_file():
                out[name] = json.loads((d / "out.json").read_text())
                out[name]["log"] = output[-4000:]
            else:
                out[name] = {"crash": f"exit {proc.returncode}: {output[-6000:]}"}
    finally:
        for proc, _, log in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
        scratch.cleanup()
    report = os.environ.get("GATEWAY_CLIENTS_REPORT")
    if report:  # the raw results, for the README table
        Path(report).write_text(json.dumps(out, indent=1, default=str))
    return out


def seen(results: dict[str, dict[str, Any]], client: str, case: str) -> dict[str, Any]:
    """One case's result, or skip/fail as the client's environment demands."""
    got = results[client]
    if "missing" in got:
        python_of(CLIENTS[client].venv) if CLIENTS[client].venv else node_setup()
    assert "crash" not in got, got.get("crash")
    r = got["results"][case]
    assert not r.get("unsupported"), f"{client} has no {case} case"
    return r  # type: ignore[no-any-return]


def explain(r: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in r.items() if k != "traceback"}, default=str)[:1500] + (
        "\n" + r["traceback"] if r.get("traceback") else ""
    )


def upstream_requests(sim: SimProcess, client: str, case: str) -> list[dict[str, Any]]:
    tag = marker(client, case)
    return [
        req
        for req in sim.requests()
        if any(tag in str(m.get("content")) for m in req.get("messages") or ())
    ]


# ---------------------------------------------------------------- the everyday cases


@pytest.mark.parametrize("client", NAMES)
def test_nonstream_answer(results: Any, client: str) -> None:
    r = seen(results, client, "nonstream")
    assert r["ok"], explain(r)
    assert r["text"] == ANSWER, explain(r)
    assert r["finish_reason"] in (None, "stop"), explain(r)


@pytest.mark.parametrize("client", NAMES)
def test_stream_answer(results: Any, client: str) -> None:
    r = seen(results, client, "stream")
    assert r["ok"], explain(r)
    assert r["text"] == ANSWER, explain(r)
    assert r["finish_reason"] in (None, "stop"), explain(r)


@pytest.mark.parametrize("client", NAMES)
def test_history_loop_three_turns(results: Any, csim: SimProcess, client: str) -> None:
    """Each answer goes back as the library returned it; upstream sees only the answers
    (no reasoning text, no reasoning fields, nested or not: items 8)."""
    r = seen(results, client, "history")
    assert r["ok"], explain(r)
    assert r["texts"] == [ANSWER] * 3, explain(r)
    reqs = upstream_requests(csim, client, "history")
    assert len(reqs) == 3, [m for q in reqs for m in q["messages"]]
    last = reqs[-1]["messages"]
    assistants = [m for m in last if m.get("role") == "assistant"]
    assert len(assistants) == 2, last
    for m in assistants:
        assert m.get("content") == ANSWER, m
        assert REASONING.strip() not in json.dumps(m), m
        leaked = sorted(reasoning_keys(m))
        assert not leaked, f"reasoning went back upstream in {leaked}: {m}"


REASONING_KEYS = {"reasoning", "reasoning_content", "reasoning_details", "thinking_blocks"}


def reasoning_keys(obj: Any, path: str = "") -> set[str]:
    """Paths of reasoning fields anywhere in a message (litellm nests them)."""
    found: set[str] = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in REASONING_KEYS and v:
                found.add(path + k)
            found |= reasoning_keys(v, f"{path}{k}.")
    elif isinstance(obj, list):
        for v in obj:
            found |= reasoning_keys(v, path)
    return found


@pytest.mark.parametrize("client", NAMES)
def test_async_concurrent_calls(results: Any, client: str) -> None:
    r = seen(results, client, "async")
    assert r["ok"], explain(r)
    assert r["texts"] and all(t == ANSWER for t in r["texts"]), explain(r)


# ---------------------------------------------------------------- errors

#: what the application catches: module.Class (Node: the class; Chainlit: the error message it
#: shows in the UI), for an unknown model, a bad key, a stream cut after its first byte and a
#: stream with no first token (504). README "Client conformance" has this table.
_OPENAI = {
    "err_model": "openai.NotFoundError",
    "err_key": "openai.AuthenticationError",
    "cut": "openai.APIError",
    "slow_start": "openai.InternalServerError",
}
_LITELLM = {
    "err_model": "litellm.exceptions.NotFoundError",
    "err_key": "litellm.exceptions.AuthenticationError",
    "cut": "litellm.exceptions.MidStreamFallbackError",
    "slow_start": "litellm.exceptions.Timeout",
}
_LC = "langchain_openai.chat_models.base."
_PAI = "pydantic_ai.exceptions."
RAISES: dict[str, dict[str, str]] = {
    "openai-py": _OPENAI,
    "openai-py2": _OPENAI,
    "openai-node": {k: v.removeprefix("openai.") for k, v in _OPENAI.items()},
    "langchain": {
        "err_model": _LC + "OpenAIModelNotFoundError",
        "err_key": _LC + "OpenAIAuthenticationError",
        "cut": "openai.APIError",
        "slow_start": _LC + "OpenAIAPIError",
    },
    "litellm": _LITELLM,
    "litellm-openai": _LITELLM,
    "llamaindex": _OPENAI,
    "pydantic-ai": {
        "err_model": _PAI + "ModelNotFoundError",
        "err_key": _PAI + "ModelAuthenticationError",
        "cut": _PAI + "ModelAPIError",
        "slow_start": _PAI + "ModelServerError",
    },
    "agents": _OPENAI,
    "chainlit": dict.fromkeys(_OPENAI, "chainlit-error"),
}


def raised(r: dict[str, Any]) -> str:
    err = r["error"]
    return f"{err['module']}.{err['type']}" if err.get("module") else err["type"]


@pytest.mark.parametrize("client", NAMES)
def test_unknown_model_is_the_librarys_not_found_error(results: Any, client: str) -> None:
    r = seen(results, client, "err_model")
    assert not r["ok"], explain(r)
    assert raised(r) == RAISES[client]["err_model"], explain(r)
    assert r["error"]["status"] in (None, 404), explain(r)
    assert "no-such-model" in r["error"]["message"], explain(r)


@pytest.mark.parametrize("client", NAMES)
def test_bad_key_is_the_librarys_auth_error(results: Any, client: str) -> None:
    r = seen(results, client, "err_key")
    assert not r["ok"], explain(r)
    assert raised(r) == RAISES[client]["err_key"], explain(r)
    assert r["error"]["status"] in (None, 401), explain(r)


# ---------------------------------------------------------------- streams the gateway ends


@pytest.mark.parametrize("client", NAMES)
def test_cut_stream_raises_after_partial_text(results: Any, client: str) -> None:
    """Default ``stream_termination: error``: an idle timeout after the first byte reaches the
    application as an exception (item 2), after the text already shown."""
    r = seen(results, client, "cut")
    assert not r["ok"], f"a cut stream looked like a finished answer: {explain(r)}"
    assert raised(r) == RAISES[client]["cut"], explain(r)
    assert "idle timeout" in r["error"]["message"], explain(r)
    assert (r["partial"] or "") in ("", PARTIAL), explain(r)


#: graceful mode: the application gets the partial text as a normal answer; what each library
#: makes of finish_reason "length" (None: it does not expose it)
GRACEFUL_FINISH = {
    "openai-py": "length",
    "openai-py2": "length",
    "openai-node": "length",
    "langchain": "length",
    "litellm": "length",
    "litellm-openai": "length",
    "llamaindex": "length",
    "pydantic-ai": "length",
    "agents": None,
    "chainlit": None,
}


@pytest.mark.parametrize("client", NAMES)
def test_cut_stream_graceful_mode_returns_partial_answer(results: Any, client: str) -> None:
    """``stream_termination: graceful``: the partial text ends with ``finish_reason:
    length`` and no exception: for front ends that must stop spinning."""
    r = seen(results, client, "cut_graceful")
    assert r["ok"], explain(r)
    assert r["text"] == PARTIAL, explain(r)
    assert r["finish_reason"] == GRACEFUL_FINISH[client], explain(r)


@pytest.mark.parametrize("client", NAMES)
def test_no_first_token_is_a_504_before_any_byte(results: Any, client: str) -> None:
    r = seen(results, client, "slow_start")
    assert not r["ok"], explain(r)
    assert not r["partial"], explain(r)
    assert raised(r) == RAISES[client]["slow_start"], explain(r)
    assert r["error"]["status"] in (None, 504), explain(r)
    assert "first token timeout" in r["error"]["message"], explain(r)


# ---------------------------------------------------------------- reasoning (items 4, 7)

#: which field each library reads reasoning from (rc: reasoning_content, r: reasoning);
#: LangChain's ChatOpenAI and a Chainlit app reading delta.reasoning_content are the odd ones
READS = {
    "openai-py": {"rc", "r"},  # raw SDK: both are attributes (model_extra)
    "openai-py2": {"rc", "r"},
    "openai-node": {"rc", "r"},
    "langchain": set(),  # ChatOpenAI drops both (documented: use a provider subclass)
    "litellm": {"rc", "r"},
    "litellm-openai": {"rc", "r"},
    "llamaindex": {"rc", "r"},
    "pydantic-ai": {"rc", "r"},
    "agents": {"rc", "r"},
    "chainlit": {"rc"},  # the app's loop reads delta.reasoning_content (stream only)
}
STREAM_ONLY = {"chainlit"}
#: even from one field: litellm copies a non-streamed ``reasoning`` into both
#: ``message.reasoning_content`` and ``message.provider_specific_fields["reasoning"]``
SHOWN_FROM_ONE_FIELD = {
    ("litellm", "r", "nonstream"): 2,
    ("litellm-openai", "r", "nonstream"): 2,
}


@pytest.mark.parametrize("client", NAMES)
@pytest.mark.parametrize("field_", ["rc", "r"])
def test_which_reasoning_field_the_library_reads(results: Any, client: str, field_: str) -> None:
    """Pins what each library exposes when the gateway sends only one field (item 4's
    choice of default); README "Client conformance" has the table."""
    for kind in ("nonstream", "stream"):
        if kind == "nonstream" and client in STREAM_ONLY:
            continue
        r = seen(results, client, f"{field_}_{kind}")
        assert r["ok"] and r["text"] == ANSWER, explain(r)
        if field_ in READS[client]:
            assert r["reasoning"] == REASONING, explain(r)
            want = SHOWN_FROM_ONE_FIELD.get((client, field_, kind), 1)
            assert r["reasoning_shown"] == want, explain(r)
        else:
            assert r["reasoning"] is None, explain(r)


#: libraries that show each piece of reasoning twice with the demo profile's default
#: ``fields: [reasoning_content, reasoning]``
SHOWN_TWICE = {"openai-py", "openai-py2", "openai-node", "litellm", "litellm-openai", "agents"}


@pytest.mark.parametrize("client", NAMES)
def test_reasoning_reaches_the_application_once(results: Any, client: str) -> None:
    for case in ("nonstream", "stream"):
        if case == "nonstream" and client in STREAM_ONLY:
            continue
        r = seen(results, client, case)
        assert r["ok"], explain(r)
        if READS.get(client):
            assert r["reasoning"] == REASONING, explain(r)
        assert r["reasoning_shown"] <= 1, f"{case}: {explain(r)}"


@pytest.mark.parametrize("client", NAMES)
def test_reasoning_split_by_vllm_looks_the_same(results: Any, client: str) -> None:
    """vLLM's --reasoning-parser output gives the application what the gateway's own
    splitter gives (item 7: no leading "\\n\\n" in the answer)."""
    for kind in ("nonstream", "stream"):
        if kind == "nonstream" and client in STREAM_ONLY:
            continue
        ours, vllms = seen(results, client, kind), seen(results, client, f"split_{kind}")
        assert vllms["ok"], explain(vllms)
        assert vllms["text"] == ours["text"] == ANSWER, explain(vllms)
        assert vllms["reasoning"] == ours["reasoning"], explain(vllms)


@pytest.mark.parametrize("client", NAMES)
def test_no_max_tokens_against_a_short_context_vllm(results: Any, client: str) -> None:
    """Item 5: a call that sends no max_tokens works against a vLLM with a short context."""
    for kind in ("nonstream", "stream"):
        r = seen(results, client, f"short_context_{kind}")
        assert r["ok"], explain(r)
        assert r["text"] == ANSWER, explain(r)


# ---------------------------------------------------------------- each library's extras


def test_openai_streamed_completions_with_a_list_of_prompts(results: Any) -> None:
    """Item 1: every prompt's answer, streamed, complete, as without streaming, also when
    one choice ends on a stop string (here every answer ends on the stop_text)."""
    r = seen(results, "openai-py", "list_prompts")
    assert r["ok"], explain(r)
    assert all(t.endswith(ANSWER) for t in r["texts"]), explain(r)
    assert len(r["nonstream_texts"]) == 2 and all(r["nonstream_texts"]), explain(r)
    assert r["texts"] == r["nonstream_texts"], explain(r)
    assert r["finishes"] == ["stop", "stop"], explain(r)


@pytest.mark.parametrize("client", ["openai-py", "langchain"])
def test_custom_role_passes_through(results: Any, csim: SimProcess, client: str) -> None:
    """Item 6: Llama 3.1 tool clients' ``ipython`` role reaches vLLM."""
    r = seen(results, client, "custom_role")
    assert r["ok"], explain(r)
    assert r["text"] == ANSWER, explain(r)
    (req,) = upstream_requests(csim, client, "custom_role")
    assert [m["role"] for m in req["messages"]][-1] == "ipython", req["messages"]


@pytest.mark.parametrize("client", ["openai-py", "openai-py2", "openai-node"])
def test_models_retrieve(results: Any, client: str) -> None:
    """Item 10: ``client.models.retrieve(id)``."""
    r = seen(results, client, "retrieve")
    assert r["ok"], explain(r)
    assert r["text"] == DEMO and r["model_object"] == "model", explain(r)
    assert DEMO in r["listed"], explain(r)


def test_api_key_header_instead_of_authorization(results: Any) -> None:
    """Item 10: the key as an Azure-style ``api-key`` header (switched on here)."""
    r = seen(results, "openai-py", "api_key_header")
    assert r["ok"], explain(r)
    assert r["text"] == ANSWER, explain(r)


def test_azure_client(results: Any) -> None:
    """``openai.AzureOpenAI(base_url=gateway)``: the api-key header and Azure's paths."""
    r = seen(results, "openai-py", "azure")
    assert r["ok"], explain(r)
    assert r["text"] == ANSWER, explain(r)


def test_hidden_reasoning_keeps_the_sdk_read_timeout_alive(results: Any) -> None:
    """Item 3: with ``mode: hide`` the model thinks for ~2 s while nothing is forwarded; the
    SDK's 1 s read timeout must not fire (heartbeat comments every 0.25 s)."""
    r = seen(results, "openai-py", "heartbeat")
    assert r["ok"], explain(r)
    assert r["text"] == ANSWER and r["reasoning"] is None, explain(r)


def test_chainlit_loop_indexing_choices_breaks_on_the_usage_chunk(results: Any) -> None:
    """Client-side quirk, pinned: a Chainlit loop that indexes ``choices[0]`` fails on the
    usage chunk (``choices: []``) it asked for with ``include_usage``; the user sees the
    answer and then an error. The gateway sends that chunk only when asked (the plain loop,
    test_stream_answer[chainlit], works)."""
    r = seen(results, "chainlit", "usage_loop")
    assert not r["ok"], explain(r)
    assert "list index out of range" in r["error"]["message"], explain(r)
    assert r["partial"] == ANSWER, explain(r)


@pytest.mark.parametrize("client", NAMES)
def test_no_traffic_beyond_loopback(results: Any, client: str) -> None:
    """Libraries that phone home (price lists, telemetry) were refused; nothing left the
    machine. Listed so a new library version that starts doing it is noticed."""
    got = results[client]
    if "missing" in got:
        seen(results, client, "nonstream")
    assert "crash" not in got, got.get("crash")
    assert got["outbound"] == [], got["outbound"]
