"""dstack's signature chain: GetKey's key, vouched for by the app key, issued by a KMS root.

As dstack builds it (guest-agent/src/rpc_service.rs `get_key`, kms/src/crypto.rs
`derive_k256_key` and `sign_message`), each link is a 65-byte r‖s‖recovery-id
secp256k1 signature over keccak256 of:

- chain[0], by the app key: "<purpose>:" + lower-case hex of the derived key, SEC1 compressed;
- chain[1], by the KMS root: b"dstack-kms-issued:" + the 20-byte app id + the app key,
  SEC1 compressed (raw bytes, not hex).

Recovering the signers needs no secret, but any well-formed chain recovers *some*
root: only comparing it with the root the KMS publishes proves anything.

eth_keys and eth_utils (which load pydantic) are imported by the functions that use
them: `relay serve` without dstack, and `relay verify` of a report with no chain, never do.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

if TYPE_CHECKING:
    from eth_keys.datatypes import PublicKey

CHAIN_LENGTH = 2
APP_ID_SIZE = 20
KMS_ISSUED_PREFIX = b"dstack-kms-issued:"
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_KEY_HEX = re.compile(r"(?:0x)?((?:[0-9a-fA-F]{2})+)")  # strict: fromhex would skip spaces


class KmsRoot(NamedTuple):
    public_key: str  # SEC1 compressed, hex: what dstack's KMS contract publishes as k256Pubkey
    address: str  # its Ethereum address, EIP-55 checksummed

    def is_named_by(self, name: str) -> bool:
        """Whether `name` (see kms_root_address) is this root; ValueError if it names no key."""
        return kms_root_address(name).lower() == self.address.lower()


def kms_root_of(
    derived_public_key: bytes, purpose: str, app_id: bytes, chain: Sequence[bytes]
) -> KmsRoot:
    """The KMS root at the end of GetKey's chain for this key; ValueError if it is malformed."""
    if len(chain) != CHAIN_LENGTH:
        raise ValueError(f"expected {CHAIN_LENGTH} signatures, got {len(chain)}")
    if len(app_id) != APP_ID_SIZE:
        raise ValueError(f"the app id is {len(app_id)} bytes, not {APP_ID_SIZE}")
    derived = _public_key(derived_public_key, "the derived key")
    app_key = _signer(f"{purpose}:{derived.to_compressed_bytes().hex()}".encode(), chain[0], 0)
    issued = KMS_ISSUED_PREFIX + app_id + app_key.to_compressed_bytes()
    root = _signer(issued, chain[1], 1)
    return KmsRoot(root.to_compressed_bytes().hex(), root.to_checksum_address())


def kms_root_address(name: str) -> str:
    """The address of the KMS root `name` gives: a 0x address, or its public key in hex
    (SEC1, compressed or not, with or without 0x). ValueError if it names no key."""
    if _ADDRESS.fullmatch(name):
        from eth_utils import is_checksum_address

        mixed_case = name[2:] not in (name[2:].lower(), name[2:].upper())
        if mixed_case and not is_checksum_address(name):
            raise ValueError(f"KMS root {name} fails its EIP-55 checksum (a typo?)")
        return name
    key_hex = _KEY_HEX.fullmatch(name)
    if not key_hex:
        raise ValueError(f"KMS root {name!r} is neither a 0x address nor a public key in hex")
    return _public_key(bytes.fromhex(key_hex[1]), f"KMS root {name}").to_checksum_address()


def _public_key(data: bytes, what: str) -> PublicKey:
    from eth_keys.datatypes import PublicKey

    # cryptography checks the point is on the curve, which eth_keys does not.
    try:
        point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), data)
    except ValueError:
        raise ValueError(f"{what} is not a secp256k1 public key (SEC1)") from None
    return PublicKey(point.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:])


def _signer(message: bytes, signature: bytes, link: int) -> PublicKey:
    from eth_keys.constants import SECPK1_N
    from eth_keys.datatypes import Signature
    from eth_keys.exceptions import BadSignature
    from eth_utils import keccak
    from eth_utils.exceptions import ValidationError

    name = f"chain[{link}]"
    if len(signature) != 65:
        raise ValueError(f"{name} is {len(signature)} bytes, not 65 (r‖s‖recovery id)")
    if signature[64] not in (0, 1):
        # dstack writes k256's recovery id as is: 0 or 1, never Ethereum's 27/28.
        raise ValueError(f"{name} has recovery id {signature[64]}, not 0 or 1")
    if int.from_bytes(signature[32:64], "big") > SECPK1_N // 2:
        # k256 only makes low-s signatures; a high-s twin of one is another encoding of it.
        raise ValueError(f"{name} has a high s, which dstack never writes")
    try:
        return Signature(signature).recover_public_key_from_msg_hash(keccak(message))
    except (BadSignature, ValidationError):
        raise ValueError(f"{name} recovers no key") from None
