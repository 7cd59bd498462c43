"""The process's signing identity and, in dstack mode, the guest agent that vouches for it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from relay.config import Settings
from relay.errors import NOT_RETRIED, ConflictError
from relay.proofs.dstack_key import DstackKeyProvider
from relay.proofs.identity import SigningIdentity
from relay.proofs.keyfile import FileKeyProvider
from relay.proofs.near import near_signature
from relay.proofs.report import build_report

if TYPE_CHECKING:
    from relay.proofs.agent import DstackAgent

log = logging.getLogger(__name__)


def none_warning(settings: Settings) -> str:
    """What production without a TEE means, true whether receipts are on or off."""
    signed = (
        "receipts are signed with a key"
        if settings.receipts
        else "reports name a signing key (receipts are off)"
    )
    return (
        f"RELAY_ATTESTATION=none: {signed} kept on the host's disk; "
        "no TEE vouches for the code or the key, so clients cannot verify what ran"
    )


@dataclass(frozen=True)
class Attestation:
    identity: SigningIdentity
    agent: DstackAgent | None  # None in none mode: there is no quote to ask for
    warning: str | None = None

    @property
    def tee_type(self) -> str:
        return self.identity.tee_type

    async def report(self, nonce: bytes | None) -> dict[str, Any]:
        return await build_report(self.identity, nonce, self.agent)

    def near_signature(self, receipt: dict[str, Any]) -> dict[str, str]:
        """NEAR's signature over the receipt's hashes, by the key that signed the receipt:
        this one. Another instance's receipt (a `none` instance with a key of its own,
        or this one before its key changed) is refused: a key, TEE-attested perhaps,
        must not vouch for hashes it never witnessed. Marked not to be retried: OpenAI's
        SDKs and NEAR's clients repeat a 409 blindly, and only the signer can answer."""
        if receipt.get("signing_public_key") != self.identity.public_key_hex:
            raise ConflictError(
                "This receipt was signed by another key than this relay's; ask the"
                " instance that signed it (its report names its key).",
                code="receipt_signed_by_another_key",
                headers=dict(NOT_RETRIED),
            )
        return near_signature(receipt, self.identity.private_key)


@asynccontextmanager
async def open_attestation(settings: Settings) -> AsyncIterator[Attestation]:
    """Load the signing key; raises AttestationUnavailableError if dstack is configured but down."""
    if settings.attestation == "dstack":
        # Built only here: the SDK's constructor refuses a missing socket. Imported only
        # here too: the SDK (httpx, pydantic, eth_keys) is a tenth of a second at start-up.
        from relay.proofs.agent import DstackAgent

        async with DstackAgent(settings.dstack_endpoint or None) as agent:
            identity = await DstackKeyProvider(agent).load()
            log.info("receipt signing key derived in the TEE", extra={"tee_type": "tdx"})
            yield Attestation(identity, agent)
        return
    identity = await FileKeyProvider(settings.state_path).load()
    warning = none_warning(settings) if settings.production else None
    if warning:
        log.warning(warning)
    yield Attestation(identity, None, warning)
