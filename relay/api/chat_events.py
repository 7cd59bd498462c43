"""The event stream of POST /v1/chat: aiohttp-sse, every byte on the wire hashed for receipts."""

from __future__ import annotations

import asyncio
import hashlib
import random
import string
from typing import Any

import aiohttp
import orjson
from aiohttp import hdrs
from aiohttp_sse import EventSourceResponse

from relay.errors import RelayError
from relay.upstreams import pipe


def event_bytes(event: str, data: Any) -> bytes:
    """One event exactly as EventSourceResponse.send(…, sep="\\n") writes it (JSON is one line)."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


# As OpenAI pads its own chunks (`obfuscation`), each delta carries random characters that
# bring the encoded text to the next multiple of 16 bytes, and up to 15 bytes beyond: an
# eavesdropper on the encrypted stream cannot read token lengths off the records' sizes.
PAD_STEP = 16
_PAD_ALPHABET = string.ascii_letters + string.digits


def delta_data(text: str) -> dict[str, str]:
    """A `message.delta` event's data: the text and its padding."""
    size = len(orjson.dumps(text))
    pad = -size % PAD_STEP + random.randrange(PAD_STEP)
    return {"content": text, "obfuscation": "".join(random.choices(_PAD_ALPHABET, k=pad))}


def error_data(error: RelayError) -> dict[str, Any]:
    return error.body()


class HashedEventSource(EventSourceResponse):
    """Counts and hashes what it writes, `: ping` comments included, so a receipt can sign it."""

    def __init__(self, headers: dict[str, str]) -> None:
        # POST needs allow_all_methods; "\n" frames events the way OpenAI's do. A
        # client that takes nothing for as long as /v1/chat/completions allows is
        # cut off the same way (aiohttp-sse aborts it and raises TimeoutError).
        self.send_seconds = pipe.SEND_SECONDS
        super().__init__(
            headers=headers, sep="\n", allow_all_methods=True, send_timeout=self.send_seconds
        )
        # aiohttp-sse says "keep-alive" whatever the connection's fate (an HTTP/1.0
        # client, `Connection: close`); aiohttp says what it does, where it must.
        self.headers.popall(hdrs.CONNECTION, None)
        self._hash = hashlib.sha256()
        self.byte_count = 0

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)
        self.byte_count += len(data)
        await super().write(data)

    async def send_event(self, event: str, data: Any) -> None:
        await self.send(orjson.dumps(data).decode(), event=event)

    async def end(self, final: bytes) -> None:
        """Write the last event and end the stream; a client that has left is no error.

        That write waits for the client's buffers like any event's, so it has the same
        deadline: a client that takes nothing for send_seconds is cut off as gone."""
        try:
            async with asyncio.timeout(self.send_seconds):
                await self.write(final)
                await self.write_eof()
        except TimeoutError:
            self._abort_transport()  # as aiohttp-sse does for an event: a close would wait too
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass

    def sha256_with(self, tail: bytes) -> str:
        """The hash of everything written so far followed by `tail`."""
        digest = self._hash.copy()
        digest.update(tail)
        return digest.hexdigest()
