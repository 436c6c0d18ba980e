"""``ProfileStore``: every failure is a counted refusal, and the watcher outlives all of them."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from gateway.errors import ProfileError
from gateway.profiles import load_profiles
from gateway.reload import ProfileStore
from gateway.tokens import TokenizerCache


async def until(check: Callable[[], object], what: str, seconds: float = 10) -> None:
    """Poll ``check`` without blocking the event loop (the watcher runs on it)."""
    for _ in range(int(seconds / 0.05)):
        if check():
            return
        await anyio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def good(stop: int) -> str:
    return f"models: {{m: {{backends: [{{url: 'http://127.0.0.1:1'}}], stop_token_ids: [{stop}]}}}}"


def broken_tokenizer(directory: Path) -> Path:
    """Valid JSON that ``transformers`` chokes on with a ``KeyError`` (not a ValueError)."""
    directory.mkdir()
    (directory / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nope"}}')
    (directory / "tokenizer_config.json").write_text("{}")
    return directory


async def test_an_unexpected_exception_while_loading_is_a_counted_refusal(
    tmp_path: Path,
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(good(1))
    store = ProfileStore(str(path), load_profiles(path), TokenizerCache())
    results: list[str] = []
    store.on_result = results.append
    tok = broken_tokenizer(tmp_path / "tok")
    path.write_text(
        f"models: {{m: {{backends: [{{url: 'http://h'}}], tokenizer: '{tok}', stop_tokens: [x]}}}}"
    )
    with pytest.raises(ProfileError) as exc:
        await store.reload("test")
    assert exc.value.errors == [f"{path}: could not be loaded (KeyError: 'added_tokens')"]
    assert store.counts["refused"] == 1 and results == ["refused"]
    assert store.last_error == exc.value.errors
    path.write_text(good(2))
    await store.reload("test")
    assert store.current.models["m"].stop_token_ids == (2,) and store.last_error is None


async def test_watcher_survives_its_directory_vanishing_and_applies_the_next_file(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "config"
    directory.mkdir()
    path = directory / "p.yaml"
    path.write_text(good(1))
    store = ProfileStore(str(path), load_profiles(path), TokenizerCache())
    store.start_watching(debounce_ms=50)
    try:
        await anyio.sleep(0.3)
        shutil.rmtree(directory)  # the watched directory is gone
        await anyio.sleep(1.5)
        directory.mkdir()
        path.write_text(good(7))
        await until(lambda: store.current.models["m"].stop_token_ids == (7,), "7", 15)
        assert store._watcher is not None and not store._watcher.done()
        path.write_text("models: " + "[" * 3000)  # refused ...
        await until(lambda: store.last_error, "the refusal")
        assert "nested deeper than 64 levels" in store.last_error[0]
        path.write_text(good(8))  # ... and the next good file applied
        await until(lambda: store.current.models["m"].stop_token_ids == (8,), "8")
    finally:
        await store.aclose()
