from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ProfileError
from gateway.profiles import parse_profiles
from gateway.tokens import TokenizerCache
from tests.tokenizer_fixtures import build_tokenizer


def profile(tok: Path, body: str) -> str:
    return f"""
models:
  m:
    backends: [{{url: "http://127.0.0.1:9"}}]
    tokenizer: "{tok}"
{body}
"""


@pytest.mark.parametrize(
    ("family", "names", "ids"),
    [
        ("qwen3", ["<|im_end|>", "<|endoftext|>", "</think>"], [151645, 151643, 151668]),
        ("deepseek-r1", ["<｜end▁of▁sentence｜>", "</think>"], [151643, 151649]),
        ("llama3", ["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"], [128009, 128008, 128001]),
    ],
)
def test_stop_tokens_resolve_to_real_ids(
    tmp_path: Path, family: str, names: list[str], ids: list[int]
) -> None:
    tok = build_tokenizer(tmp_path / family, family)
    assert TokenizerCache().resolve(str(tok), names, False) == ids


def test_eos_from_tokenizer_adds_eos_and_generation_config(tmp_path: Path) -> None:
    tok = build_tokenizer(tmp_path / "q", "qwen3")
    ps = parse_profiles(
        profile(
            tok,
            "    stop_token_ids: [7]\n    stop_tokens: ['</think>']\n    eos_from_tokenizer: true",
        ),
        resolver=TokenizerCache().resolve,
    )
    assert ps.models["m"].stop_token_ids == (7, 151668, 151645, 151643)


def test_unknown_token_is_a_load_error_naming_it(tmp_path: Path) -> None:
    tok = build_tokenizer(tmp_path / "l", "llama3")
    with pytest.raises(ProfileError) as exc:
        parse_profiles(
            profile(tok, "    stop_tokens: ['<|im_end|>']"), resolver=TokenizerCache().resolve
        )
    assert exc.value.errors == [
        f"models.m.stop_tokens: unknown token '<|im_end|>' in tokenizer '{tok}'"
    ]


def test_missing_tokenizer_dir_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"models.m.stop_tokens: cannot load tokenizer"):
        parse_profiles(
            profile(tmp_path / "absent", "    stop_tokens: ['x']"),
            resolver=TokenizerCache().resolve,
        )


def test_stop_tokens_need_a_tokenizer() -> None:
    with pytest.raises(ProfileError, match="need a `tokenizer`"):
        parse_profiles("models: {m: {backends: [{url: 'http://x'}], stop_tokens: ['a']}}")


def test_tokenizer_cached_until_its_files_change(tmp_path: Path) -> None:
    tok = build_tokenizer(tmp_path / "q", "qwen3")
    cache = TokenizerCache()
    first = cache._load(str(tok))
    assert cache._load(str(tok)) is first
    gen = tok / "generation_config.json"
    gen.write_text('{"eos_token_id": 151643}')
    import os

    st = gen.stat()
    os.utime(gen, (st.st_atime, st.st_mtime + 5))
    assert cache._load(str(tok)) is not first
    assert cache.resolve(str(tok), [], True) == [151645, 151643]
