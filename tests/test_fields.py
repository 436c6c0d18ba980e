"""The field policy (issue #12): which request fields and media reach vLLM."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import ProfileError, RequestError
from gateway.fields import DEFAULT_DENIED_FIELDS, FieldPolicy, apply_field_policy, check_media
from gateway.profiles import LimitsSpec, parse_profiles
from gateway.transform import build_upstream_body, check_request

USER = [{"role": "user", "content": "hi"}]
PROFILES = parse_profiles("""
models:
  default:
    backends: [{url: "http://127.0.0.1:1"}]
  strict:
    backends: [{url: "http://127.0.0.1:1"}]
    request_policy: {allow: [temperature, max_tokens], deny: [], on_denied: reject}
  lenient:
    backends: [{url: "http://127.0.0.1:1"}]
    request_policy: {deny: [priority, chat_template], on_denied: drop}
  open:
    backends: [{url: "http://127.0.0.1:1"}]
    request_policy: {deny: [], remote_media: true, embeddings: true}
  templated:
    backends: [{url: "http://127.0.0.1:1"}]
    overrides: {chat_template: null, cache_salt: null, temperature: null, top_k: 5}
    variants:
      keep-salt: {overrides: {cache_salt: "operator"}}
""")


def admit(model: str, body: dict[str, Any]) -> dict[str, Any]:
    body = {"model": model, "messages": USER, **body}
    check_request(body, "chat", PROFILES.models[model], LimitsSpec(), 10)
    return body


@pytest.mark.parametrize("name", sorted(DEFAULT_DENIED_FIELDS))
def test_each_default_denied_field_is_a_400_naming_it(name: str) -> None:
    with pytest.raises(RequestError) as exc:
        admit("default", {name: {"x": 1} if name.endswith(("kwargs", "params", "xargs")) else "v"})
    assert exc.value.status == 400 and exc.value.param == name
    assert exc.value.message == f"{name}: this field is not accepted for model `default`"


def test_default_policy_lets_ordinary_and_harmless_vllm_fields_through() -> None:
    fields = {
        "temperature": 0.5,
        "top_k": 20,
        "chat_template_kwargs": {"enable_thinking": False},
        "cache_salt": "mine",
        "stop_token_ids": [1],
        "include_stop_str_in_output": True,
        "structured_outputs": {"json": {"type": "object"}},
    }
    assert admit("default", dict(fields)) == {"model": "default", "messages": USER, **fields}


def test_null_counts_as_not_sent_and_is_not_forwarded() -> None:
    body = admit("default", {"chat_template": None, "priority": None})
    assert "chat_template" not in body and "priority" not in body


def test_prompt_embeds_needs_embeddings() -> None:
    body = {"model": "default", "prompt": "x", "prompt_embeds": "AAAA"}
    with pytest.raises(RequestError, match="prompt_embeds: this field is not accepted"):
        check_request(body, "completions", PROFILES.models["default"], LimitsSpec(), 1)
    body = {"model": "open", "prompt": "x", "prompt_embeds": "AAAA"}
    check_request(body, "completions", PROFILES.models["open"], LimitsSpec(), 1)


def test_allow_list_admits_only_its_fields_and_the_requests_own() -> None:
    body = admit("strict", {"temperature": 0.1, "stream": True, "stream_options": {}})
    assert body["temperature"] == 0.1
    with pytest.raises(RequestError, match="top_p: this field is not accepted"):
        admit("strict", {"top_p": 0.5})


def test_drop_removes_denied_fields_silently() -> None:
    body = admit("lenient", {"priority": -10, "chat_template": "{{x}}", "request_id": "r"})
    assert "priority" not in body and "chat_template" not in body
    assert body["request_id"] == "r"  # this profile's list replaced the default one


def test_overrides_null_removes_a_field_and_variants_can_set_it_again() -> None:
    client = {"model": "templated", "messages": USER, "cache_salt": "c", "temperature": 1.5}
    out, _ = build_upstream_body(client, PROFILES.models["templated"], "chat")
    assert "cache_salt" not in out and "temperature" not in out and out["top_k"] == 5
    out, _ = build_upstream_body(client, PROFILES.models["templated:keep-salt"], "chat")
    assert out["cache_salt"] == "operator" and "temperature" not in out
    assert PROFILES.models["templated"].remove == ("temperature", "chat_template", "cache_salt")


def test_profile_cannot_remove_or_set_the_requests_own_fields() -> None:
    for field in ("model", "messages", "prompt", "stream", "stream_options", "n"):
        with pytest.raises(ProfileError, match=f"overrides: {field}: set by the client"):
            parse_profiles(
                f"models: {{m: {{backends: [{{url: 'http://h'}}], overrides: {{{field}: null}}}}}}"
            )


def test_policy_lists_are_checked() -> None:
    with pytest.raises(ProfileError, match="not a request field name"):
        parse_profiles(
            "models: {m: {backends: [{url: 'http://h'}], request_policy: {deny: ['a b']}}}"
        )


def parts(*content: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(content)}]


DATA = "data:image/png;base64,iVBORw0KGgo="


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest/meta-data"}},
        {"type": "image_url", "image_url": {"url": " HTTPS://example.com/x.png"}},
        {"type": "image_url", "image_url": "https://example.com/x.png"},
        {"image_url": "https://example.com/x.png"},
        {"type": "input_image", "image_url": "https://example.com/x.png"},
        {"type": "audio_url", "audio_url": {"url": "https://example.com/a.wav"}},
        {"type": "video_url", "video_url": {"url": "http://example.com/v.mp4"}},
    ],
)
def test_remote_media_urls_are_refused_by_default(part: dict[str, Any]) -> None:
    with pytest.raises(RequestError, match="remote media URLs are not accepted") as exc:
        check_media(parts({"type": "text", "text": "look"}, part), FieldPolicy())
    assert exc.value.param is not None and exc.value.param.startswith("messages.0.content.1.")
    check_media(parts(part), FieldPolicy(remote_media=True))  # allowed when the profile says


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://h/x", "/etc/passwd", "gopher://x"])
def test_other_schemes_are_always_refused(url: str) -> None:
    for policy in (FieldPolicy(), FieldPolicy(remote_media=True)):
        with pytest.raises(RequestError, match="only data: URLs"):
            check_media(parts({"type": "image_url", "image_url": {"url": url}}), policy)


def test_data_urls_and_text_pass() -> None:
    check_media(
        parts({"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": DATA}}),
        FieldPolicy(),
    )


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_embeds", "image_embeds": "AAAA"},
        {"image_embeds": "AAAA"},
        {"type": "prompt_embeds", "data": "x"},
    ],
)
def test_embedding_parts_need_embeddings(part: dict[str, Any]) -> None:
    with pytest.raises(RequestError, match="embedding inputs are not accepted"):
        check_media(parts(part), FieldPolicy())
    check_media(parts(part), FieldPolicy(embeddings=True))


def test_media_check_runs_at_admission() -> None:
    with pytest.raises(RequestError, match="remote media"):
        admit(
            "default", {"messages": parts({"type": "image_url", "image_url": {"url": "http://x"}})}
        )
    admit("open", {"messages": parts({"type": "image_url", "image_url": {"url": "http://x"}})})


def test_apply_field_policy_keeps_the_body_when_nothing_is_denied() -> None:
    body = {"model": "m", "messages": USER, "temperature": 0.3}
    apply_field_policy(body, FieldPolicy(), "m")
    assert body == {"model": "m", "messages": USER, "temperature": 0.3}
