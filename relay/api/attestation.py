"""GET /v1/attestation/report: relay's signing key bound to a TEE quote and the caller's nonce."""

from __future__ import annotations

import logging

from aiohttp import web

from relay.api.body import json_response, query_value
from relay.appkeys import ATTESTATION
from relay.errors import (
    AttestationUnavailableError,
    DependencyUnavailableError,
    InvalidRequestError,
)
from relay.proofs.nonce import parse_nonce

log = logging.getLogger(__name__)

# Every report answers one nonce (the caller's, or one made for this request):
# a cached copy would be a replay.
_NO_STORE = {"Cache-Control": "no-store"}


async def get_attestation_report(request: web.Request) -> web.Response:
    try:
        nonce = parse_nonce(query_value(request, "nonce"))
    except ValueError as exc:
        raise InvalidRequestError(str(exc).capitalize() + ".", param="nonce") from None
    try:
        report = await request.app[ATTESTATION].report(nonce)
    except AttestationUnavailableError as exc:
        # The cause names the agent's endpoint or socket path: for the operator's
        # log, not for an unauthenticated caller.
        log.warning("attestation report unavailable", extra={"error": exc.message})
        raise DependencyUnavailableError(
            "Attestation is unavailable right now; try again shortly.",
            code="attestation_unavailable",
        ) from None
    return json_response(report, headers=_NO_STORE)
