"""What real clients reach for (issue #13): models.retrieve, custom roles, CORS for browser
clients, the Azure-style api-key header, UTF-8 keys, the profile-version header on errors,
and honest non-stream answers when vLLM aborts."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.helpers import GatewayServer, SimProcess, run_gateway

USER = [{"role": "user", "content": "hi"}]


def test_models_retrieve(client: openai.OpenAI) -> None:
    model = client.models.retrieve("r1")
    assert model.id == "r1" and model.object == "model" and model.owned_by == "gateway"
    with pytest.raises(openai.NotFoundError) as exc:
        client.models.retrieve("no-such-model")
    assert exc.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_models_retrieve_hides_models_a_key_may_not_use(sim: SimProcess, tmp_path: object) -> None:
    import hashlib
    from pathlib import Path

    folder = Path(str(tmp_path))
    digest = hashlib.sha256(b"sk-r1").hexdigest()
    (folder / "keys").write_text(f"{digest} r1\n")
    (folder / "p.yaml").write_text(f"""
auth: {{keys_file: keys}}
models:
  r1: {{upstream_model: sim-r1, backends: [{{url: "{sim.url}"}}],
        variants: {{short: {{defaults: {{max_tokens: 5}}}}}}}}
  other: {{upstream_model: sim-r1, backends: [{{url: "{sim.url}"}}]}}
""")
    with (
        run_gateway(config=folder / "p.yaml") as gw,
        openai.OpenAI(base_url=gw.base_url, api_key="sk-r1", max_retries=0) as c,
    ):
        assert c.models.retrieve("r1:short").id == "r1:short"
        with pytest.raises(openai.NotFoundError):
            c.models.retrieve("other")


def test_custom_roles_pass_through(client: openai.OpenAI, fresh_sim: SimProcess) -> None:
    """Llama 3.1 tool clients send ``ipython`` turns; vLLM accepts custom roles."""
    messages = [
        {"role": "user", "content": "run it"},
        {"role": "ipython", "content": '{"result": 4}'},
    ]
    resp = client.chat.completions.create(model="plain", messages=messages)  # type: ignore[arg-type]
    assert resp.choices[0].message.content
    assert fresh_sim.last_request()["messages"][1]["role"] == "ipython"


@pytest.fixture(scope="module")
def browser_gw(sim: SimProcess) -> Iterator[GatewayServer]:
    profile = f"""
models:
  r1: {{upstream_model: sim-r1, backends: [{{url: "{sim.url}"}}]}}
"""
    with run_gateway(
        profile,
        api_keys=("sk-ünïcødé", "sk-plain"),
        cors_origins=("https://app.example",),
        api_key_header=True,
    ) as gw:
        yield gw


def test_cors_preflight_and_exposed_headers(browser_gw: GatewayServer) -> None:
    url = browser_gw.base_url + "/chat/completions"
    pre = httpx.options(
        url,
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in pre.headers["access-control-allow-methods"]
    r = httpx.post(
        url,
        json={"model": "r1", "messages": USER, "stream": True},
        headers={"Origin": "https://app.example", "Authorization": "Bearer sk-plain"},
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-request-id" in r.headers["access-control-expose-headers"]
    other = httpx.options(
        url, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers


def test_cors_is_off_by_default(gateway: GatewayServer) -> None:
    pre = httpx.options(
        gateway.base_url + "/chat/completions",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert pre.status_code == 405 and "access-control-allow-origin" not in pre.headers


def test_api_key_header_and_utf8_keys(browser_gw: GatewayServer) -> None:
    url = browser_gw.base_url + "/chat/completions"
    body = {"model": "r1", "messages": USER}
    assert httpx.post(url, json=body, headers={"api-key": "sk-plain"}).status_code == 200
    both = httpx.post(
        url, json=body, headers={"api-key": "sk-plain", "Authorization": "Bearer sk-plain"}
    )
    assert both.status_code == 400
    assert httpx.post(url, json=body, headers={"api-key": "sk-wrong"}).status_code == 401
    utf8 = {"Authorization": "Bearer sk-ünïcødé".encode()}
    assert httpx.post(url, json=body, headers=utf8).status_code == 200  # type: ignore[arg-type]
    latin1 = {"Authorization": "Bearer sk-ünïcødé".encode("latin-1")}
    assert httpx.post(url, json=body, headers=latin1).status_code == 401  # type: ignore[arg-type]


def test_api_key_header_is_off_by_default(sim: SimProcess) -> None:
    profile = f"""
models:
  r1: {{upstream_model: sim-r1, backends: [{{url: "{sim.url}"}}]}}
"""
    with run_gateway(profile, api_keys=("sk-plain",)) as gw:
        r = httpx.post(
            gw.base_url + "/chat/completions",
            json={"model": "r1", "messages": USER},
            headers={"api-key": "sk-plain"},
        )
        assert r.status_code == 401


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"model": "nope", "messages": USER}, 404),
        ({"model": "r1", "messages": []}, 400),
        ({"model": "dead", "messages": USER}, 502),
        ({"model": "unserved", "messages": USER}, 404),
    ],
)
def test_error_answers_carry_the_profile_version(
    gateway: GatewayServer, body: dict[str, object], status: int
) -> None:
    r = httpx.post(gateway.base_url + "/chat/completions", json=body, timeout=10)
    assert r.status_code == status
    version = httpx.get(gateway.url + "/health").json()["profile_version"]
    assert r.headers["x-gateway-profile-version"] == version
    assert r.headers["x-request-id"]


def test_non_stream_abort_is_an_error_by_default(
    client: openai.OpenAI, fresh_sim: SimProcess
) -> None:
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(
            model="plain", messages=USER, extra_body={"sim": {"finish": "abort"}}
        )
    assert exc.value.status_code == 502 and exc.value.body["code"] == "upstream_abort"  # type: ignore[index]
    resp = client.chat.completions.create(
        model="graceful", messages=USER, extra_body={"sim": {"finish": "abort"}}
    )
    assert resp.choices[0].finish_reason == "length"
    assert resp.choices[0].model_extra["upstream_finish_reason"] == "abort"  # type: ignore[index]


def test_azure_deployment_paths_go_through_the_same_entrance(browser_gw: GatewayServer) -> None:
    """``AzureOpenAI`` clients name the model in the path; the same admission applies."""
    body = {"messages": USER}
    for prefix in ("/openai", "/v1", ""):
        url = f"{browser_gw.url}{prefix}/deployments/r1/chat/completions?api-version=2024-10-21"
        assert httpx.post(url, json=body).status_code == 401  # keys still required
        ok = httpx.post(url, json=body, headers={"api-key": "sk-plain"})
        assert ok.status_code == 200 and ok.json()["model"] == "r1", ok.text
    url = browser_gw.url + "/openai/deployments/r1/chat/completions"
    mismatch = httpx.post(url, json={"model": "other", **body}, headers={"api-key": "sk-plain"})
    assert mismatch.status_code == 400 and mismatch.json()["error"]["param"] == "model"
    absent = browser_gw.url + "/openai/deployments/nope/chat/completions"
    assert httpx.post(absent, json=body, headers={"api-key": "sk-plain"}).status_code == 404
    assert httpx.get(url, headers={"api-key": "sk-plain"}).status_code == 405


def test_a_request_may_ask_for_its_reasoning_in_another_field(
    gateway: GatewayServer, fresh_sim: SimProcess
) -> None:
    url = gateway.base_url + "/chat/completions"
    body = {"model": "think", "messages": [{"role": "user", "content": "2+2?"}]}
    default = httpx.post(url, json=body).json()["choices"][0]["message"]
    assert default["reasoning_content"] and "reasoning" not in default  # one field by default
    both = httpx.post(
        url, json=body, headers={"x-gateway-reasoning-field": "reasoning,reasoning_content"}
    ).json()["choices"][0]["message"]
    assert both["reasoning"] == both["reasoning_content"] == default["reasoning_content"]
    bad = httpx.post(url, json=body, headers={"x-gateway-reasoning-field": "content"})
    assert bad.status_code == 400
