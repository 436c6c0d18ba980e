"""The playground in a real browser: Debian's chromium driven by Playwright's Python API
(the system browser through ``executable_path``: nothing is downloaded), against
``gateway demo`` processes (the gateway + the simulated vLLM, whose ``/sim/requests`` and
``/sim/stats`` show what reached the model server).

Without chromium these tests fail, never skip: ``make test`` installs it
(scripts/install-chromium.sh); deselect them by hand with ``-m "not browser"``.
Set ``GATEWAY_UPDATE_SCREENSHOT=1`` to refresh docs/playground.png from the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Request, Route, expect, sync_playwright

from tests.helpers import SimProcess, free_port, stop_process

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
KEY = "pg-test-key"
R1_EOS, THINK_END = 151643, 151649
# The flags this machine's chromium needs: no sandbox as root, no GPU, and none of the
# background connections a closed network refuses. Playwright adds --headless and a fresh,
# temporary --user-data-dir for every launch.
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

PROFILES = f"""
timeouts: {{connect: 5, first_token: 20, idle: 15, total: 120}}
models:
  r1:
    upstream_model: sim-r1
    backends: [{{url: "http://127.0.0.1:9"}}]   # gateway demo points every model at its sim
    stop_token_ids: [{R1_EOS}]
    defaults: {{temperature: 0.6, top_p: 0.95}}
    max_tokens_limit: 4096
    # strip_history off: only the page keeps reasoning out of the history sent back
    reasoning: {{starts_in_reasoning: true, strip_history: false}}
    variants:
      cold: {{overrides: {{temperature: 0.1}}}}
  hasty: &hasty                                # cut streams end with an error event
    upstream_model: sim-r1
    backends: [{{url: "http://127.0.0.1:9"}}]
    stop_token_ids: [{R1_EOS}]
    reasoning: {{starts_in_reasoning: true}}
    timeouts: {{first_token: 1, idle: 0.5}}
  hasty-graceful:                              # ... or with a final chunk and side fields
    <<: *hasty
    stream_termination: graceful
  steady:                                      # heartbeat comments while the model stalls
    <<: *hasty
    timeouts: {{idle: 5, heartbeat: 0.1}}
"""


def chromium_path() -> str:
    for candidate in (
        os.environ.get("GATEWAY_CHROMIUM"),
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        "Debian's chromium is missing, so the playground's browser tests cannot run. "
        "Install it: scripts/install-chromium.sh (make test runs it) or "
        "`apt-get install chromium`; or deselect these tests with -m 'not browser'.",
        pytrace=False,
    )


def script(reasoning: str, answer: str) -> list[list[Any]]:
    """A simulated R1 output: reasoning, </think>, the answer, eos; roughly word tokens."""
    pieces = re.findall(r"\s*\S+|\s+", reasoning)
    out: list[list[Any]] = [[2000 + i, p] for i, p in enumerate(pieces)]
    out.append([THINK_END, "</think>"])
    out += [[3000 + i, p] for i, p in enumerate(re.findall(r"\s*\S+|\s+", answer))]
    out.append([R1_EOS, "<｜end▁of▁sentence｜>"])
    return out


# ---- processes and browser -----------------------------------------------------------------


@dataclass
class Demo:
    url: str
    sim: SimProcess


@contextlib.contextmanager
def run_demo(log: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Demo]:
    """``python -m gateway demo`` on a free port, in the repository (as ``make demo``)."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "demo", "--port", str(port), *args],
            cwd=ROOT,
            env={**os.environ, "GATEWAY_LOG_LEVEL": "warning", **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 40
        sim_url = None
        while True:
            if sim_url is None:
                m = re.search(r"simulated vLLM on (http://127\.0\.0\.1:\d+)", log.read_text())
                sim_url = m.group(1) if m else None
            if sim_url is not None:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway demo did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        sim = SimProcess(url=sim_url, proc=proc)  # type: ignore[arg-type]
        try:
            yield Demo(url=url, sim=sim)
        finally:
            sim.client.close()
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """The demo serving PROFILES, with a client key."""
    d = tmp_path_factory.mktemp("playground")
    config = d / "profiles.yaml"
    config.write_text(PROFILES)
    with run_demo(
        d / "demo.log",
        "--config",
        str(config),
        "--token-delay",
        "0.01",
        env={"GATEWAY_API_KEYS": KEY},
    ) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    exe = chromium_path()
    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=exe, headless=True, chromium_sandbox=False, args=CHROMIUM_ARGS
        )
        try:
            yield b
        finally:
            b.close()


@dataclass
class Session:
    page: Page
    demo: Demo
    requests: list[Request] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def chat_requests(self) -> list[dict[str, Any]]:
        return [r.post_data_json for r in self.requests if r.url.endswith("/v1/chat/completions")]


INIT_SCRIPT = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));
"""


@contextlib.contextmanager
def new_session(browser: Browser, demo: Demo, **context: Any) -> Iterator[Session]:
    ctx = browser.new_context(
        viewport=context.pop("viewport", {"width": 1100, "height": 760}),
        permissions=["clipboard-read", "clipboard-write"],
        **context,
    )
    page = ctx.new_page()
    page.set_default_timeout(15_000)
    page.add_init_script(INIT_SCRIPT)
    s = Session(page=page, demo=demo)
    page.on("request", lambda r: s.requests.append(r))
    page.on("pageerror", lambda exc: s.errors.append(str(exc)))
    try:
        yield s
        # whatever the test did: no script error, no CSP violation, no request elsewhere
        assert s.errors == [], s.errors
        assert page.evaluate("window.__csp") == []
        foreign = [r.url for r in s.requests if not r.url.startswith(demo.url + "/")]
        assert foreign == [], foreign
    finally:
        ctx.close()


@pytest.fixture
def session(browser: Browser, demo: Demo) -> Iterator[Session]:
    with new_session(browser, demo) as s:
        yield s


def open_page(s: Session, key: str | None = KEY, model: str = "r1") -> Page:
    page = s.page
    page.goto(s.demo.url + "/playground")
    page.wait_for_selector("body[data-ready='1']", state="attached")
    if key is not None:
        page.fill("#api-key", key)
        page.press("#api-key", "Tab")  # change: the models are listed with the key
        # (locator waits: wait_for_function would eval a string, which the page's CSP forbids)
        expect(page.locator("#model option")).not_to_have_count(0)
        page.select_option("#model", model)
    return page


def ask(page: Page, text: str, extra: dict[str, Any] | None = None) -> Any:
    if extra is not None:
        if not page.locator("details.advanced").evaluate("d => d.open"):
            page.click("details.advanced > summary")
        page.fill("#extra", json.dumps(extra))
    n = page.locator(".turn").count()
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")
    return page.locator(".turn").nth(n)


def finished(turn: Any) -> Any:
    expect(turn).to_have_class(re.compile(r"\bfinished\b"))
    return turn


def seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+\.\d\d) s", text)
    assert m, f"not a time: {text!r}"
    return float(m.group(1))


def wait_for(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# ---- the tests ----------------------------------------------------------------------------


def test_page_lists_models_and_shows_profile_values(session: Session) -> None:
    page = open_page(session)
    options = page.locator("#model option").all_inner_texts()
    assert options == ["r1", "r1:cold", "hasty", "hasty-graceful", "steady"]  # variants too
    expect(page.locator("#temperature")).to_have_attribute("placeholder", "0.6")
    expect(page.locator("#top_p")).to_have_attribute("placeholder", "0.95")
    expect(page.locator("#max_tokens")).to_have_attribute("placeholder", "4096")
    expect(page.locator(".hint[data-for='temperature']")).to_have_text("profile default: 0.6")
    page.select_option("#model", "r1:cold")
    expect(page.locator("#temperature")).to_be_disabled()
    expect(page.locator(".hint[data-for='temperature']")).to_have_text("fixed by the profile: 0.1")
    page.select_option("#model", "hasty")
    expect(page.locator("#temperature")).to_have_attribute("placeholder", "model default")
    # index page links here
    page.goto(session.demo.url + "/")
    page.click("text=Playground")
    expect(page).to_have_url(session.demo.url + "/playground")


def test_reasoning_streams_then_folds_and_timings_fill(session: Session) -> None:
    page = open_page(session)
    session.demo.sim.reset()
    # what the page shows, every time the DOM changes
    page.evaluate(
        """() => {
        window.__snaps = [];
        new MutationObserver(() => {
          const t = document.querySelector('.turn:last-child');
          if (!t) return;
          const d = t.querySelector('.thinking');
          window.__snaps.push({open: d.open, hidden: d.hidden,
            r: t.querySelector('.reasoning').textContent.length,
            a: t.querySelector('.answer').textContent.length});
        }).observe(document.body, {subtree: true, childList: true, characterData: true,
                                   attributes: true});
      }"""
    )
    turn = ask(page, "What is 2 + 2?", {"sim": {"token_delay": 0.1}})
    finished(turn)
    snaps = page.evaluate("window.__snaps")
    thinking = [s for s in snaps if s["r"] > 0 and s["a"] == 0]
    assert thinking and all(s["open"] and not s["hidden"] for s in thinking), thinking
    assert len({s["r"] for s in thinking}) >= 4, "the reasoning did not stream"
    assert any(s["a"] > 0 and not s["open"] for s in snaps), "the panel did not fold"
    assert not snaps[-1]["open"]

    reasoning = turn.locator(".reasoning").text_content()
    # today the gateway sends each piece in reasoning_content and reasoning: shown once
    assert reasoning.startswith("Okay, the user asks for 2 + 2. That is 4.")
    assert reasoning.count("Okay") == 1
    expect(turn.locator(".answer")).to_have_text("2 + 2 = 4.")
    expect(turn.locator(".answer strong")).to_have_text("4")
    expect(turn.locator(".thinking-label")).to_have_text(re.compile(r"^Thought for \d+\.\d\d s$"))
    t_reasoning = seconds(turn.locator(".t-reasoning").inner_text())
    t_answer = seconds(turn.locator(".t-answer").inner_text())
    t_total = seconds(turn.locator(".t-total").inner_text())
    assert 0 <= t_reasoning < t_answer <= t_total
    assert t_answer - t_reasoning > 1.0  # 16 reasoning tokens, 0.1 s apart
    assert int(turn.locator(".t-tokens").inner_text()) > 0  # usage.completion_tokens
    expect(turn.locator(".t-rate")).to_have_text(re.compile(r"^· \d+\.\d tok/s$"))
    expect(turn.locator(".t-finish")).to_have_text("stop")
    expect(turn.locator(".notice")).to_have_count(0)

    # the real client path: streamed, usage asked for, the key as a bearer token, and no
    # sampling field the user left empty (the profile's default reached the model server)
    sent = session.chat_requests()[-1]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert "temperature" not in sent and "max_tokens" not in sent
    req = next(r for r in session.requests if r.url.endswith("/v1/chat/completions"))
    assert req.headers["authorization"] == f"Bearer {KEY}"
    upstream = session.demo.sim.last_request()
    assert upstream["temperature"] == 0.6 and upstream["max_tokens"] == 4096


def test_typed_sampling_values_are_sent(session: Session) -> None:
    page = open_page(session)
    page.fill("#temperature", "0.3")
    page.fill("#max_tokens", "300")
    finished(ask(page, "hi"))
    sent = session.chat_requests()[-1]
    assert sent["temperature"] == 0.3 and sent["max_tokens"] == 300
    assert session.demo.sim.last_request()["temperature"] == 0.3


def test_answer_renders_markdown_code_and_math(session: Session) -> None:
    page = open_page(session)
    answer = (
        "**Result**\n\n| n | n² |\n|---:|:---:|\n| 3 | 9 |\n\n"
        "Inline \\(x^2\\) and $y_1$, costs $5 and $10.\n\n"
        "\\[\n\\boxed{42}\n\\]\n\n```python\nprint(1)\n```\n"
    )
    turn = finished(ask(page, "math", {"sim": {"tokens": script("Let me think.", answer)}}))
    a = turn.locator(".answer")
    expect(a.locator("strong")).to_have_text("Result")
    expect(a.locator(".katex-display")).to_have_count(1)
    expect(a.locator(".katex-display .fbox")).to_have_count(1)  # \boxed{42}
    expect(a.locator(".katex")).to_have_count(3)  # x^2, y_1, the display; not the dollars
    assert "$5 and $10" in a.inner_text()
    expect(a.locator("pre code.language-python")).to_have_text("print(1)\n")
    expect(a.locator("th.align-right")).to_have_count(1)  # alignment without style=""


def test_model_output_cannot_inject_html(session: Session) -> None:
    page = open_page(session)
    reasoning = '<img src=x onerror="window.__pwned=1"> thinking <script>window.__pwned=2</script>'
    answer = (
        "<script>window.__pwned=3</script> and "
        '<img src=x onerror="window.__pwned=4"> '
        "[click](javascript:window.__pwned=5) ![pic](http://example.invalid/x.png)"
    )
    turn = finished(ask(page, "inject", {"sim": {"tokens": script(reasoning, answer)}}))
    assert "<script>window.__pwned=2</script>" in turn.locator(".reasoning").text_content()
    text = turn.locator(".answer").inner_text()
    assert "<script>window.__pwned=3</script>" in text
    assert '<img src=x onerror="window.__pwned=4">' in text
    expect(turn.locator("script, img, iframe, [onerror]")).to_have_count(0)
    expect(page.locator("a[href^='javascript']")).to_have_count(0)
    turn.locator(".answer").click()
    assert page.evaluate("window.__pwned") is None
    # the image was neither rendered nor fetched (the session checks every request's origin)
    assert not any("example.invalid" in r.url for r in session.requests)


def test_stop_cancels_the_upstream(session: Session) -> None:
    page = open_page(session)
    sim = session.demo.sim
    before = sim.stats()["cancelled"]
    turn = ask(page, "think long", {"sim": {"repeat": 100, "token_delay": 0.05}})
    expect(turn.locator(".reasoning")).not_to_be_empty()
    expect(page.locator("#send")).to_be_hidden()
    page.click("#stop")
    finished(turn)
    expect(turn.locator(".notice-stopped")).to_be_visible()
    expect(turn.locator(".t-finish")).to_have_text("stopped")
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator("#stop")).to_be_hidden()
    wait_for(lambda: sim.stats()["cancelled"] > before)  # vLLM's work was cancelled
    wait_for(lambda: sim.stats()["active"] == 0)


def test_history_is_sent_back_without_reasoning_and_retry_repeats_it(session: Session) -> None:
    page = open_page(session)
    sim = session.demo.sim
    first = finished(ask(page, "What is 2 + 2?"))
    expect(first.locator(".reasoning")).to_contain_text("the user asks")
    finished(ask(page, "And 3 + 3?"))
    messages = sim.last_request()["messages"]
    assert messages == [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "2 + 2 = **4**."},
        {"role": "user", "content": "And 3 + 3?"},
    ]
    sent = session.chat_requests()[-1]["messages"]
    assert all(set(m) == {"role", "content"} for m in sent)
    assert not any("user asks" in m["content"] for m in sent)
    # Retry: only on the last turn; the same conversation again
    expect(first.locator(".retry")).to_be_hidden()
    n = len(sim.requests())
    page.locator(".turn").last.locator(".retry").click()
    finished(page.locator(".turn").last)
    wait_for(lambda: len(sim.requests()) == n + 1)
    assert sim.last_request()["messages"] == messages
    expect(page.locator(".turn")).to_have_count(2)


def test_clear_empties_the_conversation(session: Session) -> None:
    page = open_page(session)
    finished(ask(page, "What is 2 + 2?"))
    page.click("#clear")
    expect(page.locator(".turn")).to_have_count(0)
    expect(page.locator("#empty")).to_be_visible()
    finished(ask(page, "fresh start"))
    assert session.demo.sim.last_request()["messages"] == [
        {"role": "user", "content": "fresh start"}
    ]


@pytest.mark.parametrize(
    ("model", "fields", "sim", "kind", "text", "finish"),
    [
        # the gateway ends a stalled stream: idle timeout while thinking, as an error event
        # (the default) or as a final chunk with gateway_termination (graceful)
        (
            "hasty",
            {},
            {"stall_after": 4, "stall_for": 3},
            "gateway",
            "idle timeout",
            "idle_timeout",
        ),
        (
            "hasty-graceful",
            {},
            {"stall_after": 4, "stall_for": 3},
            "gateway",
            "idle timeout",
            "length",
        ),
        # the model server drops the connection
        ("hasty", {}, {"drop_after": 4}, "gateway", "server broke", "upstream_disconnect"),
        ("hasty-graceful", {}, {"drop_after": 4}, "gateway", "server broke", "length"),
        # vLLM aborts the request
        ("hasty", {}, {"finish": "abort"}, "gateway", "aborted the request", "upstream_abort"),
        # no first token in time: a 504 before the stream starts
        ("hasty", {}, {"first_token_delay": 3}, "gateway", "(HTTP 504)", "first_token_timeout"),
        # out of tokens while thinking
        ("r1", {"max_tokens": "5"}, {}, "budget", "ran out of tokens while thinking", "length"),
        # an error event from the model server itself, mid-stream
        ("r1", {}, {"error_after": 4}, "error", "simulated engine error", "error"),
    ],
)
def test_endings_are_told_apart(
    session: Session,
    model: str,
    fields: dict[str, str],
    sim: dict[str, Any],
    kind: str,
    text: str,
    finish: str,
) -> None:
    page = open_page(session, model=model)
    for name, value in fields.items():
        page.fill(f"#{name}", value)
    turn = finished(ask(page, "go", {"sim": sim}))
    notice = turn.locator(f".notice-{kind}")
    expect(notice).to_have_count(1)
    expect(notice).to_contain_text(text)
    expect(turn.locator(".notice")).to_have_count(1)  # and nothing else claimed
    expect(turn.locator(".t-finish")).to_have_text(finish)
    expect(turn.locator(".t-total")).to_have_text(re.compile(r"\d+\.\d\d s"))


def test_heartbeats_while_the_model_stalls_are_ignored(session: Session) -> None:
    page = open_page(session, model="steady")
    n = len(session.requests)
    turn = finished(ask(page, "What is 2 + 2?", {"sim": {"stall_after": 6, "stall_for": 1}}))
    expect(turn.locator(".answer")).to_have_text("2 + 2 = 4.")
    expect(turn.locator(".notice")).to_have_count(0)
    expect(turn.locator(".t-finish")).to_have_text("stop")
    assert seconds(turn.locator(".t-total").inner_text()) >= 1.0
    chat = [r for r in session.requests[n:] if r.url.endswith("/v1/chat/completions")]
    body = chat[-1].response().body()  # type: ignore[union-attr]
    assert body.count(b": keep-alive") >= 3  # the page read past them


def _chunk(**delta: Any) -> str:
    choice = {"index": 0, "delta": delta, "finish_reason": None}
    return "data: " + json.dumps({"object": "chat.completion.chunk", "choices": [choice]})


@pytest.mark.parametrize("sep", ["\n", "\r\n"])
def test_stream_contract_of_issue_13(session: Session, sep: str) -> None:
    """The coming stream contract, served to the page by the browser's router: reasoning in
    one field only, heartbeat comments, then an error event for a total timeout after part
    of the answer; LF and CRLF framing."""
    error = {"message": "stream exceeded 600s", "type": "timeout_error", "code": "total_timeout"}
    lines = [
        ": keep-alive",
        _chunk(role="assistant", content=""),
        _chunk(reasoning="Thinking "),
        ": keep-alive",
        _chunk(reasoning="hard."),
        _chunk(content="Half an "),
        _chunk(content="answer"),
        "data: " + json.dumps({"error": error}),
        "data: [DONE]",
    ]
    events = "".join(line + sep + sep for line in lines)

    def fulfil(route: Route) -> None:
        route.fulfill(status=200, headers={"content-type": "text/event-stream"}, body=events)

    page = open_page(session)
    page.route("**/v1/chat/completions", fulfil)
    turn = finished(ask(page, "x"))
    expect(turn.locator(".reasoning")).to_have_text("Thinking hard.")
    expect(turn.locator(".answer")).to_have_text("Half an answer")
    expect(turn.locator(".notice-gateway")).to_contain_text("total timeout")
    expect(turn.locator(".notice-gateway")).to_contain_text("incomplete")
    expect(turn.locator(".notice")).to_have_count(1)
    expect(turn.locator(".t-finish")).to_have_text("total_timeout")


def test_http_error_before_the_stream(session: Session) -> None:
    """A 504 with an OpenAI error body (the gateway's answer when the stream never started)."""
    body = {"error": {"message": "upstream idle", "type": "timeout_error", "code": "idle_timeout"}}

    def fulfil(route: Route) -> None:
        route.fulfill(status=504, content_type="application/json", body=json.dumps(body))

    page = open_page(session)
    page.route("**/v1/chat/completions", fulfil)
    turn = finished(ask(page, "x"))
    expect(turn.locator(".notice-gateway")).to_contain_text("idle timeout")
    expect(turn.locator(".notice-gateway")).to_contain_text("(HTTP 504)")
    expect(turn.locator(".notice-gateway")).to_have_attribute("title", "upstream idle")
    page.unroute("**/v1/chat/completions")
    page.fill("#api-key", "wrong")
    page.press("#api-key", "Tab")
    expect(page.locator("#status")).to_contain_text("needs an API key")


def test_copy_buttons(session: Session) -> None:
    page = open_page(session)
    turn = finished(ask(page, "What is 2 + 2?"))
    turn.locator(".copy-answer").click()
    assert page.evaluate("navigator.clipboard.readText()") == "2 + 2 = **4**."
    expect(turn.locator(".copy-answer")).to_have_text("Copied")
    turn.locator(".copy-reasoning").click()
    assert page.evaluate("navigator.clipboard.readText()").startswith("Okay, the user asks")


def test_api_key_lives_in_session_storage_only(session: Session) -> None:
    page = open_page(session, key=None)
    expect(page.locator("#status")).to_contain_text("needs an API key")
    page.fill("#api-key", KEY)
    page.press("#api-key", "Tab")
    expect(page.locator("#model option")).to_have_count(5)
    assert page.evaluate("sessionStorage.getItem('gateway.playground.api-key')") == KEY
    assert page.evaluate("localStorage.length") == 0
    assert page.context.cookies() == []
    page.reload()  # same tab: still there
    expect(page.locator("#model option")).to_have_count(5)
    expect(page.locator("#api-key")).to_have_value(KEY)


def test_keyboard_and_narrow_screen(browser: Browser, demo: Demo) -> None:
    with new_session(browser, demo, viewport={"width": 375, "height": 740}) as s:
        page = open_page(s)
        expect(page.locator("#settings")).to_be_hidden()
        page.click("#settings-toggle")
        expect(page.locator("#temperature")).to_be_visible()
        page.click("#settings-toggle")
        page.click("#prompt")
        page.keyboard.type("line one")
        page.keyboard.press("Shift+Enter")
        page.keyboard.type("line two")
        expect(page.locator("#prompt")).to_have_value("line one\nline two")
        assert s.chat_requests() == []
        page.keyboard.press("Enter")
        turn = finished(page.locator(".turn").last)
        expect(turn.locator(".user-text")).to_have_text("line one\nline two")
        expect(page.locator("#prompt")).to_have_value("")
        assert s.chat_requests()[-1]["messages"][-1]["content"] == "line one\nline two"
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow}px wider than a phone"
        for sel in ("#send", "#prompt", ".turn .answer", ".turn .copy-answer"):
            box = page.locator(sel).first.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375, sel


def test_out_of_the_box_demo_and_screenshot(
    browser: Browser, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``gateway demo`` as ``make demo`` runs it (the repository's model_profiles.yaml, no
    key): the page answers; the screenshot in the README comes from here."""
    d = tmp_path_factory.mktemp("plain-demo")
    with run_demo(d / "demo.log") as plain:
        with new_session(browser, plain, viewport={"width": 1100, "height": 720}) as s:
            page = open_page(s, key=None)
            expect(page.locator("#model")).to_have_value("deepseek-r1-distill-qwen-1.5b")
            turn = finished(ask(page, "What is 2 + 2?"))
            expect(turn.locator(".answer")).to_have_text("2 + 2 = 4.")
            expect(turn.locator(".notice")).to_have_count(0)
            expect(turn.locator(".t-finish")).to_have_text("stop")
            reasoning = (
                "The odd numbers are 1, 3, 5, and so on. The sum of the first n odd numbers "
                "is n squared, so for n = 10 it is 100. Check: 1+3+5+7+9 = 25 = 5², right."
            )
            answer = (
                "The first ten odd numbers are $1, 3, \\dots, 19$, and the sum of the first "
                "$n$ odd numbers is $n^2$:\n\n"
                "\\[\n1 + 3 + \\dots + 19 = 10^2 = \\boxed{100}\n\\]"
            )
            turn = finished(
                ask(
                    page,
                    "What is the sum of the first 10 odd numbers?",
                    {"sim": {"tokens": script(reasoning, answer)}},
                )
            )
            expect(turn.locator(".katex-display .fbox")).to_have_count(1)
            page.click("details.advanced > summary")  # fold it again for the picture
            turn.locator(".thinking > summary").click()  # unfold the reasoning for the picture
            expect(turn.locator(".thinking")).to_have_attribute("open", "")
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
            shot = d / "playground.png"
            page.screenshot(path=str(shot))
            png = shot.read_bytes()
            assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
            if os.environ.get("GATEWAY_UPDATE_SCREENSHOT") == "1":
                (ROOT / "docs").mkdir(exist_ok=True)
                shutil.copyfile(shot, ROOT / "docs" / "playground.png")
