"""The signing identity: relay's receipt key and how its custody is held."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


@dataclass(frozen=True)
class SigningIdentity:
    private_key: Ed25519PrivateKey = field(repr=False)
    public_key_hex: str
    # Public facts only (provider, derivation, signature chain): it goes into reports.
    key_custody: dict[str, Any]
    tee_type: str  # "tdx" when a TEE holds the key, else "none"

    @classmethod
    def of(
        cls, key: Ed25519PrivateKey, key_custody: dict[str, Any], tee_type: str
    ) -> SigningIdentity:
        return cls(key, public_key_hex(key.public_key()), key_custody, tee_type)


class KeyProvider(Protocol):
    async def load(self) -> SigningIdentity: ...


def public_key_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def public_key_hex(key: Ed25519PublicKey) -> str:
    return public_key_bytes(key).hex()
