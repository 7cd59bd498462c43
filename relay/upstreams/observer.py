"""The stream observer: what relay learns from the SSE bytes it pipes to a client."""

from __future__ import annotations

import hashlib
from typing import Any, Self

import orjson

from relay.upstreams.completion import (
    CompletionAccumulator,
    CompletionSummary,
    summarize_completion,
)
from relay.upstreams.provider_json import error_field_object, listed_error
from relay.upstreams.reply import past_the_cap
from relay.upstreams.sse import SSEDecoder

_UNREADABLE_EVENT = {
    "message": "it sent an event that is not JSON.",
    "type": "upstream_error",
    "code": "upstream_malformed",
}

__all__ = ["CompletionSummary", "StreamObserver", "summarize_completion"]


class StreamObserver(CompletionAccumulator):
    """Fed every chunk the client receives; never alters or re-encodes it.

    Hashes and counts the bytes, splits SSE events across any chunk boundary, and folds
    each `data` event into the answer (text, finish reason, usage, tool calls, error).
    `event_count` counts every dispatched data event, `[DONE]` and malformed ones included.
    `feed` does both halves; `read` and `count` apart serve a pipe that rewords a
    provider's error event (its bytes are read as sent, but counted as written).
    """

    def __init__(self, choices: int = 1) -> None:
        super().__init__(choices)
        self._hash = hashlib.sha256()
        self._decoder = SSEDecoder(self._on_data, self._on_error_field)
        self.byte_count = 0
        self.done = False
        self.event_count = 0
        self.malformed_events = 0

    @classmethod
    def for_request(cls, request: dict[str, Any]) -> Self:
        """The observer of the answer to `request`, a chat completion request as parsed:
        its `n` choices (an odd `n` is taken for 1: the provider refuses it anyway)."""
        choices = request.get("n")
        if not isinstance(choices, int) or isinstance(choices, bool) or choices < 1:
            choices = 1
        return cls(choices)

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
        """An event too large to be a chunk, or an answer read past the cap on answers
        (relay.upstreams.reply.past_the_cap: a `[DONE]` in the read that passed it
        still ends the answer whole)."""
        return self._decoder.overflowed or past_the_cap(self.byte_count, ended=self.done)

    @property
    def outcome(self) -> str:
        """How the answer ended, its stream over: cut if it ran past what relay reads;
        failed if the provider said why (an error event); complete at `[DONE]`, or
        with every choice finished; else cut."""
        if self.overflowed:
            return "cut"
        if self.error is not None:
            return "failed"
        return "complete" if self.done or self.all_finished else "cut"

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

    def close(self, *, body_ended: bool = False) -> None:
        """End of stream: per the SSE spec an event without its closing blank line is
        dropped. A `[DONE]` left so still ends the answer: a provider that closes right
        after that line, short of its blank line, has finished. So does, when the
        provider's body ended cleanly (`body_ended`), a last event whose data is whole
        JSON (a usage chunk, say): the body's end ends it (as relay.upstreams.pipe
        passes it on)."""
        unended = self._decoder.unended_data()
        self._decoder.close()
        if _is_done(unended):
            self.done = True
        elif body_ended and unended and not self.done and not self.overflowed:
            try:
                obj = orjson.loads(unended)
            except orjson.JSONDecodeError:
                if (obj := self.read_again(unended)) is None:
                    return  # it stopped within an event: that event is lost
            self.event_count += 1
            if isinstance(obj, dict) or (obj := listed_error(obj)) is not None:
                self.apply(obj)

    def _on_data(self, payload: bytes) -> None:
        self.event_count += 1
        if _is_done(payload):
            self.done = True
            return
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            # Only when orjson refused it: the usual event pays for one parser alone.
            if (obj := self.read_again(payload)) is None:
                self._unreadable()
                return
        # A malformed event is counted, not raised: the client still gets every byte.
        if isinstance(obj, dict) or (obj := listed_error(obj)) is not None:
            self.apply(obj)
        else:
            self.malformed_events += 1

    def _unreadable(self) -> None:
        """An event that is no JSON at all: the client gets it as sent, but its parser
        (OpenAI's SDKs', JSON.parse) raises on it, and whatever it held is lost to
        history. So the answer is no complete one: it failed, as if the provider had said
        so in an error event (unless it already did)."""
        self.malformed_events += 1
        if self.error is None:
            self.error = dict(_UNREADABLE_EVENT)

    def _on_error_field(self, value: bytes) -> None:
        # llama.cpp's `error: {"code": 500, "message": …, "type": …}`: the answer failed.
        self.apply({"error": error_field_object(value)})


def _is_done(payload: bytes) -> bool:
    """Whether an event's data is the stream's end, `[DONE]`, however spaced."""
    # Only a short payload can be a sloppily spaced [DONE]; JSON chunks skip the strip.
    return payload == b"[DONE]" or (len(payload) < 16 and payload.strip() == b"[DONE]")
