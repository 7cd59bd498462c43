"""The stream observer: what relay learns from the SSE bytes it pipes to a client."""

from __future__ import annotations

import hashlib

import orjson

from relay.upstreams.completion import (
    CompletionAccumulator,
    CompletionSummary,
    summarize_completion,
)
from relay.upstreams.reply import MAX_RESPONSE_BYTES
from relay.upstreams.sse import SSEDecoder

__all__ = ["CompletionSummary", "StreamObserver", "summarize_completion"]


class StreamObserver(CompletionAccumulator):
    """Fed every chunk the client receives; never alters or re-encodes it.

    Hashes and counts the bytes, splits SSE events across any chunk boundary, and folds
    each `data` event into the answer (text, finish reason, usage, tool calls, error).
    `event_count` counts every dispatched data event, `[DONE]` and malformed ones included.
    `feed` does both halves; `read` and `count` apart serve a pipe that rewords a
    provider's error event (its bytes are read as sent, but counted as written).
    """

    def __init__(self) -> None:
        super().__init__()
        self._hash = hashlib.sha256()
        self._decoder = SSEDecoder(self._on_data, self._on_error_field)
        self.byte_count = 0
        self.done = False
        self.event_count = 0
        self.malformed_events = 0

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def sha256_with(self, tail: bytes) -> str:
        """The hash of all bytes once `tail` is fed too (receipts are signed before it is sent)."""
        digest = self._hash.copy()
        digest.update(tail)
        return digest.hexdigest()

    @property
    def overflowed(self) -> bool:
        """An event too large to be a chunk, or an answer past MAX_RESPONSE_BYTES."""
        return self._decoder.overflowed or self.byte_count > MAX_RESPONSE_BYTES

    @property
    def reading(self) -> bool:
        """Whether more of the stream is worth reading: no [DONE] yet, nothing overflowed."""
        return not self.done and not self.overflowed

    def feed(self, chunk: bytes) -> None:
        self.read(chunk)
        self.count(chunk)

    def read(self, chunk: bytes) -> None:
        """Fold the events in `chunk` into the answer."""
        self._decoder.feed(chunk)

    def count(self, chunk: bytes) -> None:
        """Hash and count `chunk` as bytes the client receives."""
        self._hash.update(chunk)
        self.byte_count += len(chunk)

    def close(self) -> None:
        """End of stream: per the SSE spec an event without its closing blank line is dropped.
        A `[DONE]` left so still ends the answer: a provider that closes right after
        that line, short of its blank line, has finished."""
        if _is_done(self._decoder.unended_data()):
            self.done = True
        self._decoder.close()

    def _on_data(self, payload: bytes) -> None:
        self.event_count += 1
        if _is_done(payload):
            self.done = True
            return
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            obj = None
        # A malformed event is counted, not raised: the client still gets every byte.
        if isinstance(obj, dict):
            self.apply(obj)
        else:
            self.malformed_events += 1

    def _on_error_field(self, value: bytes) -> None:
        # llama.cpp's `error: {"code": 500, "message": …, "type": …}`: the answer failed.
        try:
            error = orjson.loads(value)
        except orjson.JSONDecodeError:
            error = None
        self.apply({"error": error if isinstance(error, dict) else {"message": "provider error"}})


def _is_done(payload: bytes) -> bool:
    """Whether an event's data is the stream's end, `[DONE]`, however spaced."""
    # Only a short payload can be a sloppily spaced [DONE]; JSON chunks skip the strip.
    return payload == b"[DONE]" or (len(payload) < 16 and payload.strip() == b"[DONE]")
