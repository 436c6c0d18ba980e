"""Hostile profile files: bounded refusals before Python objects are built (issue #12)."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import pytest

from gateway import profile_yaml
from gateway.errors import ProfileError
from gateway.profile_yaml import MAX_DEPTH, MAX_NODES, MAX_PROFILE_BYTES, load_yaml
from gateway.profiles import load_profiles, parse_profiles
from gateway.values import MAX_BLOCK_BYTES, MAX_VALUE_DEPTH

OK = 'backends: [{url: "http://127.0.0.1:8000"}]'


def errors_of(text: str) -> list[str]:
    with pytest.raises(ProfileError) as exc:
        parse_profiles(text, "<t>")
    return exc.value.errors


def alias_bomb(levels: int, width: int = 10, where: str = "defaults") -> str:
    """``width ** levels`` leaves under ``models.m.<where>.bomb`` (a billion laughs)."""
    lines = ['  a0: &a0 ["lol"]']
    for i in range(1, levels + 1):
        lines.append(f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return (
        "x-anchors:\n"
        + "\n".join(lines)
        + f"\nmodels:\n  m:\n    {OK}\n    {where}: {{bomb: *a{levels}}}\n"
    )


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("levels", [5, 7, 9])
def test_alias_bomb_is_refused_before_construction(levels: int) -> None:
    before = maxrss_mib()
    started = time.process_time()
    errs = errors_of(alias_bomb(levels))
    assert errs == [
        # a5 (line 7) is the first anchor whose expansion (111,111 nodes) is over the bound
        f"<t>: aliases expand to more than {MAX_NODES} YAML nodes at line 7, column 7 "
        "(an alias bomb?)"
    ]
    # refused on the composed graph: no expansion was built (10^9 leaves would be GBs)
    assert time.process_time() - started < 1
    assert maxrss_mib() - before < 20


def test_merge_key_bomb_is_refused() -> None:
    lines = ["  m0: &m0 {k: v}"]
    for i in range(1, 10):
        lines.append(f"  m{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * 10) + "]}")
    text = "x:\n" + "\n".join(lines) + f"\nmodels: {{m: {{{OK}}}}}\n"
    assert "aliases expand to more than" in errors_of(text)[0]


def test_small_alias_use_is_fine() -> None:
    ps = parse_profiles(
        f"models:\n  a: &base {{{OK}, defaults: {{temperature: 0.5}}}}\n  b: {{<<: *base}}\n"
    )
    assert ps.models["b"].defaults == {"temperature": 0.5}


def test_recursive_alias_is_refused() -> None:
    assert errors_of("models: &a {m: *a}") == ["<t>: a recursive alias at line 1, column 9"]
    assert "a recursive alias" in errors_of("x: &l [1, *l]\nmodels: {}")[0]


@pytest.mark.parametrize("opener", ["[", "{a: "])
def test_deep_nesting_is_a_clear_refusal_not_a_recursion_error(opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    errs = errors_of("models: " + opener * 3000 + "1" + closer * 3000)
    assert len(errs) == 1 and errs[0].startswith(f"<t>: nested deeper than {MAX_DEPTH} levels")
    assert "line 1" in errs[0]


def test_nesting_within_the_bound_is_read() -> None:
    assert load_yaml("x: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1), "<t>") == {
        "x": eval("[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1))
    }


def test_aliases_cannot_nest_deeper_than_the_file_does() -> None:
    lines = ["  d0: &d0 " + "[" * 40 + "]" * 40]
    for i in range(1, 4):
        lines.append(f"  d{i}: &d{i} " + "[" * 30 + f"*d{i - 1}" + "]" * 30)
    text = "x:\n" + "\n".join(lines) + "\n"
    assert "aliases expand to a nesting deeper than" in errors_of(text)[0]


def test_too_many_nodes_without_aliases() -> None:
    text = "x: [" + ",".join(["1"] * (MAX_NODES + 10)) + "]"
    assert f"more than {MAX_NODES} YAML nodes" in errors_of(text)[0]


def test_file_size_bound(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text(f"models: {{m: {{{OK}}}}}\n" + "#" * MAX_PROFILE_BYTES)
    with pytest.raises(ProfileError, match=f"larger than {MAX_PROFILE_BYTES} bytes"):
        load_profiles(big)
    assert errors_of("#" * (MAX_PROFILE_BYTES + 1)) == [
        f"<t>: larger than {MAX_PROFILE_BYTES} bytes"
    ]


def test_reading_is_bounded_and_refuses_what_is_not_a_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # a writer-less FIFO: reading it would block for ever
    with pytest.raises(ProfileError, match="not a regular file"):
        profile_yaml.read_profile_text(fifo)
    with pytest.raises(ProfileError, match="not a regular file"):
        profile_yaml.read_profile_text(tmp_path)
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"models: {\xe9: 1}")
    with pytest.raises(ProfileError, match="not UTF-8"):
        profile_yaml.read_profile_text(bad)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("9" * 5000, "<t>: invalid YAML value: Exceeds the limit"),
        ("2024-13-45", "<t>: invalid YAML value: month must be in 1..12"),
        ("!!binary 'not base64!'", "<t>: invalid YAML"),
        ("!!python/object:os.system {}", "<t>: invalid YAML"),
    ],
)
def test_scalars_that_break_the_constructor_are_refusals(value: str, expected: str) -> None:
    errs = errors_of(f"models: {{m: {{{OK}, defaults: {{x: {value}}}}}}}")
    assert errs[0].startswith(expected), errs


# -- values that validate but would break every request ----------------------------------


@pytest.mark.parametrize(
    ("defaults", "expected"),
    [
        ("{x: " + "[" * 300 + "]" * 300 + "}", "<t>: nested deeper than 64 levels"),
        (
            "{x: " + "[" * (MAX_VALUE_DEPTH + 1) + "]" * (MAX_VALUE_DEPTH + 1) + "}",
            f"models.m.defaults: x: nested deeper than {MAX_VALUE_DEPTH} levels",
        ),
        ("{x: 99999999999999999999}", "models.m.defaults: x: integers must fit in 64 bits"),
        ("{x: {1: 2}}", "models.m.defaults: x: mapping keys must be strings, got 1"),
        ("{x: 2024-01-01}", "models.m.defaults: x: not a JSON value (date)"),
        ("{x: !!binary aGk=}", "models.m.defaults: x: not a JSON value (bytes)"),
        ("{x: [.nan]}", "models.m.defaults: x.0: must be a finite number, got nan"),
        ("{x: '" + "a" * MAX_BLOCK_BYTES + "'}", f"more than {MAX_BLOCK_BYTES} bytes as JSON"),
        ("{seed: 99999999999999999999}", "models.m.defaults.seed: must be <="),
        ("{temperature: .inf}", "models.m.defaults.temperature:"),
        ("{stream: true}", "models.m.defaults: stream: set by the client and the gateway"),
        ("{messages: []}", "models.m.defaults: messages: set by the client and the gateway"),
    ],
)
def test_free_form_values_are_bounded(defaults: str, expected: str) -> None:
    errs = errors_of(f"models: {{m: {{{OK}, defaults: {defaults}}}}}")
    assert any(expected in e for e in errs), errs


def test_free_form_values_within_bounds_pass() -> None:
    nested = "[" * MAX_VALUE_DEPTH + "1" + "]" * MAX_VALUE_DEPTH
    ps = parse_profiles(
        f"models: {{m: {{{OK}, defaults: {{x: {nested}, logit_bias: {{'42': -100}}}}}}}}"
    )
    assert ps.models["m"].defaults["logit_bias"] == {"42": -100}


def test_variant_values_are_bounded_too() -> None:
    errs = errors_of(
        f"models: {{m: {{{OK}, variants: {{v: {{overrides: {{x: 99999999999999999999}}}}}}}}}}"
    )
    assert errs == ["models.m.variants.v.overrides: x: integers must fit in 64 bits"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("health: {interval: 0.000001}", "health.interval: must be 0 (off) or >= 0.5, got 1e-06"),
        ("health: {interval: 0.2}", "health.interval: must be 0 (off) or >= 0.5, got 0.2"),
        ("health: {interval: 1e9}", "health.interval: must be <= 3600"),
        ("health: {interval: .nan}", "health.interval:"),
        ("health: {timeout: 1e300}", "health.timeout: must be <= 60"),
        ("timeouts: {heartbeat: 0.00001}", "timeouts.heartbeat: must be 0 (off) or >= 0.1"),
        ("timeouts: {total: .inf}", "timeouts.total:"),
        ("timeouts: {idle: 1e300}", "timeouts.idle: must be <= 86400"),
        ("timeouts: {connect: 0}", "timeouts.connect: must be >= 0.001"),
        ("limits: {body_timeout: 1e-9}", "limits.body_timeout: must be >= 0.01"),
        ("limits: {max_body_bytes: 1e12}", "limits.max_body_bytes:"),
    ],
)
def test_intervals_and_timeouts_are_bounded(text: str, expected: str) -> None:
    errs = errors_of(f"{text}\nmodels: {{m: {{{OK}}}}}")
    assert any(e.startswith(expected) for e in errs), errs


def test_off_and_bounds_are_accepted() -> None:
    ps = parse_profiles(
        "health: {interval: 0, timeout: 0.5, cooloff: 0}\n"
        "timeouts: {heartbeat: 0, first_token: 0.001, total: 86400}\n"
        f"models: {{m: {{{OK}, timeouts: {{heartbeat: 0.25}}}}}}"
    )
    assert ps.health.interval == 0 and ps.models["m"].timeouts.heartbeat == 0.25


def test_lists_are_bounded() -> None:
    ids = ", ".join(["1"] * 1025)
    assert (
        "models.m.stop_token_ids:"
        in errors_of(f"models: {{m: {{{OK}, stop_token_ids: [{ids}]}}}}")[0]
    )
    errs = errors_of(f"models: {{m: {{{OK}, stop_token_ids: [4294967296]}}}}")
    assert errs == ["models.m.stop_token_ids: token ids must be < 2**31, got 4294967296"]


# -- backend URLs and names -----------------------------------------------------------------


def test_credentials_in_a_backend_url_are_refused_without_echoing_them() -> None:
    errs = errors_of("models: {m: {backends: [{url: 'http://user:s3cret@vllm:8000/'}]}}")
    assert len(errs) == 1 and errs[0].startswith("models.m.backends.0.url: credentials")
    assert "api_key_env" in errs[0] and "http://***@vllm:8000" in errs[0]
    assert "s3cret" not in errs[0] and "user" not in errs[0]
    errs = errors_of("models: {m: {backends: [{url: 'http://Zq9xK@vllm'}]}}")
    assert "Zq9xK" not in errs[0]


def test_query_and_fragment_are_refused() -> None:
    assert (
        "no query or fragment" in errors_of("models: {m: {backends: [{url: 'http://h/?k=1'}]}}")[0]
    )
    assert "no query or fragment" in errors_of("models: {m: {backends: [{url: 'http://h/#x'}]}}")[0]


def test_default_backend_names_are_positions_never_addresses() -> None:
    ps = parse_profiles(
        """
models:
  m:
    backends: [{url: "http://10.0.0.7:8000"}, {url: "http://10.0.0.8:8000", name: gpu-b}, {url: "http://10.0.0.9:8000"}]
  n:
    backends: [{url: "http://10.0.0.9:8000"}]
    variants: {v: {backends: [{url: "http://10.0.0.1:1"}, {url: "http://10.0.0.2:1"}]}}
"""
    )
    assert [b.name for b in ps.models["m"].backends] == ["b0", "gpu-b", "b2"]
    assert [b.name for b in ps.models["n"].backends] == ["b0"]
    assert [b.name for b in ps.models["n:v"].backends] == ["b0", "b1"]
    assert not any("10.0.0" in b.name for p in ps.models.values() for b in p.backends)


@pytest.mark.parametrize(
    ("backends", "expected"),
    [
        ("[{url: 'http://a'}, {url: 'http://b', name: b0}]", "two backends are named 'b0'"),
        ("[{url: 'http://a', name: x}, {url: 'http://b', name: x}]", "two backends are named 'x'"),
        ("[{url: 'http://a', name: 'has space'}]", "a backend name is 1-64 of"),
        ("[{url: 'http://a', name: 'ä'}]", "a backend name is 1-64 of"),
        ("[{url: 'http://a', name: " + "n" * 65 + "}]", "a backend name is 1-64 of"),
        ("[{url: 'http://a', name: ''}]", "a backend name is 1-64 of"),
        ("[{url: 'http://a', api_key_env: 'A B'}]", "not an environment variable name"),
    ],
)
def test_backend_names_are_checked(backends: str, expected: str) -> None:
    errs = errors_of(f"models: {{m: {{backends: {backends}}}}}")
    assert any(expected in e for e in errs), errs


# -- rate storage ---------------------------------------------------------------------------


def test_unknown_rate_storage_is_refused_without_its_password() -> None:
    errs = errors_of(f"limits: {{rate_storage: 'nosuch://:pw@h:1'}}\nmodels: {{m: {{{OK}}}}}")
    assert errs[0].startswith("limits.rate_storage: not a rate storage the gateway supports")
    assert "pw" not in errs[0]


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("memcached://u:pw@h:1", "not a rate storage the gateway supports"),
        ("mongodb://u:pw@h:1", "not a rate storage the gateway supports"),
        ("valkey://:pw@h:1", "the client library is not installed"),
        ("redis://h:1/0?password=pw", None),
        ("redis://:pw@h:notaport/0", "cannot be used"),
    ],
)
def test_rate_storage_problems_are_named_without_passwords(uri: str, expected: str | None) -> None:
    text = f"limits: {{rate_storage: '{uri}'}}\nmodels: {{m: {{{OK}}}}}"
    if expected is None:
        assert parse_profiles(text).limits.rate_storage == uri
        return
    errs = errors_of(text)
    assert len(errs) == 1 and errs[0].startswith(f"limits.rate_storage: {expected}"), errs
    assert "pw" not in errs[0] and "got '" in errs[0]


def test_a_bad_url_with_credentials_is_refused_without_them() -> None:
    errs = errors_of("models: {m: {backends: [{url: 'ftp://user:pw@h/x'}]}}")
    assert errs == [
        "models.m.backends.0.url: must be an http(s) URL like http://host:8000, got 'ftp://***@h/x'"
    ]


def test_redis_rate_storage_is_accepted_and_unreachable_redis_only_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.helpers import free_port

    port = free_port()
    path = tmp_path / "p.yaml"
    path.write_text(
        f"limits: {{key_rate: 5/minute, rate_storage: 'redis://:pw@127.0.0.1:{port}/0'}}\n"
        f"models: {{m: {{{OK}}}}}"
    )
    ps = load_profiles(path)
    assert ps.limits.rate_storage.startswith("redis://")
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "cannot reach Redis" in warning and f"127.0.0.1:{port}" in warning
    assert "pw" not in warning
