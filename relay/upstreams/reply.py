"""A provider's answer being read: its body chunk by chunk, each wait for it bounded."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp
from multidict import CIMultiDictProxy

from relay.errors import (
    NOT_RETRIED,
    AnswerTooLongError,
    UpstreamCutError,
    UpstreamError,
    UpstreamTimeoutError,
)
from relay.upstreams.deadline import WaitDeadline
from relay.upstreams.provider_json import BOM
from relay.upstreams.sse import MAX_EVENT_BYTES

if TYPE_CHECKING:
    from relay.upstreams.completion import CompletionAccumulator

# Provider responses relay reads whole (errors, non-streamed answers) are bounded.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
# Once a streamed answer is over (every choice has its finish_reason), only its usage
# chunk and `[DONE]` may follow, at once: some providers never close a finished
# stream, so a provider silent for this long then has ended it, not one silent for
# the whole idle timeout. (A usage chunk later than this is not waited for.)
FINISHED_SILENCE_SECONDS = 10.0


class ProviderReply:
    """The body of a provider's response. A wait for more of it that lasts
    `idle_timeout` seconds closes the response and raises TimeoutError.

    An upstream's timeout bounds each wait for the provider, not their sum: past
    `longest` seconds (RELAY_MAX_ANSWER_SECONDS) relay stops reading, and the answer
    ends cut (AnswerTooLongError). What relay promises of a conversation deleted
    while its first answer streams rests on it (relay.services.history).

    aiohttp's sock_read would bound the same waits but moves a timer for every
    chunk that arrives; a WaitDeadline does it with one. Time relay spends on its
    own side (writing to a slow client) is not waiting for the provider.
    """

    __slots__ = (
        "_content",
        "_deadline",
        "_early",
        "_finished",
        "_idle_timeout",
        "_longest",
        "_response",
        "_went_on",
        "overran",
        "stopped",
    )

    def __init__(
        self, response: aiohttp.ClientResponse, idle_timeout: float, longest: float
    ) -> None:
        self._response = response
        self._content = response.content
        self._idle_timeout = idle_timeout
        self._deadline = WaitDeadline(idle_timeout, response.close)
        self._finished = False  # every choice said it is finished: see `follow`
        self._went_on = False  # and then it generated more: see `follow`
        self._early = b""  # read by `first`, handed out by the next `chunk`
        self.stopped = False  # relay closed it (the client left, relay is stopping)
        self.overran = False  # relay closed it: it ran past `longest`
        self._longest = asyncio.get_running_loop().call_later(longest, self._overrun)

    @property
    def expired(self) -> bool:
        return self._deadline.expired

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self._response.headers

    def follow(self, answer: CompletionAccumulator) -> None:
        """Call after each read of a stream, with what was learnt of its answer. Once
        every choice has its finish_reason, a silence of FINISHED_SILENCE_SECONDS (or the
        longest answer) ends the body, as if the provider had closed it, instead of
        cutting the answer; before, any deadline cuts it.

        A provider that generates more after that (some send a finish_reason with every
        chunk) says nothing of its end by them: a silence then ends its answer only once
        it lasts the provider's timeout."""
        if not answer.all_finished or self._went_on:
            return
        if answer.generated_bytes > answer.finished_bytes:
            self._went_on = True
            self._deadline.close()
            self._deadline = WaitDeadline(self._idle_timeout, self._response.close)
        elif not self._finished:
            self._deadline.shorten(FINISHED_SILENCE_SECONDS)
        self._finished = True

    async def first(self) -> None:
        """Wait for the body's first bytes, before the client is answered at all: a
        provider silent past its timeout is then a 504 in OpenAI's error shape (one
        that hangs up, or ends the body before a byte of it, a 502), not a stream that
        began with a 200 and broke off. The bytes are the next `chunk`'s.

        A byte order mark opening the stream is left out: an SSE client per WHATWG
        skips it anyway, but OpenAI's Python SDK reads it as part of the first line's
        field name and loses the answer's first event (relay's observer skips it too)."""
        try:
            early = await self.chunk()
            if early.startswith(BOM):
                early = early[len(BOM) :] or await self.chunk()
            self._early = early
        except TimeoutError:
            raise provider_stalled() from None
        except aiohttp.ClientError:
            raise self.cut_error() from None
        if not self._early:
            raise self.cut_error()

    async def chunk(self) -> bytes:
        """The next bytes as they arrive; b"" once the body is complete."""
        if self._early:
            early, self._early = self._early, b""
            return early
        self._deadline.begin()
        try:
            return await self._content.readany()
        except aiohttp.ClientError:
            if self._finished and (self.expired or (self.overran and not self._went_on)):
                # Silent (or past the longest answer) after it ended the answer: the end
                # (see `follow`). One that went on after its finish was still answering:
                # the longest answer cuts it.
                return b""
            if self.expired:
                raise TimeoutError("the provider stopped sending") from None
            raise
        finally:
            self._deadline.end()

    async def prefix(self, limit: int) -> bytes:
        """The body's first `limit` bytes, or all of it if it ends sooner."""
        parts, size = [], 0
        while size < limit and (chunk := await self.chunk()):
            parts.append(chunk)
            size += len(chunk)
        return b"".join(parts)[:limit]

    async def whole(self) -> bytes:
        """The complete body (a non-streamed answer), bounded, with read failures mapped."""
        try:
            body = await self.prefix(MAX_RESPONSE_BYTES + 1)
        except TimeoutError:
            raise provider_stalled() from None
        except aiohttp.ClientError:
            raise self.cut_error() from None
        if len(body) > MAX_RESPONSE_BYTES:
            raise oversize_error(len(body))
        return body

    async def finish(self, seconds: float) -> None:
        """Read and drop what is left of the body, for at most `seconds`, so the
        connection can be reused; past that, or on a read error, close it."""
        if self._response.closed or self._content.at_eof():
            return
        try:
            async with asyncio.timeout(seconds):
                while await self._content.readany():
                    pass
        except (TimeoutError, aiohttp.ClientError):
            self.close()

    def close(self) -> None:
        """Stop reading: the connection is closed, so the provider learns it at once."""
        self.stopped = True
        self._response.close()

    def cut_error(self) -> UpstreamError:
        """Why the answer ended early, as its client is told, if the provider did not
        say (an error event) and relay is not stopping: it ran too long, the provider
        fell silent past its timeout, or it broke off."""
        if self.overran:
            return AnswerTooLongError()
        return provider_stalled() if self.expired else UpstreamCutError()

    def _overrun(self) -> None:
        self.overran = True
        self.close()

    def release(self) -> None:
        self._deadline.close()
        self._longest.cancel()
        self._response.release()


def provider_stalled() -> UpstreamTimeoutError:
    """A provider that stopped sending before the client had a byte: a timeout (504)."""
    return UpstreamTimeoutError("The provider stopped answering.")


def past_the_cap(received: int, *, ended: bool) -> bool:
    """Whether relay stops reading a streamed answer, a read having taken it to `received`
    bytes: at the first read past MAX_RESPONSE_BYTES, unless that read holds the answer's
    `[DONE]` (`ended`): the answer is then whole, and the `[DONE]`, and whatever came
    after it in the same read, are no part of it. /v1/chat/completions
    (relay.upstreams.pipe) and /v1/chat (relay.upstreams.observer) both stop by it."""
    return received > MAX_RESPONSE_BYTES and not ended


def oversize_error(byte_count: int) -> UpstreamError:
    """Why relay stopped reading a provider that sent more than it accepts (`byte_count`
    bytes so far): an answer past MAX_RESPONSE_BYTES, or one event past MAX_EVENT_BYTES."""
    if byte_count > MAX_RESPONSE_BYTES:
        what = f"The provider's answer ran past the {MAX_RESPONSE_BYTES >> 20} MiB"
    else:
        what = f"The provider sent an event larger than the {MAX_EVENT_BYTES >> 20} MiB"
    # OpenAI's SDKs would ask again (502): for as large an answer, and as many tokens, again.
    return UpstreamError(
        f"{what} relay accepts; relay cut it.",
        code="upstream_too_large",
        headers=dict(NOT_RETRIED),
    )
