"""Log output: JSON lines (orjson) or text, with structured fields passed as `extra`.

relay writes a line per request, so the path from `log.info` to the stream is
kept short: records skip what relay never prints (caller's file and line,
thread and process names), and the lines of one event-loop turn reach the
stream in one write instead of one write each.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any, TextIO

import orjson

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD}


# What Python prints between an exception and the one it chains.
_CAUSE = "The above exception was the direct cause of the following exception:"
_CONTEXT = "During handling of the above exception, another exception occurred:"


def traceback_by_class(exc_info: Any) -> str:
    """An exception's traceback, and those of the ones it chains, as Python prints them
    but with each exception named by its class alone: a message may quote data (a
    PostgreSQL error's quotes the row it refused, a prompt included), the class and
    the frames say where and what went wrong."""
    chain: list[tuple[BaseException, str]] = []
    error: BaseException | None = exc_info[1]
    link = ""
    while error is not None and all(error is not seen for seen, _ in chain):
        chain.append((error, link))
        if error.__cause__ is not None:
            error, link = error.__cause__, _CAUSE
        elif error.__context__ is not None and not error.__suppress_context__:
            error, link = error.__context__, _CONTEXT
        else:
            error = None
    parts: list[str] = []
    for raised, link in reversed(chain):  # the oldest first, as Python prints them
        kind = type(raised)
        name = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else f"{kind.__module__}.{kind.__qualname__}"
        )
        frames = "".join(traceback.format_tb(raised.__traceback__))
        parts.append(f"Traceback (most recent call last):\n{frames}{name}")
        if link:
            parts.append(link)
    return "\n\n".join(parts)


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def _timestamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:  # one strftime a second, not one a line
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(record_fields(record))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()

    def formatException(self, ei: Any) -> str:
        return traceback_by_class(ei)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = record_fields(record)
        if fields:
            text += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        return text

    def formatException(self, ei: Any) -> str:
        return traceback_by_class(ei)


class TurnBufferedHandler(logging.StreamHandler[TextIO]):
    """Lines written during one turn of the running event loop go out together, at
    the end of that turn; outside a loop (start-up, shutdown) each line at once."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write([*self._lines, line])
            return
        if not self._lines:
            loop.call_soon(self.flush)
        self._lines.append(line)

    def flush(self) -> None:
        self._write(self._lines)

    def _write(self, lines: list[str]) -> None:
        self.acquire()  # reentrant: emit already holds it
        try:
            self._lines = []
            if lines:
                self.stream.write("".join(lines))
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stream loses the lines
            pass
        finally:
            self.release()


# The request the running task serves, and that task: see RequestIdFilter.
_SERVING: ContextVar[tuple[asyncio.Task[Any] | None, str] | None] = ContextVar(
    "relay_serving", default=None
)


def serving(request_id: str) -> Token[tuple[asyncio.Task[Any] | None, str] | None]:
    """From now on, lines the current task logs carry `request_id`; `served(token)` ends it."""
    return _SERVING.set((asyncio.current_task(), request_id))


def served(token: Token[tuple[asyncio.Task[Any] | None, str] | None]) -> None:
    _SERVING.reset(token)


class RequestIdFilter(logging.Filter):
    """A line logged by the task serving a request carries that request's id, unless
    the line names one itself: an operator finds every line of a failed request by
    the id its client was answered with.

    Only that task's lines: a task or callback started from it (a rate-limit batch,
    a pooled database connection's reader, a commit another request joined) inherits
    the mark but may serve other requests or outlive this one, so it is left unmarked
    rather than marked wrong."""

    def filter(self, record: logging.LogRecord) -> bool:
        mark = _SERVING.get()
        if mark is not None and "request_id" not in record.__dict__:
            try:
                task = asyncio.current_task()
            except RuntimeError:  # a thread that copied the context (asyncio.to_thread)
                task = None
            if task is not None and task is mark[0]:
                record.request_id = mark[1]
        return True


class MalformedRequestFilter(logging.Filter):
    """aiohttp's server logs a request it cannot parse as an error whose message
    quotes the offending bytes: a piece of a prompt, an Authorization header.
    Such a record keeps only the exception's class and the peer, as a warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and _unparsed(error):
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else None
            record.msg, record.args = "malformed request", ()
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.error, record.peer = type(error).__name__, peer
        return True


def _unparsed(error: BaseException) -> bool:
    """Whether `error` is aiohttp's parser refusing a request. Looked up, not imported:
    such an error exists only once aiohttp's server has loaded its module, and the
    commands that serve nothing (relay clients, relay migrate) never load aiohttp."""
    module = sys.modules.get("aiohttp.http_exceptions")
    return module is not None and isinstance(error, module.HttpProcessingError)


def setup_logging(level: str, fmt: str = "json", stream: TextIO | None = None) -> None:
    # relay's lines never show where in the code, or on which thread, they were logged.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # the documented switch that skips finding the caller
    handler = TurnBufferedHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # A warning a library issues is a line of relay's log too, not raw text on stderr.
    logging.captureWarnings(True)
    # aiohttp's own access log would repeat ours without the request id.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(each, MalformedRequestFilter) for each in server.filters):
        server.addFilter(MalformedRequestFilter())


class HeldLogs(logging.Handler):
    """What is logged while settings are read (relay.config's warnings: unknown
    variables, and any other a setting gives), before RELAY_LOG_FORMAT and
    RELAY_LOG_LEVEL are known: held, then replayed through the log setup_logging
    configured, so a JSON log is JSON from its first line."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Hold every record (RELAY_LOG_LEVEL is not known yet: replay decides), and
        the warnings Python would print, while the block runs."""
        root = logging.getLogger()
        level = root.level
        root.addHandler(self)
        root.setLevel(logging.DEBUG)
        logging.captureWarnings(True)
        try:
            yield
        finally:
            logging.captureWarnings(False)
            root.removeHandler(self)
            root.setLevel(level)

    @contextmanager
    def before_logging(self) -> Iterator[None]:
        """Hold what the block logs (settings being read, `relay dev`'s servers
        starting); if it raises (settings refused, a server that would not start),
        print the warnings held, plain, before the error goes on: relay's log was
        never set up."""
        try:
            with self.holding():
                yield
        except BaseException:
            self.print_plain()
            raise

    def start_logging(self, level: str, log_format: str) -> None:
        """Set up relay's log (setup_logging), then replay into it what was held."""
        setup_logging(level, log_format)
        self.replay()

    def replay(self) -> None:
        """Each held record that relay's configured log level lets through, to its handlers."""
        records, self.records = self.records, []
        for record in records:
            logger = logging.getLogger(record.name)
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)

    def print_plain(self) -> None:
        """Without relay's log (its settings refused): the warnings, as Python would have
        printed them."""
        records, self.records = self.records, []
        for record in records:
            if record.levelno >= logging.WARNING:
                print(record.getMessage(), file=sys.stderr)
