"""Sans-I/O Server-Sent Events decoder: bytes in, ``data`` payloads out.

Follows the WHATWG event-stream rules the upstream relies on: lines end in LF, CRLF or CR;
``:`` starts a comment (vLLM and proxies send ``: keep-alive``); consecutive ``data:`` lines
join with LF; a blank line dispatches the event. Input may be split anywhere, including
inside a multi-byte UTF-8 character or between CR and LF.
"""

from __future__ import annotations


class SSEDecoder:
    """``feed(bytes) -> [payload, ...]``; ``flush()`` at end of input."""

    __slots__ = ("_buf", "_data", "comments")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        #: comment lines seen (keep-alives); informational
        self.comments = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            # A CR at the very end may be the first half of CRLF: keep it for the next feed.
            hold = buf.endswith(b"\r")
            if hold:
                buf = buf[:-1]
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if hold:
                buf += b"\r"
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        if not lines:
            return []
        events: list[bytes] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data.clear()
            elif line[0] == 0x3A:  # ':' comment
                self.comments += 1
            else:
                name, _, value = line.partition(b":")
                if name == b"data":
                    data.append(value[1:] if value[:1] == b" " else value)
                # event/id/retry and unknown fields carry nothing the gateway uses
        return events

    def flush(self) -> list[bytes]:
        """End of input: a pending event without its blank line is still delivered."""
        rest = self._buf.rstrip(b"\r")
        self._buf = b""
        events = self.feed(rest + b"\n\n") if rest or self._data else []
        return events
