"""SQL for the `receipts` aggregate and the one-row chain head that orders them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from relay.stores.database import Batch, Database, json_rows, prepared

# How far back a receipt is found by its completion's id: a client asks for an
# answer's proof soon after the answer; the cost of a miss stays bounded.
RECENT_ANSWERS = 10_000

# The statements of every batch, each prepared once per connection (see append_receipts).
_READ_HEAD = prepared(
    "receipts_read_head", "SELECT seq, sha256 FROM receipt_chain_head WHERE id FOR UPDATE"
)
_LOCK_HEAD = prepared("receipts_lock_head", "SELECT FROM receipt_chain_head WHERE id FOR UPDATE")
_MOVE_HEAD = prepared(
    "receipts_move_head",
    "UPDATE receipt_chain_head SET sha256 = %s::text, seq = CASE WHEN seq = %s::bigint"
    " AND sha256 IS NOT DISTINCT FROM %s::text THEN %s::bigint END WHERE id",
)
_INSERT_RECEIPTS = prepared(
    "receipts_insert",
    "INSERT INTO receipts (id, seq, client_id, body, sha256, prev_sha256, response_id)"
    " SELECT * FROM json_to_recordset(%s::json) AS r(id text, seq bigint, client_id uuid,"
    " body text, sha256 text, prev_sha256 text, response_id text)",
)


@dataclass(frozen=True, slots=True)
class ChainHead:
    seq: int
    sha256: str | None  # None before the first receipt


@dataclass(slots=True)  # not frozen: one is built per answer, and frozen __init__ costs 5x
class ReceiptRow:
    id: str
    seq: int
    client_id: str
    body: str  # canonical JSON, exactly as served
    sha256: str
    prev_sha256: str | None
    response_id: str | None = None  # the provider's id of the completion (chatcmpl-…)


async def lock_chain_head(tx: Batch) -> ChainHead:
    """Read the chain head under its row lock (held until the transaction ends).

    Every instance's commit that reads the head this way queues here, so
    receipts link one after the other with no fork.
    """
    await tx.execute(_READ_HEAD)
    row = await tx.fetchone()
    if row is None:
        raise RuntimeError("receipt_chain_head has no row; run the migrations")
    return ChainHead(row[0], row[1])


def append_receipts(tx: Batch, after: ChainHead, rows: Sequence[ReceiptRow]) -> ChainHead:
    """Insert rows (in chain order, numbered on from `after`) and move the head to the
    last, with the commit; returns the new head.

    The head is locked first, which waits for a transaction still holding it
    (the batch sent before, committing) and then sees its outcome. It moves only
    from exactly `after`: from anywhere else its new `seq` is NULL, which the
    column refuses, and the whole transaction fails. So a chain built on a head
    that is not the stored one never forks or leaves a gap, batches sent one
    after another commit their receipts in that order, and a batch whose
    predecessor rolled back fails too.
    """
    if not rows:
        return after
    last = rows[-1]
    tx.defer(_LOCK_HEAD)
    tx.defer(_MOVE_HEAD, (last.sha256, after.seq, after.sha256, last.seq))
    tx.defer(_INSERT_RECEIPTS, (json_rows(rows),))
    return ChainHead(last.seq, last.sha256)


async def any_stored(db: Database, receipt_ids: Sequence[str]) -> bool:
    """Whether any of `receipt_ids` is stored. Receipts are never deleted (a deleted
    client's stay, anonymous), so a receipt id relay made says for good whether the
    transaction that wrote it committed."""
    async with db.cursor() as cur:
        await cur.execute(
            "SELECT EXISTS (SELECT FROM receipts WHERE id = ANY(%s::text[]))", (list(receipt_ids),)
        )
        row = await cur.fetchone()
    return bool(row[0])


class ReceiptStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def chain_after(self, seq: int, limit: int) -> list[tuple[int, str]]:
        """Up to `limit` receipts (position, body) after position `seq`, in chain order:
        every client's, deleted clients' included."""
        async with self.db.cursor() as cur:
            await cur.execute(
                "SELECT seq, body FROM receipts WHERE seq > %s ORDER BY seq LIMIT %s",
                (seq, limit),
            )
            rows = await cur.fetchall()
        return [(int(row[0]), str(row[1])) for row in rows]

    async def body_for_client(self, receipt_id: str, client_id: str) -> str | None:
        """The receipt's body if `client_id` made its request; None for anyone else."""
        async with self.db.cursor() as cur:
            await cur.execute(
                "SELECT body FROM receipts WHERE id = %s AND client_id = %s",
                (receipt_id, client_id),
            )
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def body_by_response_id(self, response_id: str, client_id: str) -> str | None:
        """The body of the newest receipt of `client_id`'s among its latest RECENT_ANSWERS
        whose completion carried `response_id`; None if there is none."""
        async with self.db.cursor() as cur:
            await cur.execute(
                "SELECT body FROM (SELECT seq, body, response_id FROM receipts"
                " WHERE client_id = %s ORDER BY seq DESC LIMIT %s) recent"
                " WHERE response_id = %s ORDER BY seq DESC LIMIT 1",
                (client_id, RECENT_ANSWERS, response_id),
            )
            row = await cur.fetchone()
        return None if row is None else str(row[0])
