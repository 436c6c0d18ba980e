from __future__ import annotations

import pytest

from gateway.sse import SSEDecoder

STREAM = (
    b": keep-alive\r\n\r\n"
    b'data: {"a": "\xc3\xa9\xe2\x96\x81"}\n\n'
    b"data: line1\r\ndata: line2\r\n\r\n"
    b"event: ping\nid: 7\nretry: 100\ndata:nospace\n\n"
    b"data: cr-only\r\r"
    b"data: [DONE]\n\n"
)
EXPECTED = [b'{"a": "\xc3\xa9\xe2\x96\x81"}', b"line1\nline2", b"nospace", b"cr-only", b"[DONE]"]


def decode(parts: list[bytes]) -> tuple[list[bytes], int]:
    d = SSEDecoder()
    out = [ev for p in parts for ev in d.feed(p)]
    return out + d.flush(), d.comments


@pytest.mark.parametrize("split", range(len(STREAM) + 1))
def test_sse_decoder_every_split_point(split: int) -> None:
    events, comments = decode([STREAM[:split], STREAM[split:]])
    assert events == EXPECTED
    assert comments == 1


def test_sse_decoder_byte_by_byte() -> None:
    events, _ = decode([STREAM[i : i + 1] for i in range(len(STREAM))])
    assert events == EXPECTED


def test_sse_decoder_flush_delivers_unterminated_event() -> None:
    d = SSEDecoder()
    assert d.feed(b"data: a\n\ndata: tail") == [b"a"]
    assert d.flush() == [b"tail"]
    assert d.flush() == []


def test_sse_decoder_blank_lines_without_data_dispatch_nothing() -> None:
    d = SSEDecoder()
    assert d.feed(b"\n\n\r\n: c\n\nevent: x\n\n") == []
