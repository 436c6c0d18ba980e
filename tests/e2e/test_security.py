"""Keys, limits, caps and what never leaks."""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import GatewayServer, SimProcess, run_gateway

USER = [{"role": "user", "content": "hello"}]


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture
def secured(tmp_path: Path, sim: SimProcess) -> Iterator[GatewayServer]:
    (tmp_path / "keys.sha256").write_text(f"# team keys\n{sha('sk-all')}\n{sha('sk-r1-only')} r1\n")
    path = tmp_path / "p.yaml"
    path.write_text(f"""
auth: {{keys_file: keys.sha256}}
limits: {{max_body_bytes: 4096, max_messages: 3, max_prompt_chars: 200, key_max_in_flight: 2,
          max_in_flight: 3}}
models:
  r1: {{upstream_model: sim-r1, backends: [{{url: "{sim.url}"}}], max_tokens_limit: 10}}
  other:
    upstream_model: sim-r1
    backends: [{{url: "{sim.url}"}}]
    max_tokens_limit: 10
    max_tokens_policy: reject
    max_n: 1
""")
    with run_gateway(config=path) as gw:
        yield gw


@pytest.fixture
def client(secured: GatewayServer) -> Iterator[Callable[[str], openai.OpenAI]]:
    """SDK clients per key, all closed at the end (an unclosed one leaks its sockets)."""
    made: list[openai.OpenAI] = []

    def make(key: str) -> openai.OpenAI:
        made.append(
            openai.OpenAI(base_url=secured.base_url, api_key=key, max_retries=0, timeout=10)
        )
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_missing_or_wrong_key_is_401(
    secured: GatewayServer, client: Callable[[str], openai.OpenAI]
) -> None:
    r = httpx.post(secured.base_url + "/chat/completions", json={"model": "r1", "messages": USER})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError) as exc:
        client("sk-wrong").chat.completions.create(model="r1", messages=USER)
    assert exc.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    assert "sk-wrong" not in exc.value.message
    with pytest.raises(openai.AuthenticationError):
        client("sk-wrong").models.list()


def test_keys_and_their_models(
    client: Callable[[str], openai.OpenAI], fresh_sim: SimProcess
) -> None:
    assert client("sk-all").chat.completions.create(model="other", messages=USER)
    limited = client("sk-r1-only")
    assert limited.chat.completions.create(model="r1", messages=USER).choices
    with pytest.raises(openai.NotFoundError):  # exists, but not for this key: looks absent
        limited.chat.completions.create(model="other", messages=USER)
    assert [m.id for m in limited.models.list()] == ["r1"]
    assert [m.id for m in client("sk-all").models.list()] == ["r1", "other"]
    assert all(a is None for a in fresh_sim.stats()["auth"])  # client keys never go upstream


def test_size_and_shape_limits(
    client: Callable[[str], openai.OpenAI], fresh_sim: SimProcess
) -> None:
    c = client("sk-all")
    with pytest.raises(openai.APIStatusError) as big:
        c.chat.completions.create(model="r1", messages=[{"role": "user", "content": "x" * 5000}])
    assert big.value.status_code == 413 and big.value.body["code"] == "request_too_large"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError, match="at most 3 messages"):
        c.chat.completions.create(model="r1", messages=USER * 4)
    with pytest.raises(openai.BadRequestError, match="characters"):
        c.chat.completions.create(model="r1", messages=[{"role": "user", "content": "y" * 300}])
    with pytest.raises(openai.BadRequestError, match="n: at most 1"):
        c.chat.completions.create(model="other", messages=USER, n=2)
    with pytest.raises(openai.BadRequestError, match="max_tokens: at most 10"):
        c.chat.completions.create(model="other", messages=USER, max_tokens=50)
    c.chat.completions.create(model="r1", messages=USER, max_tokens=50)
    assert fresh_sim.last_request()["max_tokens"] == 10  # clamped
    c.chat.completions.create(model="r1", messages=USER)
    assert fresh_sim.last_request()["max_tokens"] == 10  # applied when absent


def test_concurrency_caps_answer_429_with_retry_after(secured: GatewayServer) -> None:
    body = {
        "model": "r1",
        "messages": USER,
        "stream": True,
        "sim": {"stall_after": 1, "stall_for": 1.5},
    }

    def one(key: str) -> httpx.Response:
        return httpx.post(
            secured.base_url + "/chat/completions",
            json=body,
            timeout=10,
            headers={"authorization": f"Bearer {key}"},
        )

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, ["sk-all"] * 4 + ["sk-r1-only"] * 2))
    codes = sorted(r.status_code for r in results)
    # key cap 2 and global cap 3: at most 3 streams run, the rest are refused at once
    assert codes.count(200) == 3 and codes.count(429) == 3, codes
    refused = next(r for r in results if r.status_code == 429)
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "concurrency_limit_exceeded"
    ok = httpx.post(
        secured.base_url + "/chat/completions",
        json={"model": "r1", "messages": USER},
        headers={"authorization": "Bearer sk-all"},
    )
    assert ok.status_code == 200  # slots were given back


def test_rate_limit_per_key(tmp_path: Path, sim: SimProcess) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(f"""
limits: {{key_rate: 3/minute}}
models:
  r1: {{upstream_model: sim-r1, backends: [{{url: "{sim.url}"}}]}}
""")
    with run_gateway(config=path, api_keys=("sk-a", "sk-b")) as gw:

        def call(key: str) -> httpx.Response:
            return httpx.post(
                gw.base_url + "/chat/completions",
                json={"model": "r1", "messages": USER},
                headers={"authorization": f"Bearer {key}"},
            )

        assert [call("sk-a").status_code for _ in range(4)] == [200, 200, 200, 429]
        limited = call("sk-a")
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert call("sk-b").status_code == 200  # another key has its own budget


def test_open_mode_is_announced(caplog: pytest.LogCaptureFixture, sim: SimProcess) -> None:
    caplog.set_level(logging.WARNING, logger="gateway")
    with run_gateway(f"""
models:
  r1: {{upstream_model: sim-r1, backends: [{{url: "{sim.url}"}}]}}
"""):
        pass
    assert any("no client API keys" in r.getMessage() for r in caplog.records)
