"""Server-Sent Events: the incremental decoder (raw bytes in, each event's `data` out),
and the framing relay reads off the bytes it passes through unchanged (where the last
whole event ends, where the stream's `[DONE]` line begins)."""

from __future__ import annotations

from collections.abc import Callable

# One event larger than this is not a chat completion chunk: the decoder stops
# (`overflowed`) rather than buffer it without end.
MAX_EVENT_BYTES = 4 * 1024 * 1024
_BOM = b"\xef\xbb\xbf"
_CR = 0x0D
_LF = 0x0A
DONE_LINES = (b"data: [DONE]", b"data:[DONE]")
# A blank line ends an event: a line end straight after another. Whatever the line
# endings (LF, CRLF, CR, mixed), that shows as LF LF, CR CR or LF CR (a CR LF alone is
# one line end); a CR closing it may be the first half of a CRLF.
_BLANK_LINES = (b"\n\n", b"\r\r", b"\n\r")


class SSEDecoder:
    """Splits an event stream into events across arbitrary chunk boundaries (WHATWG SSE rules).

    Only `data` matters to relay: the data lines of each dispatched event, joined with
    LF, go to `on_data` as bytes. Comments and the other fields are skipped undecoded,
    but for one no SSE client reads: llama.cpp's server reports a failure mid-stream
    as an `error:` line (then `data: [DONE]`); its value goes to `on_error`.
    """

    __slots__ = (
        "_at_start",
        "_data",
        "_data_bytes",
        "_on_data",
        "_on_error",
        "_skip_lf",
        "_tail",
        "overflowed",
    )

    def __init__(
        self,
        on_data: Callable[[bytes], None],
        on_error: Callable[[bytes], None] | None = None,
    ) -> None:
        self._on_data = on_data
        self._on_error = on_error
        self._tail = bytearray()  # the start of a line whose end has not arrived yet
        self._data: list[bytes] = []  # data lines of the event being read
        self._data_bytes = 0
        self._skip_lf = False
        self._at_start = True
        self.overflowed = False  # an event passed MAX_EVENT_BYTES: nothing more is read

    def feed(self, chunk: bytes) -> None:
        if self.overflowed:
            return
        # Fast path for the usual chunk: whole events of one `data: …` line each, ended
        # LF LF, no CR, nothing pending. Most often that is one event: its first LF is
        # the last but one byte. (Cheapest tests first: this runs for every chunk.)
        if (
            chunk.startswith(b"data: ")
            and chunk.find(b"\r") < 0
            and not (self._tail or self._data or self._skip_lf)
        ):
            last = len(chunk) - 2
            if chunk.find(b"\n") == last and chunk[-1] == _LF and last <= MAX_EVENT_BYTES:
                self._at_start = False
                self._on_data(chunk[6:-2])
                return
            payloads = _data_lines_events(chunk)
            if payloads is not None:
                self._at_start = False
                on_data = self._on_data
                for payload in payloads:
                    on_data(payload)
                return
        if self._skip_lf and chunk:
            # The last chunk ended in CR: a LF opening this one finishes that same line ending.
            self._skip_lf = False
            if chunk[0] == _LF:
                chunk = chunk[1:]
        # Only the new bytes are searched, so a long line fed in small pieces stays linear.
        end = max(chunk.rfind(b"\n"), chunk.rfind(b"\r")) + 1
        if not end:
            self._tail += chunk
            if len(self._tail) > MAX_EVENT_BYTES:
                self._overflow()
            return
        size = len(chunk)
        if self._tail:
            block = b"".join((self._tail, chunk[:end]))
            self._tail = bytearray(chunk[end:])
        elif end == size:
            block = chunk
        else:
            block = chunk[:end]
            self._tail += chunk[end:]
        self._skip_lf = end == size and chunk[-1] == _CR
        if self._at_start:
            self._at_start = False
            if block.startswith(_BOM):
                block = block[3:]
        self._read_lines(block)

    def unended_data(self) -> bytes:
        """The data of an event the stream has not ended yet (its blank line, or even
        the end of its last line, still to come); b"" if there is none."""
        data = list(self._data)
        tail = bytes(self._tail)
        if tail.startswith(b"data:"):
            data.append(_field_value(tail, 5))
        return b"\n".join(data)

    def close(self) -> None:
        """End of stream: an unterminated line or an event without its blank line is dropped."""
        self._tail.clear()
        self._data.clear()
        self._data_bytes = 0
        self._skip_lf = False

    def _overflow(self) -> None:
        self.close()
        self.overflowed = True

    def _read_lines(self, block: bytes) -> None:
        data = self._data
        # bytes.splitlines breaks at exactly the SSE line endings: LF, CRLF and CR.
        for line in block.splitlines():
            if not line:
                if data:
                    payload = data[0] if len(data) == 1 else b"\n".join(data)
                    data.clear()
                    self._data_bytes = 0
                    self._on_data(payload)
            elif line.startswith(b"data:"):
                data.append(_field_value(line, 5))
                self._data_bytes += len(line)
                if self._data_bytes > MAX_EVENT_BYTES:
                    self._overflow()
                    return
            elif line == b"data":
                data.append(b"")
            elif line.startswith(b"error:") and self._on_error is not None:
                self._on_error(_field_value(line, 6))
            # Anything else is a comment (":…") or a field relay does not read (event, id, retry).


def _field_value(line: bytes, colon_end: int) -> bytes:
    """A field line's value (its name and colon end at `colon_end`): what follows the
    colon, less one space if one comes first."""
    return line[colon_end + 1 :] if line.startswith(b" ", colon_end) else line[colon_end:]


def _data_lines_events(chunk: bytes) -> list[bytes] | None:
    """The payloads of `chunk` (which opens `data: ` and holds no CR) if it is nothing
    but whole events of one `data: …` line each, ended LF LF; else None. Under load a
    read brings several events at once: they are split here, not line by line."""
    if not chunk.endswith(b"\n\n") or len(chunk) > MAX_EVENT_BYTES:
        return None
    payloads = chunk[6:-2].split(b"\n\ndata: ")
    # Every LF is in a separator or the last blank line exactly when no payload holds one.
    return payloads if chunk.count(b"\n") == 2 * len(payloads) else None


def last_event_end(buffer: bytes | bytearray, start: int = 0) -> int:
    """The index just past the last complete SSE event in `buffer` (0 if none),
    looking for its end from `start` on.

    Only whole events go to the client, so a provider that breaks off mid-event
    never leaves the client holding half an event glued to relay's error event.
    """
    if buffer.endswith(b"\n\n"):  # the usual chunk: whole events, nothing after
        return len(buffer)
    end = 0
    for blank_line in _BLANK_LINES:
        at = buffer.rfind(blank_line, start)
        if at >= 0:
            end = max(end, at + 2)
    if end and buffer[end - 1] == _CR and buffer[end : end + 1] == b"\n":
        end += 1
    return end


def end_of_stream_at(buffer: bytes) -> int:
    """Where the `data: [DONE]` line starts in `buffer`, or -1.

    Only a line that is exactly the [DONE] event counts, not the word in content.
    """
    start = buffer.find(b"[DONE]")
    while start >= 0:
        line_start = max(buffer.rfind(b"\n", 0, start), buffer.rfind(b"\r", 0, start)) + 1
        line_end = start + len(b"[DONE]")
        if buffer[line_start:line_end] in DONE_LINES:
            return line_start
        start = buffer.find(b"[DONE]", line_end)
    return -1
