"""The streaming pipe on its own: whole events through in order, however the provider
splits them, up to [DONE], which is held back."""

from __future__ import annotations

import asyncio
import random

import orjson
import pytest

from relay.api.chat_native import _read as read_native_chat
from relay.upstreams import reply
from relay.upstreams.config import Upstream
from relay.upstreams.deltas import DeltaObserver
from relay.upstreams.observer import StreamObserver
from relay.upstreams.pipe import end_stream, pipe_stream
from relay.upstreams.routing import Route
from relay.upstreams.sse import MAX_EVENT_BYTES

DONE = b"data: [DONE]\n\n"
ROUTE = Route("m", Upstream("sim", "http://provider.test/v1", {"m": "m"}), "m")


class ChunkedProvider:
    """A provider reply that hands out `body` in the given pieces."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.closed = False

    async def chunk(self) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""

    def close(self) -> None:
        self.closed = True

    def follow(self, answer: object) -> None:
        pass


class Collected:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.written.append(bytes(data))


def event(text: str, end: bytes) -> bytes:
    chunk = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return b"data: " + orjson.dumps(chunk) + end


def split_randomly(body: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(body)), rng.randint(0, min(40, len(body) - 1))))
    return [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]


@pytest.mark.parametrize("seed", range(200))
async def test_any_split_passes_whole_events_and_holds_back_done(seed):
    rng = random.Random(seed)
    # Every way a blank line can end an event, mixed endings included (WHATWG SSE).
    ends = [b"\n\n", b"\r\n\r\n", b"\r\r", b"\n\r\n", b"\n\r", b"\r\n\r", b"\r\n\n", b"\r\r\n"]
    events = b"".join(event(f"w{n} ", rng.choice(ends)) for n in range(rng.randint(1, 30)))
    done = b"data: [DONE]" + rng.choice(ends)
    provider = ChunkedProvider(split_randomly(events + done + b": after\n\n", rng))
    response, observer = Collected(), StreamObserver()

    result = await pipe_stream(response, provider, observer, lambda: None, ROUTE)

    assert result.status == "complete"
    assert b"".join(response.written) == events
    # Reading stops at the [DONE] event's end: when that is a CR whose LF has not
    # arrived yet, the CR alone ends it (a blank line either way).
    assert result.final.startswith(done) or (done.endswith(b"\r\n") and result.final == done[:-1])
    assert all(piece for piece in response.written)
    assert observer.text == "".join(f"w{n} " for n in range(events.count(b"data: ")))


async def test_a_large_event_in_small_pieces_goes_through_whole():
    big = event("x" * 1_000_000, b"\n\n")
    pieces = [big[i : i + 4096] for i in range(0, len(big), 4096)] + [b"data: [DONE]\n\n"]
    provider = ChunkedProvider(pieces)
    response = Collected()
    result = await pipe_stream(response, provider, StreamObserver(), lambda: None, ROUTE)
    assert result.status == "complete"
    assert response.written == [big]


@pytest.mark.parametrize("pieces", [1, 2, 3, 4096], ids=lambda n: f"{n}-pieces")
async def test_an_event_past_the_limit_is_never_passed_on_however_it_arrives(pieces):
    """Whole in one read, or its end arriving just past the limit: relay cuts it, and
    says it was relay's doing."""
    first = event("Hi", b"\n\n")
    big = event("x" * MAX_EVENT_BYTES, b"\n\n")
    size = -(-len(big) // pieces)
    parts = [first, *(big[i : i + size] for i in range(0, len(big), size)), DONE]
    provider, response = ChunkedProvider(parts), Collected()
    result = await pipe_stream(response, provider, StreamObserver(), lambda: None, ROUTE)
    assert result.status == "cut" and provider.closed
    assert response.written == [first]
    assert result.error is not None and result.error.code == "upstream_too_large"


@pytest.mark.parametrize(
    "ends_apart,status",
    [
        (True, "cut"),  # the read past the cap holds no [DONE]: relay stops there
        (False, "complete"),  # it holds the [DONE]: the answer is whole
    ],
    ids=["done-in-a-later-read", "done-in-that-read"],
)
async def test_both_chat_endpoints_stop_at_the_first_read_past_the_answer_cap(
    monkeypatch, ends_apart, status
):
    """/v1/chat/completions (the pipe) and /v1/chat (its observer) stop by one rule.
    Before, the pipe passed the read past the cap on and completed at the [DONE] after."""
    first, second = event("a" * 40, b"\n\n"), event("b" * 40, b"\n\n")
    monkeypatch.setattr(reply, "MAX_RESPONSE_BYTES", len(first) + 1)
    pieces = [first, second, DONE] if ends_apart else [first, second + DONE]

    provider, response = ChunkedProvider(list(pieces)), Collected()
    piped = await pipe_stream(response, provider, StreamObserver(), lambda: None, ROUTE)
    observer = DeltaObserver()
    read = await read_native_chat(ChunkedProvider(list(pieces)), observer)

    assert (piped.status, read) == (status, status)
    if status == "cut":
        assert piped.error is not None and piped.error.code == "upstream_too_large"
        assert "answer ran past" in piped.error.message and provider.closed
        assert response.written == [first]  # nothing of the read past the cap
        assert observer.overflowed  # /v1/chat's upstream_too_large
    else:
        assert b"".join(response.written) == first + second and piped.error is None
        assert not observer.overflowed


@pytest.mark.parametrize(
    "rest,finished,status,sent",
    [
        # A whole last event, short of its blank line: the body's end ends it, and the
        # client gets it ended (SSE clients drop an event that never ended).
        (b'data: {"choices":[]}', True, "complete", b'data: {"choices":[]}\n\n'),
        (b'data: {"choices":[]}\r', True, "complete", b'data: {"choices":[]}\r\n\n'),
        (b": comment", True, "complete", b": comment\n\n"),
        # Unfinished: ended too, for relay's error event to follow apart.
        (b'data: {"choices":[]}\n', False, "cut", b'data: {"choices":[]}\n\n\n'),
        # Broken off within the event: not passed on.
        (b'data: {"choi', True, "cut", b""),
    ],
)
async def test_a_body_ending_short_of_a_blank_line(rest, finished, status, sent):
    finish = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    first = event("Hi", b"\n\n") + (b"data: " + orjson.dumps(finish) + b"\n\n" if finished else b"")
    provider, response, observer = ChunkedProvider([first, rest]), Collected(), StreamObserver()
    result = await pipe_stream(response, provider, observer, lambda: None, ROUTE)
    assert (result.status, result.final) == (status, b"")
    assert b"".join(response.written) == first + sent
    assert observer.byte_count == len(first + sent)


class StalledClient:
    """A client that takes no more bytes: the last write waits until relay gives up on it."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    async def write(self, data: bytes) -> None:
        pass  # the buffers still have room for the last event

    async def write_eof(self) -> None:
        await self.gone.wait()  # aiohttp drains here: the client's buffers are full
        raise ConnectionResetError("Connection lost")

    def abort(self) -> None:
        self.gone.set()


async def test_a_client_stalling_at_the_very_end_is_cut_off_too(monkeypatch):
    monkeypatch.setattr("relay.upstreams.pipe.SEND_SECONDS", 0.2)
    client = StalledClient()
    ended = await asyncio.wait_for(
        end_stream(client, StreamObserver(), b"data: [DONE]\n\n", client.abort), timeout=5
    )
    assert ended is False and client.gone.is_set()
