"""GET /v1/attestation/report: relay's signing key bound to a TEE quote and the caller's nonce."""

from __future__ import annotations

from aiohttp import web

from relay.api.body import json_response
from relay.appkeys import ATTESTATION
from relay.errors import InvalidRequestError
from relay.proofs.report import parse_nonce

# Every report answers one nonce (the caller's, or one made for this request):
# a cached copy would be a replay.
_NO_STORE = {"Cache-Control": "no-store"}


async def get_attestation_report(request: web.Request) -> web.Response:
    try:
        nonce = parse_nonce(request.query.get("nonce"))
    except ValueError as exc:
        raise InvalidRequestError(str(exc).capitalize() + ".", param="nonce") from None
    report = await request.app[ATTESTATION].report(nonce)
    return json_response(report, headers=_NO_STORE)
