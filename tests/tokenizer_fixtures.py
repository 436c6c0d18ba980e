"""Small tokenizer folders built with ``tokenizers``, special tokens at the real ids of the
models we serve, loadable with ``transformers.AutoTokenizer.from_pretrained(dir)``."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

FAMILIES: dict[str, dict[str, object]] = {
    "qwen3": {
        "special": {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645},
        "plain": {"<think>": 151667, "</think>": 151668},
        "eos": "<|im_end|>",
        "generation_eos": [151645, 151643],
    },
    "deepseek-r1": {
        "special": {"<｜begin▁of▁sentence｜>": 151646, "<｜end▁of▁sentence｜>": 151643},
        "plain": {"<think>": 151648, "</think>": 151649},
        "eos": "<｜end▁of▁sentence｜>",
        "generation_eos": 151643,
    },
    "llama3": {
        "special": {
            "<|begin_of_text|>": 128000,
            "<|end_of_text|>": 128001,
            "<|eom_id|>": 128008,
            "<|eot_id|>": 128009,
        },
        "plain": {},
        "eos": "<|eot_id|>",
        "generation_eos": [128001, 128008, 128009],
    },
}


def build_tokenizer(directory: Path, family: str) -> Path:
    spec = FAMILIES[family]
    special: dict[str, int] = spec["special"]  # type: ignore[assignment]
    plain: dict[str, int] = spec["plain"]  # type: ignore[assignment]
    vocab = {"<unk>": 0, "hello": 1, "world": 2, **special, **plain}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(t, special=True) for t in special])
    tok.add_tokens([AddedToken(t, special=False) for t in plain])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": spec["eos"],
                "unk_token": "<unk>",
            }
        )
    )
    (directory / "generation_config.json").write_text(
        json.dumps({"eos_token_id": spec["generation_eos"]})
    )
    return directory
