"""What a client's fields and media do to the simulated vLLM, and what backend names show
(issue #12: secrets and what strangers can see)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.helpers import GatewayServer, SimProcess, run_gateway, scrape, value

USER = [{"role": "user", "content": "hello"}]
IMAGE_DATA = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"


@pytest.fixture(scope="module")
def policy_gateway(sim: SimProcess) -> Iterator[GatewayServer]:
    with run_gateway(f"""
models:
  guarded:                      # the shipped default policy
    upstream_model: sim-r1
    backends: [{{url: "{sim.url}"}}]
  dropping:
    upstream_model: sim-r1
    backends: [{{url: "{sim.url}"}}, {{url: "{sim.url.replace("127.0.0.1", "localhost")}"}}]
    request_policy: {{on_denied: drop}}
    overrides: {{cache_salt: null}}
  media:
    upstream_model: sim-r1
    backends: [{{url: "{sim.url}", name: vllm-a}}]
    request_policy: {{remote_media: true}}
""") as gw:
        yield gw


@pytest.fixture
def client(policy_gateway: GatewayServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=policy_gateway.base_url, api_key="t", max_retries=0, timeout=10
    ) as c:
        yield c


def sent(sim: SimProcess, before: int) -> list[dict[str, object]]:
    return sim.requests()[before:]


@pytest.mark.parametrize(
    ("field", "value_"),
    [
        ("chat_template", "{{ 'owned' }}"),
        ("priority", -100),
        ("kv_transfer_params", {"remote_host": "10.0.0.1"}),
        ("vllm_xargs", {"x": 1}),
        ("request_id", "someone-elses-id"),
        ("mm_processor_kwargs", {"max_pixels": 100000000}),
        ("logits_processors", ["os.system"]),
    ],
)
def test_denied_field_is_a_400_and_never_reaches_vllm(
    client: openai.OpenAI, fresh_sim: SimProcess, field: str, value_: object
) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model="guarded",
            messages=USER,
            extra_body={field: value_},  # type: ignore[arg-type]
        )
    err = exc.value.body
    assert isinstance(err, dict) and err["param"] == field
    assert err["message"] == f"{field}: this field is not accepted for model `guarded`"
    assert fresh_sim.requests() == []


def test_allowed_vllm_fields_pass_and_null_is_not_forwarded(
    client: openai.OpenAI, fresh_sim: SimProcess
) -> None:
    r = client.chat.completions.create(
        model="guarded",
        messages=USER,
        extra_body={
            "chat_template_kwargs": {"enable_thinking": False},
            "top_k": 5,
            "priority": None,
        },
    )
    assert r.choices[0].finish_reason == "stop"
    got = fresh_sim.last_request()
    assert got["chat_template_kwargs"] == {"enable_thinking": False} and got["top_k"] == 5
    assert "priority" not in got


def test_drop_policy_and_override_removal_reach_vllm_without_the_fields(
    client: openai.OpenAI, fresh_sim: SimProcess
) -> None:
    r = client.chat.completions.create(
        model="dropping",
        messages=USER,
        extra_body={"chat_template": "{{x}}", "priority": 3, "cache_salt": "c", "top_k": 2},
    )
    assert r.choices[0].finish_reason == "stop"
    got = fresh_sim.last_request()
    assert "chat_template" not in got and "priority" not in got and "cache_salt" not in got
    assert got["top_k"] == 2


def image(url: str) -> list[dict[str, object]]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]


def test_remote_media_is_refused_by_default_data_urls_pass(
    client: openai.OpenAI, fresh_sim: SimProcess
) -> None:
    for url in ("http://169.254.169.254/latest/meta-data/", "file:///etc/passwd"):
        with pytest.raises(openai.BadRequestError) as exc:
            client.chat.completions.create(model="guarded", messages=image(url))  # type: ignore[arg-type]
        assert isinstance(exc.value.body, dict)
        assert exc.value.body["param"] == "messages.0.content.1.image_url.url"
    assert fresh_sim.requests() == []
    client.chat.completions.create(model="guarded", messages=image(IMAGE_DATA))  # type: ignore[arg-type]
    assert fresh_sim.last_request()["messages"][0]["content"][1]["image_url"]["url"] == IMAGE_DATA
    client.chat.completions.create(model="media", messages=image("https://example.com/cat.png"))  # type: ignore[arg-type]
    assert len(fresh_sim.requests()) == 2  # allowed where the profile says remote_media


def test_default_backend_names_hide_addresses(
    policy_gateway: GatewayServer, sim: SimProcess, caplog: pytest.LogCaptureFixture
) -> None:
    port = sim.url.rsplit(":", 1)[1]
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        names = {
            httpx.post(
                policy_gateway.base_url + "/chat/completions",
                json={"model": "dropping", "messages": USER},
                timeout=10,
            ).headers["x-gateway-backend"]
            for _ in range(4)
        }
        named = httpx.post(
            policy_gateway.base_url + "/chat/completions",
            json={"model": "media", "messages": USER},
            timeout=10,
        )
    assert names == {"b0", "b1"} and named.headers["x-gateway-backend"] == "vllm-a"
    metrics = scrape(policy_gateway.url)
    assert value(metrics, "gateway_requests_total", model="dropping", backend="b0") >= 1
    assert value(metrics, "gateway_backend_up", model="guarded", backend="b0") == 1
    exposed = httpx.get(policy_gateway.url + "/metrics").text
    assert port not in exposed and "127.0.0.1" not in exposed and "localhost" not in exposed
    access = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
    assert access and not any(port in line for line in access)
