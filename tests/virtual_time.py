"""A virtual-time event loop for socket-free tests: when nothing is ready to run, the clock
jumps to the next timer, so a 30 s timeout takes microseconds and is exact.

``loop.time()`` is what ``asyncio.timeout_at``, ``asyncio.sleep`` and ``call_later`` use, so
code under test needs no clock parameter. Only for coroutines that do no real I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__()
        self._virtual_now = 0.0

    def time(self) -> float:
        return self._virtual_now

    def _run_once(self) -> None:
        ready: Any = self._ready  # type: ignore[attr-defined]
        scheduled: Any = self._scheduled  # type: ignore[attr-defined]
        if not ready and scheduled:
            # the earliest live timer (cancelled ones stay in the heap until popped)
            live = [h.when() for h in scheduled if not h.cancelled()]
            if live and min(live) > self._virtual_now:
                self._virtual_now = min(live)
        super()._run_once()  # type: ignore[misc]


def run_virtual(coro: Coroutine[Any, Any, T]) -> tuple[T, float]:
    """Run ``coro`` on a fresh virtual-time loop; return its result and the virtual seconds
    it took."""
    loop = VirtualTimeLoop()
    try:
        result = loop.run_until_complete(coro)
        return result, loop.time()
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
