"""Group commit: answers from many requests written together, one transaction per batch.

`record` returns only once the answer's batch has committed, so a caller that
waits for it before sending the end of an answer never shows the client an
answer that is not durable. A batch is whatever queued while the previous one
was being sent (up to `batch_size`): under load, one commit serves many answers.

Batches are pipelined: the next is sent while the one before commits (at most
`PIPELINE` at once), so the database never waits for relay between them. They
are settled in the order they were sent; a batch that failed is tried again
once whole, after the batches before it settled, less its answers that can no
longer be written (their conversation or client deleted meanwhile), then one
answer at a time. A batch whose outcome relay lost (past its timeout, or with
its connection, once its COMMIT was sent) is settled by what was stored
(relay.services.batch_write).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from relay.errors import DependencyUnavailableError
from relay.metrics import HISTORY_BATCH_SIZE, HISTORY_COMMIT_SECONDS
from relay.services.answers import Answer
from relay.services.batch_write import RecordPart, RolledBack, unwritable_answers, write_batch
from relay.services.turns import bytes_written, rows_written
from relay.stores.database import Database
from relay.stores.database_failures import out_of_reach

log = logging.getLogger(__name__)

BATCH_SIZE = 256
# A batch also closes before the rows of its answers pass this (an answer may add up to
# a thousand: relay.services.turns): past its timeout, a batch is taken for the
# database being out of reach, and every answer queued behind it fails too.
BATCH_ROWS = 4096
# And before the bytes of its statements pass this. A batch is sent as one string, which
# the driver copies several times over (binding, joining, encoding, libpq's buffer): 64
# answers of 3.5 MB each in one batch took relay past 1.4 GB; a batch this size costs
# less than a hundred MB at most, and answers this size are few enough that their
# smaller batches cost no throughput.
BATCH_BYTES = 8 * 1024 * 1024
QUEUE_SIZE = 4096
PIPELINE = 2


@dataclass(eq=False, slots=True)
class _Pending:
    answer: Answer
    done: asyncio.Future[None]


def _database_gone(error: Exception) -> bool:
    """Whether `error` is the database out of reach (or too slow to answer in time),
    rather than its refusing one batch (a deadlock, a statement it cancelled)."""
    return isinstance(error, DependencyUnavailableError) and out_of_reach(error)


def not_saved() -> DependencyUnavailableError:
    return DependencyUnavailableError(
        "The answer could not be saved to history; please retry.", code="history_unavailable"
    )


def _consume(future: asyncio.Future[None]) -> None:
    # A waiter that was cancelled never reads its outcome; read it here so
    # asyncio does not log "exception was never retrieved".
    if not future.cancelled():
        future.exception()


class AnswerRecorder:
    def __init__(self, *, batch_size: int = BATCH_SIZE, queue_size: int = QUEUE_SIZE) -> None:
        self.batch_size = batch_size
        self.queue_size = queue_size
        self._parts: list[RecordPart] = []
        self._database: Database | None = None
        self._queue: asyncio.Queue[_Pending | None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._batches: set[asyncio.Task[None]] = set()  # sent, not yet settled
        self._carried: _Pending | None = None  # did not fit the last batch: opens the next

    def add_part(self, part: RecordPart) -> None:
        """Parts write in the order added; add them before the first answer is recorded."""
        self._parts.append(part)

    async def start(self, database: Database) -> None:
        self._database = database
        self._queue = asyncio.Queue(self.queue_size)
        self._writer = asyncio.create_task(self._run(), name="relay-answer-recorder")

    async def close(self) -> None:
        """Refuse new answers, commit every one already queued, then stop the writer."""
        if self._queue is None or self._writer is None or self._closing:
            return
        self._closing = True
        await self._queue.put(None)
        await self._writer
        # Only answers that were waiting for room in a full queue can be left.
        late = []
        while not self._queue.empty():
            if (item := self._queue.get_nowait()) is not None:
                late.append(item)
        self._fail(late)

    async def record(self, answer: Answer) -> None:
        """Queue `answer` and return once its batch committed; raise if it did not.

        An answer is queued once: recorded again (its client left while it was
        committing) it is already on its way, as it stands when its batch is written.
        """
        if self._queue is None or self._closing:
            raise not_saved()
        if answer.recorded or not any(part.wants(answer) for part in self._parts):
            return  # queued already, or nothing to keep (store: false with receipts off)
        pending = _Pending(answer, asyncio.get_running_loop().create_future())
        pending.done.add_done_callback(_consume)
        # A full queue makes callers wait: back-pressure instead of unbounded memory.
        await self._queue.put(pending)
        # Marked only now: a caller cancelled while waiting for room queued nothing,
        # and the answer must be queued when it is recorded again (commit_quietly).
        answer.recorded = True
        # A caller cancelled now (its client left) stops waiting; its answer is still written.
        await pending.done

    async def _run(self) -> None:
        assert self._queue is not None
        slots = asyncio.Semaphore(PIPELINE)
        previous: asyncio.Future[None] | None = None
        stopping = False
        while not stopping or self._carried is not None:
            batch, stopping = await self._next_batch(stopping)
            if not batch:
                break
            await slots.acquire()
            settled = asyncio.get_running_loop().create_future()
            task = asyncio.create_task(self._in_turn(batch, previous, settled, slots))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)
            previous = settled
            # The batch (its answers' bodies too) is the task's alone: not kept alive
            # here while the next answer is awaited, however long that takes.
            del batch
        if previous is not None:
            await previous  # each batch settles after the one before it: this is the last

    async def _next_batch(self, stopping: bool) -> tuple[list[_Pending], bool]:
        """The answers queued since the last batch (waiting for one), within the batch's
        bounds, and whether the recorder is stopping; no answers once it has stopped."""
        assert self._queue is not None
        first, self._carried = self._carried, None
        if first is None:
            first = await self._queue.get()
            if first is None:
                return [], True
        batch = [first]
        rows, size = rows_written(first.answer), bytes_written(first.answer)
        while not stopping and len(batch) < self.batch_size and not self._queue.empty():
            item = self._queue.get_nowait()
            if item is None:
                return batch, True
            rows += rows_written(item.answer)
            size += bytes_written(item.answer)
            if rows > BATCH_ROWS or size > BATCH_BYTES:
                self._carried = item
                break
            batch.append(item)
        return batch, stopping

    async def _in_turn(
        self,
        batch: list[_Pending],
        previous: asyncio.Future[None] | None,
        settled: asyncio.Future[None],
        slots: asyncio.Semaphore,
    ) -> None:
        """Send the batch at once; settle it once the batch before it has settled."""
        started = time.monotonic()
        try:
            try:
                await self._write([pending.answer for pending in batch])
                failure: Exception | None = None
            except Exception as exc:
                failure = exc
                if _database_gone(exc):
                    self._fail_queued()  # at once, before the slot frees for one of them
            finally:
                slots.release()
            if previous is not None:
                await previous
            if failure is None:
                self._committed(batch, started)
            elif _database_gone(failure):
                self._fail(batch)
                self._fail_queued()
            else:
                # Once more whole: it may have met state another instance changed (the
                # receipt chain's head), been built on a batch that failed (parts read
                # such state afresh after a failure), lost a deadlock, been cancelled by
                # the server, or been rolled back with a connection that died, which a
                # second try need not meet. Less the answers that can no longer be
                # written, which would fail it again.
                await self._commit(await self._writable(batch))
        finally:
            self._fail(batch)  # only answers not settled above: none unless cancelled
            settled.set_result(None)

    async def _writable(self, batch: list[_Pending]) -> list[_Pending]:
        """The batch less its answers that can no longer be written (see
        batch_write.unwritable_answers), which fail at once: one such answer would
        otherwise fail the batch again, and every other answer in it be committed
        alone, one after another (a client could cause that at will). If that cannot
        be told, the whole batch."""
        assert self._database is not None
        try:
            lost = await unwritable_answers(self._database, self._parts, [p.answer for p in batch])
        except Exception:
            return batch
        kept = []
        for pending in batch:
            answer = pending.answer
            unwritable = lost.get(id(answer))
            if unwritable is None:
                kept.append(pending)
                continue
            log.info(
                "answer not recorded",
                extra={"request_id": answer.request_id, "error": unwritable.error.code},
            )
            if unwritable.content_only:
                # Only its content was refused (its conversation is gone): its client
                # gets an error instead of the end, and the receipt of that may still
                # be recorded, as for `store: false` (the handler records it again).
                answer.store = False
                answer.recorded = False
            if not pending.done.done():
                pending.done.set_exception(unwritable.error)
        return kept

    async def _commit(self, batch: list[_Pending]) -> bool:
        """Write the batch on its own; if that fails, each answer on its own. False if
        the database failed (rather than the batch's rows), which fails the batch."""
        if not batch:
            return True
        started = time.monotonic()
        try:
            await self._write([pending.answer for pending in batch])
        except (DependencyUnavailableError, RolledBack) as exc:
            self._fail(batch)
            # A deadlock or a statement the server cancelled fails this batch alone.
            return not (isinstance(exc, RolledBack) or _database_gone(exc))
        except Exception as exc:
            if len(batch) > 1:
                # One answer's rows may have spoiled the batch (its client was
                # deleted meanwhile, say): commit each alone so the others survive;
                # but not one by one, a timeout each, once the database itself fails.
                for at, pending in enumerate(batch):
                    if not await self._commit([pending]):
                        self._fail(batch[at + 1 :])
                        return False
            else:
                log.warning(
                    "answer not recorded",
                    extra={"request_id": batch[0].answer.request_id, "error": type(exc).__name__},
                )
                self._fail(batch)
            return True
        self._committed(batch, started)
        return True

    @staticmethod
    def _committed(batch: list[_Pending], started: float) -> None:
        HISTORY_COMMIT_SECONDS.observe(time.monotonic() - started)
        HISTORY_BATCH_SIZE.observe(len(batch))
        for pending in batch:
            if not pending.done.done():
                pending.done.set_result(None)

    async def _write(self, answers: Sequence[Answer]) -> None:
        """Commit one batch; raise unless it committed (see write_batch)."""
        assert self._database is not None
        await write_batch(self._database, self._parts, answers)

    def _fail_queued(self) -> None:
        """Fail every answer still queued: the database was found out of reach, and each
        would otherwise wait for its own batch to fail the same way, a timeout later
        (under a hung server, waits grew with the queue). New answers are tried anew."""
        assert self._queue is not None
        if self._carried is not None:
            self._fail([self._carried])
            self._carried = None
        stopping = False
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is None:
                stopping = True
            else:
                self._fail([item])
        if stopping:
            self._queue.put_nowait(None)  # the writer's signal to stop, kept for it

    @staticmethod
    def _fail(batch: list[_Pending]) -> None:
        for pending in batch:
            if not pending.done.done():
                pending.done.set_exception(not_saved())
