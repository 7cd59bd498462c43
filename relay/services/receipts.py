"""Receipts: signed and chained in every group commit, read back by the client they belong to."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

import orjson

from relay.errors import InvalidRequestError, NotFoundError, RelayError
from relay.proofs.identity import SigningIdentity
from relay.proofs.receipt import ReceiptSigner, hash_client_key_id, served_at_now, sha256_hex
from relay.services.answers import Answer
from relay.services.attestation import Attestation
from relay.stores.database import Batch, Database
from relay.stores.receipts import (
    ChainHead,
    ReceiptRow,
    ReceiptStore,
    any_stored,
    append_receipts,
    lock_chain_head,
)

log = logging.getLogger(__name__)

RECEIPT_HEADER = "x-receipt-id"
# An answer that ended before relay wrote a byte of it (client gone while the
# provider was still answering): the client received exactly nothing.
_NOTHING_SHA256 = hashlib.sha256(b"").hexdigest()
_RECEIPT_ID = re.compile(r"[0-9a-f]{32}")
# A provider's completion id as relay keeps it (and looks it up): short printable text.
_RESPONSE_ID_CHARS = 200


def _is_response_id(text: str) -> bool:
    return 0 < len(text) <= _RESPONSE_ID_CHARS and text.isprintable()


def response_id_of(answer: Answer) -> str | None:
    """The provider's id of the answer's completion, if it is one relay can keep."""
    response_id = answer.summary.response_id
    return response_id if response_id is not None and _is_response_id(response_id) else None


def receipt_fields(answer: Answer, prev_sha256: str | None, served_at: str) -> dict[str, Any]:
    """Everything signed about one answer: ids and hashes, never content."""
    return {
        "receipt_id": answer.receipt_id,
        "client_key_id": hash_client_key_id(answer.client.key_id),
        "conversation_id": answer.conversation_id,
        "model": answer.route.model,
        "upstream": answer.route.upstream.name,
        "endpoint": answer.endpoint,
        "status": answer.status,
        "stream": answer.stream,
        "completed": answer.status == "complete",
        "served_at": served_at,
        "request_sha256": answer.request_sha256,
        "forwarded_sha256": answer.forwarded_sha256,
        "response_sha256": answer.response_sha256 or _NOTHING_SHA256,
        "prev_receipt_sha256": prev_sha256,
    }


class ReceiptsPart:
    """The receipts rows of a group commit (see relay.services.batch_write.RecordPart).

    Each receipt names the one before it, so a batch must know the chain head
    before it is signed. This instance remembers the head its last batch left
    (committed or still committing), so while it is the only one writing
    receipts a batch needs no round trip to learn it, and the next batch can be
    signed and sent while the one before commits. The database refuses a batch
    built on any other head (see `append_receipts`): PostgreSQL may run two
    batches sent one after the other in the other order, or another instance
    may have moved the head. After such a failure, or any other, every batch
    reads the head under its row lock for `SETTLE_SECONDS`, so that the batches
    tried again, and those sent meanwhile, chain on what was committed rather
    than on heads that may fail in turn; for `SHARED_SECONDS` after another
    writer was seen, likewise. Written for every answer, `store: false` too.
    """

    SHARED_SECONDS = 60.0
    SETTLE_SECONDS = 1.0

    def __init__(self, identity: SigningIdentity) -> None:
        self.signer = ReceiptSigner(identity.private_key)
        self._head: ChainHead | None = None  # as the batches written so far leave it
        self._mine: collections.deque[ChainHead] = collections.deque(maxlen=64)  # heads built here
        self._shared_until = 0.0  # another instance signs too: read the head under lock
        self._locked_until = 0.0  # a batch failed: read the head under lock meanwhile
        # One batch at a time reads and advances the head: a batch that waits for
        # it under the row lock holds up the next, which must chain on it.
        self._building = asyncio.Lock()

    def wants(self, answer: Answer) -> bool:
        return True  # every answer gets a receipt

    async def unwritable(
        self, db: Database, answers: Sequence[Answer]
    ) -> list[tuple[Answer, RelayError]]:
        return []  # what a receipt names is the answer's client: the recorder asks that

    async def written(self, db: Database, answers: Sequence[Answer]) -> bool | None:
        return await any_stored(db, [answer.receipt_id for answer in answers])

    async def write(self, tx: Batch, answers: Sequence[Answer]) -> None:
        if not answers:
            return
        async with self._building:
            head = self._head
            now = time.monotonic()
            if head is None or now < max(self._shared_until, self._locked_until):
                head = await lock_chain_head(tx)
                if self._mine and head not in self._mine:  # another instance signs too
                    if now >= self._shared_until:
                        log.info("receipt chain shared: reading its head under lock")
                    self._shared_until = now + self.SHARED_SECONDS
            self._head = self._sign(tx, answers, head)
            self._mine.append(self._head)

    def _sign(self, tx: Batch, answers: Sequence[Answer], head: ChainHead) -> ChainHead:
        served_at, seq, prev = served_at_now(), head.seq, head.sha256
        rows: list[ReceiptRow] = []
        for answer in answers:
            _, body = self.signer.signed(receipt_fields(answer, prev, served_at))
            sha256 = sha256_hex(body)
            seq += 1
            rows.append(
                ReceiptRow(
                    id=answer.receipt_id,
                    seq=seq,
                    client_id=answer.client.id,
                    body=body.decode(),
                    sha256=sha256,
                    prev_sha256=prev,
                    response_id=response_id_of(answer),
                )
            )
            prev = sha256
        tx.on_rollback(self._forget)
        return append_receipts(tx, head, rows)

    def _forget(self) -> None:
        # Whatever was built on the failed batch fails too; read the head afresh, and
        # keep reading it under lock until the batches in flight have settled.
        self._head = None
        self._locked_until = time.monotonic() + self.SETTLE_SECONDS


class ReceiptService:
    def __init__(self, store: ReceiptStore, attestation: Attestation) -> None:
        self.store = store
        self.attestation = attestation

    async def receipt_body(self, answer_id: str, client_id: str) -> bytes:
        """The exact bytes of the receipt `answer_id` names (its receipt id, or the id
        of the completion it covers); NotFoundError unless it is the client's own."""
        body = None
        if _RECEIPT_ID.fullmatch(answer_id):
            body = await self.store.body_for_client(answer_id, client_id)
        # Not one of its receipt ids: a completion id that looks like one (some providers
        # write theirs as 32 hex digits, a uuid4().hex) is still a completion id.
        if body is None and _is_response_id(answer_id):
            body = await self.store.body_by_response_id(answer_id, client_id)
        if body is None:
            # The same answer for another client's receipt as for none at all.
            raise NotFoundError("No such receipt.", code="receipt_not_found")
        return body.encode()

    async def chain_page(self, after: int, limit: int) -> tuple[list[tuple[int, bytes]], bool]:
        """The chain's receipts after position `after` (each with its position, its exact
        bytes), at most `limit`, and whether more follow."""
        rows = await self.store.chain_after(after, limit + 1)
        return [(seq, body.encode()) for seq, body in rows[:limit]], len(rows) > limit

    async def near_signature(
        self, answer_id: str, client_id: str, signing_algo: str | None = None
    ) -> dict[str, str]:
        # NEAR's clients may ask for ecdsa; relay's key signs Ed25519 alone.
        if signing_algo not in (None, "", "ed25519"):
            raise InvalidRequestError(
                "relay signs with ed25519 only; ask with signing_algo=ed25519.",
                param="signing_algo",
            )
        receipt = orjson.loads(await self.receipt_body(answer_id, client_id))
        return self.attestation.near_signature(receipt)
