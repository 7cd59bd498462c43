"""SQL for the `receipts` aggregate and the one-row chain head that orders them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from relay.stores.database import Batch, Database


@dataclass(frozen=True, slots=True)
class ChainHead:
    seq: int
    sha256: str | None  # None before the first receipt
    taken: frozenset[str]  # which of the asked receipt ids already exist


@dataclass(frozen=True, slots=True)
class ReceiptRow:
    id: str
    seq: int
    client_id: str
    body: str  # canonical JSON, exactly as served
    sha256: str
    prev_sha256: str | None


async def lock_chain_head(tx: Batch, receipt_ids: Sequence[str]) -> ChainHead:
    """Take the chain head's row lock (held until the transaction ends).

    Every instance's commit queues here, so receipts link one after the other
    with no fork. The existing-id check rides along: an answer recorded twice
    (its client left while it committed) must not get a second receipt.
    """
    await tx.execute(
        "SELECT seq, sha256, ARRAY(SELECT id FROM receipts WHERE id = ANY(%s))"
        " FROM receipt_chain_head WHERE id FOR UPDATE",
        (list(receipt_ids),),
    )
    row = await tx.fetchone()
    if row is None:
        raise RuntimeError("receipt_chain_head has no row; run the migrations")
    seq, sha256, taken = row
    return ChainHead(seq, sha256, frozenset(taken))


def append_receipts(tx: Batch, rows: Sequence[ReceiptRow]) -> None:
    """Insert rows (in chain order) and move the head to the last, with the COMMIT."""
    if not rows:
        return
    last = rows[-1]
    tx.defer(
        "WITH added AS ("
        " INSERT INTO receipts (id, seq, client_id, body, sha256, prev_sha256)"
        " SELECT * FROM unnest(%s::text[], %s::bigint[], %s::uuid[], %s::text[],"
        " %s::text[], %s::text[]))"
        " UPDATE receipt_chain_head SET seq = %s, sha256 = %s WHERE id",
        (
            [row.id for row in rows],
            [row.seq for row in rows],
            [row.client_id for row in rows],
            [row.body for row in rows],
            [row.sha256 for row in rows],
            [row.prev_sha256 for row in rows],
            last.seq,
            last.sha256,
        ),
    )


class ReceiptStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def body_for_client(self, receipt_id: str, client_id: str) -> str | None:
        """The receipt's body if `client_id` made its request; None for anyone else."""
        async with self.db.cursor() as cur:
            await cur.execute(
                "SELECT body FROM receipts WHERE id = %s AND client_id = %s",
                (receipt_id, client_id),
            )
            row = await cur.fetchone()
        return None if row is None else str(row[0])
