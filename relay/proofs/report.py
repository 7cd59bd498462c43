"""Attestation reports: relay's signing key bound to a TEE quote and the caller's nonce."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

import relay
from relay.errors import AttestationUnavailableError
from relay.proofs.identity import SigningIdentity
from relay.proofs.nonce import NONCE_SIZE
from relay.proofs.quote import quote_report_data

if TYPE_CHECKING:
    from relay.proofs.agent import DstackAgent


def report_data_for(public_key_hex: str, nonce: bytes) -> bytes:
    """public key (32 bytes) ‖ nonce (32 bytes): the layout NEAR's verifiers read."""
    return bytes.fromhex(public_key_hex) + nonce


async def build_report(
    identity: SigningIdentity, nonce: bytes | None, agent: DstackAgent | None
) -> dict[str, Any]:
    """The report for one request; pass agent only in dstack mode. Never cache it."""
    if (agent is None) != (identity.tee_type == "none"):
        raise ValueError("a dstack identity needs the agent, a none identity must not have one")
    generated = nonce is None
    if nonce is None:
        nonce = secrets.token_bytes(NONCE_SIZE)
    elif len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
    report_data = report_data_for(identity.public_key_hex, nonce)
    report: dict[str, Any] = {
        "signing_algo": "ed25519",
        "signing_public_key": identity.public_key_hex,
        # NEAR's verifiers read the key by this name (and match it to the signature's).
        "signing_address": identity.public_key_hex,
        "request_nonce": nonce.hex(),
        "nonce_generated": generated,
        "report_data": report_data.hex(),
        "tee_type": "none",
        # none mode: null, never a placeholder a careless verifier could mistake for a quote.
        "intel_quote": None,
        "event_log": None,
        "info": {},
        "key_custody": identity.key_custody,
        "relay_version": relay.__version__,
    }
    if agent is None:
        return report
    quote = await agent.get_quote(report_data)
    try:
        quoted = quote_report_data(quote.decode_quote())
    except ValueError as exc:
        raise AttestationUnavailableError(f"dstack returned an unreadable quote: {exc}") from None
    if quoted is not None and quoted != report_data:
        raise AttestationUnavailableError("dstack returned a quote over different report_data")
    report.update(
        tee_type="tdx",
        intel_quote=quote.quote,
        event_log=quote.event_log,  # the agent's JSON text, kept byte-exact for replay
        info=await agent.info(),
    )
    return report
