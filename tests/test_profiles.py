from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ProfileError
from gateway.profiles import load_profiles, parse_profiles

ROOT = Path(__file__).resolve().parent.parent
OK = 'backends: [{url: "http://127.0.0.1:8000"}]'


def errors_of(text: str) -> list[str]:
    with pytest.raises(ProfileError) as exc:
        parse_profiles(text)
    return exc.value.errors


def test_shipped_profiles_load_with_the_documented_facts() -> None:
    ps = load_profiles(ROOT / "model_profiles.yaml")
    r1 = ps.models["deepseek-r1-distill-qwen-1.5b"]
    assert r1.stop_token_ids == (151643,) and r1.defaults == {"temperature": 0.6, "top_p": 0.95}
    assert r1.leading_newline and r1.system == "merge"
    qwen = ps.models["qwen3-4b-thinking-2507"]
    assert set(qwen.stop_token_ids) == {151645, 151643}
    assert qwen.defaults == {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0}
    dasd = ps.models["dasd-4b-thinking"]
    assert dasd.stop_token_ids == qwen.stop_token_ids and dasd.upstream_model != qwen.upstream_model
    llama = ps.models["llama-3.1-8b-instruct"]
    assert set(llama.stop_token_ids) == {128001, 128008, 128009}
    assert llama.timeouts.first_token == 30 and llama.timeouts.idle == 15


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f"models: {{r1: {{{OK}, defaults: {{temperature: -1}}}}}}",
            "models.r1.defaults.temperature: must be >= 0, got -1",
        ),
        (
            f"models: {{r1: {{{OK}, defaults: {{top_p: 1.5}}}}}}",
            "models.r1.defaults.top_p: must be <= 1, got 1.5",
        ),
        (
            "models: {r1: {backends: [{url: ftp://x}]}}",
            "models.r1.backends.0.url: must be an http(s) URL",
        ),
        (f"models: {{r1: {{{OK}, stop_tokn_ids: [1]}}}}", "models.r1.stop_tokn_ids: unknown key"),
        (
            f"models: {{r1: {{{OK}, stop_token_ids: [-5]}}}}",
            "models.r1.stop_token_ids: token ids must be >= 0, got -5",
        ),
        (f"models: {{r1: {{{OK}, prompt: {{system: fold}}}}}}", "models.r1.prompt.system:"),
        (
            f"timeouts: {{idle: 0}}\nmodels: {{r1: {{{OK}}}}}",
            "timeouts.idle: must be >= 0.001, got 0",
        ),
        ("models: {r1: {}}", "models.r1.backends: required key is missing"),
        ("models: {}", "models:"),
        ("models: [", "invalid YAML at line 1"),
        ("- a list", "top level must be a mapping"),
        (f"models: {{'a:b': {{{OK}}}}}", "models: value error"),
    ],
)
def test_bad_profile_errors_name_key_and_value(text: str, expected: str) -> None:
    errs = errors_of(text)
    assert any(expected.split(" value error")[0] in e for e in errs), errs
    assert all("Traceback" not in e for e in errs)


def test_missing_file_is_a_profile_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read profile file"):
        load_profiles(tmp_path / "absent.yaml")


def test_version_is_a_content_hash() -> None:
    a = parse_profiles(f"models: {{r1: {{{OK}}}}}")
    b = parse_profiles(f"models: {{r1: {{{OK}}}}}")
    c = parse_profiles(f"models: {{r2: {{{OK}}}}}")
    assert a.version == b.version != c.version


def test_per_model_timeouts_override_gateway_wide() -> None:
    ps = parse_profiles(
        f"timeouts: {{idle: 7, total: 70}}\nmodels: {{r1: {{{OK}, timeouts: {{idle: 3}}}}}}"
    )
    t = ps.models["r1"].timeouts
    assert (t.idle, t.total, t.first_token, t.connect) == (3, 70, 60, 5)


def test_variants_merge_mappings_and_replace_lists() -> None:
    ps = parse_profiles(f"""
models:
  r1:
    {OK}
    stop_token_ids: [151643]
    defaults: {{temperature: 0.6, top_p: 0.95}}
    prompt: {{leading_newline: true, system: merge}}
    variants:
      think-only: {{stop_token_ids: [151649, 151643], defaults: {{temperature: 0.3}}}}
""")
    base, v = ps.models["r1"], ps.models["r1:think-only"]
    assert v.variant == "think-only" and base.variant is None
    assert v.stop_token_ids == (151649, 151643)  # lists replace
    assert v.defaults == {"temperature": 0.3, "top_p": 0.95}  # mappings merge
    assert v.leading_newline and v.system == "merge"  # untouched fields inherited
    assert list(ps.models) == ["r1", "r1:think-only"]


def test_variant_errors_name_the_variant_path() -> None:
    errs = errors_of(f"models: {{r1: {{{OK}, variants: {{fast: {{defaults: {{top_p: 7}}}}}}}}}}")
    assert errs == ["models.r1.variants.fast.defaults.top_p: must be <= 1, got 7"]
    errs = errors_of(f"models: {{r1: {{{OK}, variants: {{'a:b': {{}}}}}}}}")
    assert any("variant name 'a:b'" in e for e in errs)


def test_shipped_think_only_variant() -> None:
    ps = load_profiles(ROOT / "model_profiles.yaml")
    v = ps.models["deepseek-r1-distill-qwen-1.5b:think-only"]
    assert v.stop_token_ids == (151649, 151643) and v.defaults["temperature"] == 0.6


def test_committed_json_schema_is_current() -> None:
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "gateway", "schema"], capture_output=True, text=True, check=True
    ).stdout
    committed = (ROOT / "model_profiles.schema.json").read_text()
    assert json.loads(out) == json.loads(committed), (
        "run: gateway schema > model_profiles.schema.json"
    )
    assert "stop_tokens" in json.loads(out)["$defs"]["ModelSpec"]["properties"]


@pytest.mark.parametrize(("text", "code"), [(None, 0), ("models: {r1: {backends: []}}", 2)])
def test_gateway_check_cli(tmp_path: Path, text: str | None, code: int) -> None:
    import json
    import subprocess
    import sys

    path = ROOT / "model_profiles.yaml"
    if text is not None:
        path = tmp_path / "bad.yaml"
        path.write_text(text)
    r = subprocess.run(
        [sys.executable, "-m", "gateway", "check", str(path)], capture_output=True, text=True
    )
    assert r.returncode == code
    if code == 0:
        assert "deepseek-r1-distill-qwen-1.5b:think-only" in json.loads(r.stdout)["models"]
    else:
        assert "models.r1.backends: list should have at least 1 item" in r.stderr
        assert "Traceback" not in r.stderr


def test_keys_file_names_models_not_variants(tmp_path: Path) -> None:
    import hashlib

    (tmp_path / "keys").write_text(hashlib.sha256(b"k").hexdigest() + " r1:short\n")
    (tmp_path / "p.yaml").write_text("""
auth: {keys_file: keys}
models:
  r1:
    backends: [{url: "http://127.0.0.1:9"}]
    variants: {short: {defaults: {max_tokens: 5}}}
""")
    with pytest.raises(ProfileError) as exc:
        load_profiles(tmp_path / "p.yaml")
    assert "r1:short: name the model" in exc.value.errors[0]
