"""The `dstack`-mode signing key: derived from the guest agent's GetKey, same on every restart."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from relay.errors import AttestationUnavailableError
from relay.proofs.identity import SigningIdentity, public_key_hex

if TYPE_CHECKING:
    from relay.proofs.agent import DstackAgent

KEY_PATH = "relay/receipts/ed25519"
KEY_PURPOSE = "signing"
# GetKey's default algorithm works on every dstack OS (ed25519 needs >= 0.5.7).
KEY_ALGORITHM = "secp256k1"
DERIVATION_INFO = b"relay receipt signing key v1"
BINDING_PREFIX = "relay-receipt-key:"
BINDING_SCHEME = "ecdsa-secp256k1-sha256-der"


class DstackKeyProvider:
    def __init__(self, agent: DstackAgent) -> None:
        self.agent = agent

    async def load(self) -> SigningIdentity:
        response = await self.agent.get_key(KEY_PATH, KEY_PURPOSE)
        try:
            secret = response.decode_key()
            if len(secret) < 32:
                raise ValueError("shorter than 32 bytes")
            key = derive_signing_key(secret)
            custody = _custody(secret, key, response.signature_chain)
        except ValueError as exc:
            raise AttestationUnavailableError(
                f"dstack GetKey returned an unusable key: {exc}"
            ) from None
        return SigningIdentity.of(key, custody, "tdx")


def derive_signing_key(secret: bytes) -> Ed25519PrivateKey:
    """Ed25519 key = HKDF-SHA256(GetKey bytes, no salt, DERIVATION_INFO, 32 bytes).

    HKDF rather than the raw bytes: GetKey's key is a secp256k1 scalar that other
    code may use under the same path; a separate, labelled derivation keeps the
    Ed25519 key independent of it.
    """
    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=DERIVATION_INFO).derive(
        secret
    )
    return Ed25519PrivateKey.from_private_bytes(seed)


def _custody(secret: bytes, key: Ed25519PrivateKey, chain: list[str]) -> dict[str, Any]:
    # The signature chain vouches for GetKey's secp256k1 key; that key signing the
    # Ed25519 public key links the chain to the key that signs receipts.
    derived = ec.derive_private_key(int.from_bytes(secret[:32], "big"), ec.SECP256K1())
    public = public_key_hex(key.public_key())
    message = BINDING_PREFIX + public
    signature = derived.sign(
        message.encode(), ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
    )
    return {
        "provider": "dstack",
        "algorithm": "ed25519",
        "get_key": {"path": KEY_PATH, "purpose": KEY_PURPOSE, "algorithm": KEY_ALGORITHM},
        "derivation": "hkdf-sha256, no salt, info=" + DERIVATION_INFO.decode(),
        "derived_public_key": derived.public_key()
        .public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
        .hex(),
        "signature_chain": list(chain),
        "binding": {"scheme": BINDING_SCHEME, "message": message, "signature": signature.hex()},
    }
