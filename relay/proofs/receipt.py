"""Receipts: the signed, hash-chained record of one answer relay relayed."""

from __future__ import annotations

import functools
import hashlib
import re
from datetime import UTC, datetime
from types import NoneType
from typing import Any

import nacl.bindings
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.proofs.canonical import canonical_json
from relay.proofs.identity import public_key_hex

RECEIPT_VERSION = 1

# Field → the exact types it may hold (bool is never accepted where int is meant).
RECEIPT_SCHEMA: dict[str, tuple[type, ...]] = {
    "version": (int,),
    "receipt_id": (str,),
    "client_key_id": (str,),
    "conversation_id": (str, NoneType),
    "model": (str,),
    "upstream": (str,),
    "endpoint": (str,),
    "status": (str,),  # one of RECEIPT_STATUSES
    "stream": (bool,),
    "completed": (bool,),
    "served_at": (str,),
    "request_sha256": (str,),
    "forwarded_sha256": (str,),
    "response_sha256": (str,),
    "prev_receipt_sha256": (str, NoneType),
    "signing_public_key": (str,),
}
SIGNED_FIELDS = tuple(RECEIPT_SCHEMA)
_SIGNED_SET = frozenset(SIGNED_FIELDS)
RECEIPT_FIELDS = (*SIGNED_FIELDS, "signature")
# How an answer ended (relay.services.answers.Answer.status): complete, the client
# got the whole answer; cut, the provider broke off; cancelled, the client left
# while the answer was still going well; failed, the provider refused, failed it
# (an error event) or was unreachable (Answer.client_left).
RECEIPT_STATUSES = ("complete", "cut", "cancelled", "failed")
HASH_FIELDS = ("request_sha256", "forwarded_sha256", "response_sha256", "prev_receipt_sha256")

_RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")


class ReceiptSigner:
    """An Ed25519 key made ready to sign receipts, one per answer: its public half is
    worked out once, and libsodium (PyNaCl) signs, in about 60% of the time OpenSSL
    takes here for the very same (deterministic) signatures."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.public_key_hex = public_key_hex(key.public_key())
        # libsodium's own form of the key (seed and public key); signed through PyNaCl's
        # bindings, not its SigningKey, whose wrapping costs a tenth of a signature.
        _, self._secret = nacl.bindings.crypto_sign_seed_keypair(key.private_bytes_raw())

    def sign(self, data: bytes) -> bytes:
        # crypto_sign gives the signature followed by the message: the first 64 bytes.
        return nacl.bindings.crypto_sign(data, self._secret)[: nacl.bindings.crypto_sign_BYTES]

    def signed(self, fields: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        """Validate the body, fill version and signing_public_key, and sign it:
        the receipt and its canonical bytes (what is stored, served and hashed)."""
        if "signature" in fields:
            raise ValueError("receipt fields must not carry a signature already")
        body = dict(fields)
        body.setdefault("version", RECEIPT_VERSION)
        if body.setdefault("signing_public_key", self.public_key_hex) != self.public_key_hex:
            raise ValueError("signing_public_key does not match the signing key")
        check_receipt_body(body)
        # The copy made above becomes the receipt: signed as it stands, then given its signature.
        body["signature"] = self.sign(_canonical_checked(body)).hex()
        return body, _canonical_checked(body)


def _canonical_checked(receipt: dict[str, Any]) -> bytes:
    # check_receipt_body allowed only str, bool, None and the version (int 1) in a flat
    # object: sorted keys and no whitespace already make the canonical form, so
    # canonical_json's walk over the values would only repeat that check.
    return orjson.dumps(receipt, option=orjson.OPT_SORT_KEYS)


def sign_receipt(fields: dict[str, Any], key: Ed25519PrivateKey | ReceiptSigner) -> dict[str, Any]:
    """Validate the body, fill version and signing_public_key, and sign it."""
    signer = key if isinstance(key, ReceiptSigner) else ReceiptSigner(key)
    return signer.signed(fields)[0]


def check_receipt_body(body: dict[str, Any]) -> None:
    """Raise ValueError unless body has exactly the receipt fields with the right types."""
    if body.keys() != _SIGNED_SET:
        missing = [name for name in SIGNED_FIELDS if name not in body]
        extra = sorted(set(body) - _SIGNED_SET)
        raise ValueError(f"receipt fields: missing {missing}, unexpected {extra}")
    for name, allowed in RECEIPT_SCHEMA.items():
        if type(body[name]) not in allowed:
            kinds = " or ".join(kind.__name__ for kind in allowed)
            raise ValueError(f"receipt field {name} must be {kinds}")
    if body["version"] != RECEIPT_VERSION:
        raise ValueError(f"receipt version must be {RECEIPT_VERSION}")
    if body["status"] not in RECEIPT_STATUSES:
        raise ValueError(f"receipt status must be one of {', '.join(RECEIPT_STATUSES)}")
    for name in HASH_FIELDS:
        if body[name] is not None and not _is_sha256_hex(body[name]):
            raise ValueError(f"receipt field {name} must be 64 lowercase hex characters")
    if not _RFC3339_UTC.fullmatch(body["served_at"]):
        raise ValueError("served_at must be an RFC 3339 UTC time like 2026-01-02T03:04:05.678Z")


def _is_sha256_hex(value: str) -> bool:
    # 64 lower-case hex digits: what survives a round trip through bytes unchanged
    # (fromhex reads upper case and spaces too; hex() writes neither). Checked on
    # every receipt signed: a third of the cost of a regex or of str.strip here.
    try:
        return len(value) == 64 and bytes.fromhex(value).hex() == value
    except ValueError:
        return False


def signing_payload(receipt: dict[str, Any]) -> bytes:
    """The bytes the signature covers: canonical JSON of every field but the signature."""
    return canonical_json({name: value for name, value in receipt.items() if name != "signature"})


def receipt_sha256(receipt: dict[str, Any]) -> str:
    """Hash of the whole signed receipt; the next receipt's prev_receipt_sha256."""
    return sha256_hex(canonical_json(receipt))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@functools.lru_cache(maxsize=10_000)  # some 200 bytes each: 2 MiB at most
def hash_client_key_id(key_id: str) -> str:
    # Receipts travel to third parties; the key id itself is not theirs to see.
    return sha256_hex(b"relay-client-key-id:" + key_id.encode())


def served_at_now() -> str:
    """The current time in the RFC 3339 UTC form receipts use (milliseconds, Z)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
