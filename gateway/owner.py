"""``Owner``: what one request holds, released exactly once, last acquired first.

Every release of a request is synchronous (a slot, a gauge, a lease with its connection, the
disconnect watcher's cancel, the access record), so the owner is a list run in ``finally``:
``AsyncExitStack`` semantics without its per-callback machinery, which measured about a
tenth of the gateway's CPU per non-stream request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("gateway")


class Owner:
    __slots__ = ("_releases",)

    def __init__(self) -> None:
        self._releases: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def push(self, release: Callable[..., Any], *args: Any) -> None:
        """Run ``release(*args)`` at :meth:`close` (before anything pushed earlier)."""
        self._releases.append((release, args))

    def close(self) -> None:
        """Run every release once, in reverse order; a failing release is logged and does
        not stop the others."""
        releases, self._releases = self._releases, []
        while releases:
            release, args = releases.pop()
            try:
                release(*args)
            except Exception:
                log.exception("releasing %r failed", release)
