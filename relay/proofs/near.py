"""NEAR's signature shape for a receipt, for clients built for NEAR's private inference."""

from __future__ import annotations

from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from relay.proofs.identity import public_key_hex
from relay.proofs.verify import VerificationError


def near_text(receipt: dict[str, Any]) -> str:
    return f"{receipt['request_sha256']}:{receipt['response_sha256']}"


def near_signature(receipt: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, str]:
    """{text, signature, signing_algo, signing_address}; the address is the Ed25519 key in hex."""
    text = near_text(receipt)
    return {
        "text": text,
        "signature": key.sign(text.encode()).hex(),
        "signing_algo": "ed25519",
        "signing_address": public_key_hex(key.public_key()),
    }


def verify_near_signature(signature: dict[str, Any]) -> str:
    """Raises VerificationError unless signature is a valid Ed25519 one over its text."""
    if signature.get("signing_algo") != "ed25519":
        raise VerificationError("near signature: signing_algo is not ed25519")
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(signature["signing_address"]))
        key.verify(bytes.fromhex(signature["signature"]), signature["text"].encode())
    except (KeyError, ValueError, TypeError, AttributeError, InvalidSignature):
        raise VerificationError("near signature: does not verify under signing_address") from None
    return f"near signature  valid over {signature['text'][:16]}…"
