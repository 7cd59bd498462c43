"""One group-commit batch: the parts that write its rows (history, receipts), in one
transaction; a batch whose COMMIT relay lost settled by what was stored; and, of a
batch that failed, the answers that can no longer be written. (relay.services.recorder
queues answers into batches and settles their outcomes.)"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from relay.errors import AuthenticationError, RelayError
from relay.services.answers import Answer
from relay.stores.clients import ClientStore
from relay.stores.database import Batch, Database, ServerProcess
from relay.stores.database_failures import UnconfirmedCommitError
from relay.stores.lost_commits import settle

log = logging.getLogger(__name__)


class RecordPart(Protocol):
    """One kind of row written for every batch (history, receipts), in the batch's transaction."""

    def wants(self, answer: Answer) -> bool:
        """Whether this part writes anything for `answer`."""

    async def write(self, tx: Batch, answers: Sequence[Answer]) -> None:
        """Write rows for `answers` (in commit order); raising rolls back the whole batch.

        `tx.defer` what needs no answer back: a batch whose parts only defer is
        one round trip. The next batch may be written before this one's outcome is
        known; `tx.on_rollback` learns that it failed."""

    async def unwritable(
        self, db: Database, answers: Sequence[Answer]
    ) -> list[tuple[Answer, RelayError]]:
        """Those of `answers` whose rows this part can no longer write (what only
        this part's rows name was deleted since, such as their conversation), each
        with what its client is told; asked once a batch has failed. (A client
        deleted since, which every part's rows name, the recorder asks itself.)"""

    async def written(self, db: Database, answers: Sequence[Answer]) -> bool | None:
        """Whether this part's rows of `answers` are stored, asked of a batch whose
        outcome relay lost once its server process is gone (all of a batch's rows
        committed, or none did); None if no row of this part says so exactly."""


class RolledBack(Exception):
    """A batch whose connection died once its COMMIT was sent is known not to have
    committed: its server process is gone and none of its rows is stored (a stale
    connection after a failover, say). Nothing of it was applied: it may be sent again."""


async def write_batch(
    database: Database, parts: Sequence[RecordPart], answers: Sequence[Answer]
) -> None:
    """Commit one batch, each part writing its rows in one transaction; raise unless it
    committed. A batch whose COMMIT relay lost is settled by what was stored: it
    returns if the batch committed after all, raises RolledBack if its connection
    died and nothing of it was applied (it may be sent again), and raises the loss
    itself if that cannot be told, or the database was too slow to answer in time
    (another try would only wait that out again)."""
    try:
        async with database.batch() as tx:
            for part in parts:
                await part.write(tx, answers)
    except UnconfirmedCommitError as lost:
        committed = await _committed_after_all(database, parts, answers, lost.backend)
        if committed is None or (not committed and lost.timed_out):
            raise
        if not committed:
            raise RolledBack() from lost


async def _committed_after_all(
    database: Database,
    parts: Sequence[RecordPart],
    answers: Sequence[Answer],
    backend: ServerProcess,
) -> bool | None:
    """Settle a batch relay lost touch with after sending its COMMIT: it may have
    committed (its clients then told "not saved" would ask again and be stored
    twice). Once the server process that ran it is gone, its rows say which, and
    whether it is as durable as any commit (relay.stores.lost_commits). None if that
    cannot be told (then logged)."""

    async def stored() -> bool | None:
        # The first part whose rows say; none, for a history-only batch that only
        # continues conversations.
        for part in parts:
            if (written := await part.written(database, answers)) is not None:
                return written
        return None

    try:
        committed, why = await settle(database, backend, stored)
    except Exception as exc:  # PostgreSQL could not be asked
        committed, why = None, type(exc).__name__
    if committed:
        log.info("answer batch committed after all", extra={"answers": len(answers)})
    if committed is not None:
        return committed
    log.warning(
        "answer batch outcome unknown",
        extra={"request_ids": [answer.request_id for answer in answers], "error": why},
    )
    return None


@dataclass(frozen=True, slots=True)
class Unwritable:
    error: RelayError  # what its client is told
    content_only: bool  # only a part's content was refused: its receipt may still be written


def client_deleted() -> AuthenticationError:
    # Asking again would only meet a 401: the client's tokens went with it.
    return AuthenticationError(
        "The API client was deleted while this answer was on its way; it was not saved.",
        code="token_revoked",
        rejected=True,
    )


async def unwritable_answers(
    database: Database, parts: Sequence[RecordPart], answers: Sequence[Answer]
) -> dict[int, Unwritable]:
    """Of the answers of a batch that failed, by id(answer), those that can no longer be
    written: their client deleted since the request came in (which every part's rows
    name), or what a part needs gone (such as their conversation)."""
    gone = await ClientStore(database).missing(answer.client.id for answer in answers)
    lost = {
        id(answer): Unwritable(client_deleted(), content_only=False)
        for answer in answers
        if answer.client.id in gone
    }
    for part in parts:
        for answer, why in await part.unwritable(database, answers):
            lost.setdefault(id(answer), Unwritable(why, content_only=True))
    return lost
