"""Sans-I/O stop-text matcher: withhold leaked end-of-turn text from a stream of deltas.

The first occurrence of any stop string, and everything after it, is never released, even
when the stop string is split across deltas. Only as many trailing characters as could
start a stop string are held back; they are released as soon as they cannot.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopTextMatcher:
    """``feed(text) -> (releasable_text, hit)``; ``flush()`` releases what is held."""

    __slots__ = ("_held", "_max", "_stops", "hit", "matched")

    def __init__(self, stops: Sequence[str]) -> None:
        if not stops or any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        self._stops = tuple(stops)
        self._max = max(len(s) for s in self._stops) - 1
        self._held = ""
        self.hit = False
        #: the stop string that matched, once ``hit``
        self.matched: str | None = None

    @property
    def holding(self) -> bool:
        """Text is held back (it could begin a stop string)."""
        return bool(self._held)

    def feed(self, text: str) -> tuple[str, bool]:
        if self.hit:
            return "", True
        s = self._held + text if self._held else text
        if not s:
            return "", False
        best = -1
        for stop in self._stops:
            i = s.find(stop)
            if i != -1 and (best == -1 or i < best):
                best, self.matched = i, stop
        keep = self._partial_suffix(s)
        if best != -1:
            start = len(s) - keep
            if keep and start < best:
                # a stop that starts earlier may still be completing: decide on more text
                # (the later one found here is still in the held text then)
                self._held = s[start:]
                return s[:start], False
            self.hit = True
            self._held = ""
            return s[:best], True
        if keep:
            self._held = s[-keep:]
            return s[:-keep], False
        self._held = ""
        return s, False

    def _partial_suffix(self, s: str) -> int:
        """Length of the longest suffix of ``s`` that is a proper prefix of a stop string."""
        longest = 0
        tail_len = min(len(s), self._max)
        n = len(s)
        for stop in self._stops:
            top = min(tail_len, len(stop) - 1)
            # Quick reject (the common case): the stop's first char is not in the tail.
            if top <= longest or s.find(stop[0], n - top) == -1:
                continue
            for k in range(top, longest, -1):
                if s.endswith(stop[:k]):
                    longest = k
                    break
        return longest

    def flush(self) -> str:
        """End of input: release what is held, up to a stop it contains (then ``hit``)."""
        held, self._held = self._held, ""
        if self.hit:
            return ""
        found = [(i, stop) for stop in self._stops if (i := held.find(stop)) != -1]
        if found:
            i, self.matched = min(found)
            self.hit = True
            return held[:i]
        return held
