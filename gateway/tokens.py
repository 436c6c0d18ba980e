"""Stop tokens by name -> token ids, through the model's own tokenizer (``transformers``).

Only local files are read (``local_files_only``): a local tokenizer directory, or a model id
already in the Hugging Face cache. Loaded tokenizers are cached per directory and file
modification times, so a reload re-reads a tokenizer only when its files changed. Loading is
blocking: callers run it off the event loop.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)


class TokenizerCache:
    """Resolves stop-token names for profiles; one per :class:`reload.ProfileStore`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, tuple[float, ...]], tuple[Any, list[int]]] = {}

    def _stamp(self, source: str) -> tuple[float, ...]:
        d = Path(source)
        if not d.is_dir():
            return ()
        return tuple((d / f).stat().st_mtime if (d / f).exists() else 0.0 for f in _TOKENIZER_FILES)

    def _load(self, source: str) -> tuple[Any, list[int]]:
        key = (source, self._stamp(source))
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                return hit
            from transformers import AutoTokenizer  # heavy import: only when a profile needs it

            try:
                tok = AutoTokenizer.from_pretrained(source, local_files_only=True)
            except (OSError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ValueError(f"cannot load tokenizer {source!r}: {first}") from None
            eos: list[int] = []
            if tok.eos_token_id is not None:
                eos.append(int(tok.eos_token_id))
            gen = Path(source) / "generation_config.json"
            if gen.is_file():
                try:
                    value = json.loads(gen.read_text()).get("eos_token_id")
                except (OSError, json.JSONDecodeError) as exc:
                    raise ValueError(f"cannot read {gen}: {exc}") from None
                eos += [
                    int(v) for v in (value if isinstance(value, list) else [value]) if v is not None
                ]
            entry = (tok, eos)
            self._cache = {k: v for k, v in self._cache.items() if k[0] != source}
            self._cache[key] = entry
            return entry

    def resolve(self, source: str, names: Sequence[str], with_eos: bool) -> list[int]:
        """Ids of ``names`` (in order), then the eos ids if ``with_eos``.

        Raises ``ValueError`` naming the first unknown token."""
        tok, eos = self._load(source)
        vocab = tok.get_vocab()
        ids = []
        for name in names:
            if name not in vocab:
                raise ValueError(f"unknown token {name!r} in tokenizer {source!r}")
            ids.append(int(vocab[name]))
        if with_eos:
            ids += eos
        return list(dict.fromkeys(ids))
