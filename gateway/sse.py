"""Sans-I/O Server-Sent Events decoder: bytes in, ``data`` payloads out.

Follows the WHATWG event-stream rules the upstream relies on: lines end in LF, CRLF or CR;
``:`` starts a comment (vLLM and proxies send ``: keep-alive``); consecutive ``data:`` lines
join with LF; a blank line dispatches the event. Input may be split anywhere, including
inside a multi-byte UTF-8 character or between CR and LF.

Bounded: an event (its lines, or one line still without its end) larger than
``max_event_bytes`` raises :class:`EventTooLarge`; input without a line end is kept as a
list of pieces, so a never-ending line costs linear, not quadratic, time.
"""

from __future__ import annotations

#: the default bound of one event; vLLM's largest (logprobs, merged chunks) are far smaller
MAX_EVENT_BYTES = 4 * 1024 * 1024


class EventTooLarge(Exception):
    """An upstream event (or line) grew past the decoder's bound."""


class SSEDecoder:
    """``feed(bytes) -> [payload, ...]``; ``flush()`` at end of input."""

    __slots__ = ("_data", "_data_len", "_limit", "_pending", "_pending_len", "comments")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._limit = max_event_bytes
        #: input after the last line end, in pieces
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._data: list[bytes] = []
        self._data_len = 0
        #: comment lines seen (keep-alives); informational
        self.comments = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        if not self._pending and not self._data and chunk.endswith(b"\n\n"):
            # The common read: whole one-line ``data:`` events (vLLM's, under any load).
            parts = chunk.split(b"\n\n")
            parts.pop()
            whole = []
            for part in parts:
                if part[:6] != b"data: " or b"\n" in part or b"\r" in part:
                    break
                whole.append(part[6:])
            else:
                if len(chunk) <= self._limit:
                    return whole
        if b"\n" not in chunk and b"\r" not in chunk:
            # no line ends: keep the piece (no copy of what is already held)
            if chunk:
                self._pending.append(chunk)
                self._pending_len += len(chunk)
                if self._pending_len + self._data_len > self._limit:
                    raise EventTooLarge(f"an upstream event exceeded {self._limit} bytes")
            return []
        if self._pending:
            self._pending.append(chunk)
            buf = b"".join(self._pending)
            self._pending.clear()
            self._pending_len = 0
        else:
            buf = chunk
        if b"\r" in buf:
            # A CR at the very end may be the first half of CRLF: keep it for the next feed.
            hold = buf.endswith(b"\r")
            if hold:
                buf = buf[:-1]
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if hold:
                buf += b"\r"
        lines = buf.split(b"\n")
        rest = lines.pop()
        if rest:
            self._pending.append(rest)
            self._pending_len = len(rest)
        events: list[bytes] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data.clear()
                    self._data_len = 0
            elif line[0] == 0x3A:  # ':' comment
                self.comments += 1
            else:
                name, _, value = line.partition(b":")
                if name == b"data":
                    value = value[1:] if value[:1] == b" " else value
                    data.append(value)
                    self._data_len += len(value) + 1
                # event/id/retry and unknown fields carry nothing the gateway uses
        if self._pending_len + self._data_len > self._limit:
            raise EventTooLarge(f"an upstream event exceeded {self._limit} bytes")
        return events

    def flush(self) -> list[bytes]:
        """End of input: a pending event without its blank line is still delivered."""
        rest = b"".join(self._pending).rstrip(b"\r")
        self._pending.clear()
        self._pending_len = 0
        return self.feed(rest + b"\n\n") if rest or self._data else []
