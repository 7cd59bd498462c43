"""Start-up and shutdown of the signing identity and of receipts (`cleanup_ctx` generators)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from relay.appkeys import ANSWER_RECORDER, ATTESTATION, DATABASE, RECEIPTS, SETTINGS
from relay.services.attestation import open_attestation
from relay.services.receipts import ReceiptService, ReceiptsPart
from relay.stores.receipts import ReceiptStore


async def attestation_context(app: web.Application) -> AsyncIterator[None]:
    """First resource: an unreachable dstack agent stops start-up before anything opens."""
    async with open_attestation(app[SETTINGS]) as attestation:
        app[ATTESTATION] = attestation
        yield


async def receipts_context(app: web.Application) -> AsyncIterator[None]:
    attestation = app[ATTESTATION]
    app[RECEIPTS] = ReceiptService(ReceiptStore(app[DATABASE]), attestation)
    if app[SETTINGS].receipts:
        # The group commit's first part (history_context adds history after it):
        # a batch waits at the chain head for the batch before it, holding nothing.
        app[ANSWER_RECORDER].add_part(ReceiptsPart(attestation.identity))
    yield
