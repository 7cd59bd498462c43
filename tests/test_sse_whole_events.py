"""The SSE decoder's shortcut for chunks of whole one-line data events reads them as the
WHATWG rules do, whatever else the chunk holds and however the stream is split."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.upstreams.sse import MAX_EVENT_BYTES, SSEDecoder


def decoded(*chunks: bytes) -> tuple[list[bytes], bool]:
    seen: list[bytes] = []
    decoder = SSEDecoder(seen.append)
    for piece in chunks:
        decoder.feed(piece)
    return seen, decoder.overflowed


def bytewise(stream: bytes) -> tuple[list[bytes], bool]:
    """The reference: one byte at a time never takes a shortcut."""
    return decoded(*(stream[i : i + 1] for i in range(len(stream))))


@pytest.mark.parametrize(
    ("chunk", "events"),
    [
        (b'data: {"a":1}\n\ndata: {}\n\ndata: [DONE]\n\n', [b'{"a":1}', b"{}", b"[DONE]"]),
        (b"data: a\n\ndata: one\ndata: two\n\ndata: b\n\n", [b"a", b"one\ntwo", b"b"]),
        (b"data: a\n\n: ping\n\ndata: b\n\n", [b"a", b"b"]),
        (b"data: a\n\nevent: x\ndata: b\n\n", [b"a", b"b"]),
        (b"data: a\n\ndata:b\n\ndata:  c\n\n", [b"a", b"b", b" c"]),
        (b"data: a\n\ndata: \n\ndata: c\n\n", [b"a", b"", b"c"]),
        (b"data: a\r\n\r\ndata: b\n\n", [b"a", b"b"]),
        (b"data: a\n\ndata: b\rc\n\n", [b"a", b"b"]),  # a lone CR ends a line: "c" is a field
        (b"data: a\n\ndata: b\n\n\n", [b"a", b"b"]),  # a blank line too many
        (b"data: a\n\ndata: b\n\ndata: c", [b"a", b"b"]),  # cut mid-event
        (b"data: a\n\ndata: b\n", [b"a"]),  # cut before the blank line
        (b"\xef\xbb\xbfdata: a\n\ndata: b\n\n", [b"a", b"b"]),  # a BOM opening the stream
    ],
    ids=[
        "done among them", "multi-line", "comment", "event field", "no or two spaces",
        "empty data", "crlf", "cr inside", "extra blank line", "cut mid-event",
        "cut before blank", "bom",
    ],
)  # fmt: skip
def test_several_events_in_one_chunk_read_as_one_byte_at_a_time(chunk, events) -> None:
    assert decoded(chunk) == (events, False) == bytewise(chunk)


def test_an_event_cut_at_the_chunk_end_is_finished_by_the_next() -> None:
    assert decoded(b"data: a\n\ndata: b", b"c\n\ndata: d\n\n") == ([b"a", b"bc", b"d"], False)
    assert decoded(b"data: a\n\ndata: b\n", b"\ndata: c\n\n") == ([b"a", b"b", b"c"], False)


def test_a_crlf_split_after_its_cr_does_not_end_a_line_twice() -> None:
    stream = b"data: a\r\n\r", b"\ndata: b\n\ndata: c\n\n"
    assert decoded(*stream) == ([b"a", b"b", b"c"], False) == bytewise(b"".join(stream))


def test_a_bom_only_counts_at_the_very_start() -> None:
    later = b"data: a\n\ndata: b\n\n", b"\xef\xbb\xbfdata: c\n\n"
    # Later on it is part of a field's name, "\ufeffdata": not data, so ignored.
    assert decoded(*later) == ([b"a", b"b"], False) == bytewise(b"".join(later))


@pytest.mark.parametrize("events", [1, 2], ids=["alone", "with another"])
def test_an_event_past_the_cap_in_one_chunk_stops_the_decoder(events) -> None:
    big = b"data: " + b"x" * MAX_EVENT_BYTES + b"\n\n"
    assert decoded(b"data: a\n\n" * (events - 1) + big) == ([b"a"] * (events - 1), True)


def test_an_event_at_the_cap_in_one_chunk_is_read() -> None:
    data = b"x" * (MAX_EVENT_BYTES - len(b"data: "))
    assert decoded(b"data: " + data + b"\n\n") == ([data], False)


# Pieces of an event stream, usual and not: whole events, the other fields, every line end.
_PIECES = st.sampled_from(
    [
        b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n',
        b"data: [DONE]\n\n",
        b"data:[DONE]\n\n",
        b"data: \n\n",
        b"data\n\n",
        b"data: one\ndata: two\n\n",
        b": ping\n\n",
        b"event: error\ndata: {}\n\n",
        b"id: 7\n",
        b"data: a\r\n\r\n",
        b"data: b\r\r",
        b"data: c\n\r",
        b"\n",
        b"\r",
        b"data: d\n",
        b"data: e",
        b"\xef\xbb\xbf",
        b"data: \xc3\xa9\n\n",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_PIECES, max_size=12), st.data())
def test_any_stream_split_anywhere_reads_as_one_byte_at_a_time(pieces, data) -> None:
    stream = b"".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert decoded(*chunks) == bytewise(stream)
