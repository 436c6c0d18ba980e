"""``ProfileStore``: the current profile snapshot, reloaded without a restart.

A reload loads, validates and resolves the whole file off the event loop, then swaps one
reference; requests read the snapshot once at their start, so streams in flight finish under
the profiles they started with. A bad file is refused with its key-path messages and the old
snapshot keeps serving; so is a file whose loading raised anything at all (counted as
``refused``, ``last_error`` set, 422 on ``/admin/reload``). The watcher outlives every
error: a failed reload, an unreadable file, even the watched directory vanishing (it
retries), so a later good file is still applied without a ``SIGHUP``.

Triggers: file changes (``watchfiles`` on the file's directory, which
also sees a Kubernetes ConfigMap swapping its ``..data`` symlink), ``SIGHUP`` and
``POST /admin/reload``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from .errors import ProfileError
from .profile_yaml import read_bounded_text
from .profiles import (
    MAX_KEYS_FILE_BYTES,
    ProfileSet,
    content_version,
    load_profiles,
)
from .tokens import TokenizerCache

log = logging.getLogger("gateway.reload")


class ProfileStore:
    """Holds the current :class:`ProfileSet`; ``current`` is swapped whole, never mutated."""

    def __init__(self, path: str | None, initial: ProfileSet, tokenizers: TokenizerCache) -> None:
        self.path = path
        self.current = initial
        self.tokenizers = tokenizers
        self.loaded_at = time.time()
        #: the key-path messages of the last refused reload (``None`` after a good one)
        self.last_error: list[str] | None = None
        self.counts = {"applied": 0, "unchanged": 0, "refused": 0}
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._pending: set[asyncio.Task[None]] = set()
        #: called with "applied" | "unchanged" | "refused" after each reload
        self.on_result: Callable[[str], None] = lambda result: None

    async def reload(self, trigger: str) -> ProfileSet:
        """Reload from ``path``; raises :class:`ProfileError` (old snapshot kept)."""
        if self.path is None:
            raise ProfileError(["no profile file to reload from"])
        async with self._lock:
            try:
                new = await asyncio.to_thread(load_profiles, self.path, self.tokenizers.resolve)
            except Exception as exc:
                if isinstance(exc, ProfileError):
                    errors = exc.errors
                else:  # a bug, not a bad file: refuse all the same, keep the traceback
                    log.error("profile reload (%s) failed", trigger, exc_info=True)
                    errors = [f"{self.path}: could not be loaded ({type(exc).__name__})"]
                self.counts["refused"] += 1
                self.on_result("refused")
                self.last_error = errors
                log.error(
                    "profile reload (%s) refused, still serving version %s: %s",
                    trigger,
                    self.current.version,
                    " | ".join(errors),
                )
                if isinstance(exc, ProfileError):
                    raise
                raise ProfileError(errors) from exc
            self.last_error = None
            if new.version == self.current.version:
                self.counts["unchanged"] += 1
                self.on_result("unchanged")
                return self.current
            old, self.current, self.loaded_at = self.current.version, new, time.time()
            self.counts["applied"] += 1
            self.on_result("applied")
            log.info(
                "profiles reloaded (%s): version %s -> %s, %d model(s)",
                trigger,
                old,
                new.version,
                len(new.models),
            )
            return new

    def trigger(self, reason: str) -> None:
        """Fire-and-forget reload (signal handlers); errors are logged by :meth:`reload`."""
        task = asyncio.get_running_loop().create_task(self._reload_quietly(reason))
        self._pending.add(task)  # keep a reference until it is done
        task.add_done_callback(self._pending.discard)

    async def _reload_quietly(self, reason: str) -> None:
        with contextlib.suppress(ProfileError):
            await self.reload(reason)

    def _changed(self) -> bool:
        """Whether a file the current snapshot was read from (the profile file, its keys
        file) changed: other files in the directory (a log file...) never cause a reload."""
        for path, digest in self.current.sources or ((self.path or "", self.current.version),):
            try:
                if _file_hash(path) != digest:
                    return True
            except ProfileError:
                return True  # let reload() report it
        return False

    def start_watching(self, debounce_ms: int = 300) -> None:
        if self.path is None or self._watcher is not None:
            return
        self._watcher = asyncio.get_running_loop().create_task(self._watch(debounce_ms))

    async def _watch(self, debounce_ms: int, retry_s: float = 1.0) -> None:
        """Watch until stopped; whatever goes wrong is logged (once per streak of failures)
        and watching starts again after ``retry_s``."""
        failing = False
        while not self._stop.is_set():
            try:
                await self._watch_once(debounce_ms)
                failing = False
            except Exception as exc:
                level = logging.DEBUG if failing else logging.ERROR
                log.log(level, "profile watcher: %s; watching again in %gs", exc, retry_s)
                failing = True
            # a vanished directory makes awatch end or raise at once: do not spin
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), retry_s)

    async def _watch_once(self, debounce_ms: int) -> None:
        """One ``awatch`` of the file's directory; raises when that directory is gone or
        replaced (its inotify watch would hear nothing more)."""
        from watchfiles import awatch

        directory = Path(self.path or ".").parent  # as given: a ConfigMap path is a symlink
        inode = (await asyncio.to_thread(os.stat, directory)).st_ino
        log.info("watching %s for profile changes", directory)
        caught_up = False
        # No filter: a ConfigMap update shows up only as ``..data``/``..<timestamp>`` entries.
        async for changes in awatch(
            directory,
            debounce=debounce_ms,
            step=50,
            watch_filter=None,
            stop_event=self._stop,
            recursive=False,
            rust_timeout=1000,
            yield_on_timeout=True,  # an empty set each second: time to look at the directory
        ):
            if changes or not caught_up:
                # the first pass (the watch is set up by now) also catches up with a change
                # made before it was, e.g. while the directory was gone
                check = self._changed if changes else self._differs
                changed: bool = await asyncio.to_thread(check)
                caught_up = True
                if changed:
                    await self._reload_quietly("file change")
            try:
                same = (await asyncio.to_thread(os.stat, directory)).st_ino == inode
            except OSError:
                same = False
            if not same:
                raise FileNotFoundError(f"{directory} was removed or replaced")

    def _differs(self) -> bool:
        """The files are readable and not the ones being served."""
        try:
            for path, digest in self.current.sources or ((self.path or "", self.current.version),):
                if _file_hash(path) != digest:
                    return True
        except ProfileError:
            return False
        return False

    async def aclose(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None


def _file_hash(path: str) -> str:
    """The content hash a source was loaded with (profile files and keys files alike)."""
    return content_version(read_bounded_text(path, MAX_KEYS_FILE_BYTES, "{path}: {why}"))
