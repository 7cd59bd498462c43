"""Receipts: signing, the schema, and what tampering does to verification."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.proofs.canonical import canonical_json
from relay.proofs.near import near_signature, verify_near_signature
from relay.proofs.receipt import (
    RECEIPT_FIELDS,
    ReceiptSigner,
    hash_client_key_id,
    receipt_sha256,
    served_at_now,
    sign_receipt,
)
from relay.proofs.verify import (
    VerificationError,
    verify_body,
    verify_chain,
    verify_receipt_signature,
)

REQUEST = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}'
RESPONSE = b'data: {"choices":[{"delta":{"content":"hello"}}]}\n\ndata: [DONE]\n\n'


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def receipt_fields(prev: str | None = None, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "receipt_id": str(uuid.uuid4()),
        "client_key_id": hash_client_key_id("key123"),
        "conversation_id": None,
        "model": "gpt-test",
        "upstream": "simulator",
        "endpoint": "/v1/chat/completions",
        "status": "complete",
        "stream": True,
        "completed": True,
        "served_at": served_at_now(),
        "request_sha256": sha(REQUEST),
        "forwarded_sha256": sha(REQUEST + b" "),
        "response_sha256": sha(RESPONSE),
        "prev_receipt_sha256": prev,
    }
    return {**fields, **overrides}


def make_chain(key: Ed25519PrivateKey, count: int) -> list[dict[str, Any]]:
    receipts: list[dict[str, Any]] = []
    for _ in range(count):
        prev = receipt_sha256(receipts[-1]) if receipts else None
        receipts.append(sign_receipt(receipt_fields(prev), key))
    return receipts


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_a_signed_receipt_verifies_and_has_every_field(key: Ed25519PrivateKey) -> None:
    receipt = sign_receipt(receipt_fields(), key)
    assert set(receipt) == set(RECEIPT_FIELDS)
    assert receipt["version"] == 1
    assert len(bytes.fromhex(receipt["signing_public_key"])) == 32
    assert len(bytes.fromhex(receipt["signature"])) == 64
    assert verify_receipt_signature(receipt).startswith("signature")


def test_the_signature_covers_canonical_json_of_every_other_field(key: Ed25519PrivateKey) -> None:
    receipt = sign_receipt(receipt_fields(), key)
    body = {name: value for name, value in receipt.items() if name != "signature"}
    key.public_key().verify(bytes.fromhex(receipt["signature"]), canonical_json(body))


def test_the_signer_gives_the_receipt_and_exactly_its_canonical_bytes(
    key: Ed25519PrivateKey,
) -> None:
    fields = receipt_fields(conversation_id=None)
    receipt, body = ReceiptSigner(key).signed(fields)
    assert body == canonical_json(receipt)
    assert receipt == sign_receipt(fields, key)  # Ed25519 signatures are deterministic


def test_receipt_hash_covers_the_whole_signed_receipt(key: Ed25519PrivateKey) -> None:
    receipt = sign_receipt(receipt_fields(), key)
    assert receipt_sha256(receipt) == hashlib.sha256(canonical_json(receipt)).hexdigest()


def flipped(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if value is None:
        return "0" * 64
    last = value[-1]
    return value[:-1] + ("1" if last == "0" else "0")


@pytest.mark.parametrize("field", RECEIPT_FIELDS)
def test_a_change_in_any_field_fails_verification(key: Ed25519PrivateKey, field: str) -> None:
    receipt = sign_receipt(receipt_fields(), key)
    tampered = {**receipt, field: flipped(receipt[field])}
    with pytest.raises(VerificationError, match="signature"):
        verify_receipt_signature(tampered)


def test_an_added_or_removed_field_fails_verification(key: Ed25519PrivateKey) -> None:
    receipt = sign_receipt(receipt_fields(), key)
    with pytest.raises(VerificationError):
        verify_receipt_signature({**receipt, "extra": "x"})
    without = dict(receipt)
    del without["model"]
    with pytest.raises(VerificationError):
        verify_receipt_signature(without)


def test_hex_fields_in_capitals_fail_verification(key: Ed25519PrivateKey) -> None:
    # Same bytes, but not the receipt that was chained: its hash would differ.
    receipt = sign_receipt(receipt_fields(), key)
    for field in ("signature", "signing_public_key"):
        with pytest.raises(VerificationError, match="lower-case"):
            verify_receipt_signature({**receipt, field: receipt[field].upper()})


def test_a_signature_taken_from_another_receipt_fails(key: Ed25519PrivateKey) -> None:
    receipt, other = make_chain(key, 2)
    with pytest.raises(VerificationError, match="signature"):
        verify_receipt_signature({**receipt, "signature": other["signature"]})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("status", 200),  # the answer's outcome, not an HTTP status
        ("status", "done"),
        ("stream", 1),
        ("completed", None),
        ("conversation_id", 5),
        ("served_at", "2026-01-02 03:04:05"),
        ("served_at", "2026-01-02T03:04:05+01:00"),
        ("request_sha256", "AB" * 32),
        ("request_sha256", "ab" * 31 + "a g"),  # a non-hex character inside
        ("request_sha256", "ab " * 16 + "ab" * 8),  # hex that bytes.fromhex reads, spaced
        ("request_sha256", "\u0660" * 64),  # digits, but not ASCII ones
        ("forwarded_sha256", "ab" * 32 + "0"),
        ("response_sha256", "ab"),
        ("prev_receipt_sha256", "xyz"),
        ("model", 1.5),
    ],
)
def test_sign_receipt_refuses_wrong_types(key: Ed25519PrivateKey, field: str, value: Any) -> None:
    with pytest.raises(ValueError):
        sign_receipt(receipt_fields(**{field: value}), key)


def test_sign_receipt_refuses_missing_extra_or_presigned_fields(key: Ed25519PrivateKey) -> None:
    fields = receipt_fields()
    del fields["model"]
    with pytest.raises(ValueError, match="missing"):
        sign_receipt(fields, key)
    with pytest.raises(ValueError, match="unexpected"):
        sign_receipt(receipt_fields(prompt="hi"), key)
    with pytest.raises(ValueError, match="signature"):
        sign_receipt(receipt_fields(signature="00"), key)
    with pytest.raises(ValueError, match="signing_public_key"):
        sign_receipt(receipt_fields(signing_public_key="00" * 32), key)


def test_a_flipped_byte_in_a_body_fails(key: Ed25519PrivateKey) -> None:
    receipt = sign_receipt(receipt_fields(), key)
    assert "response" in verify_body(receipt, "response", RESPONSE)
    assert "request" in verify_body(receipt, "request_sha256", REQUEST)
    tampered = bytearray(RESPONSE)
    tampered[10] ^= 1
    with pytest.raises(VerificationError, match="response body"):
        verify_body(receipt, "response", bytes(tampered))
    with pytest.raises(VerificationError):
        verify_body(receipt, "prompt", REQUEST)


def test_consecutive_receipts_form_a_chain(key: Ed25519PrivateKey) -> None:
    chain = make_chain(key, 4)
    assert chain[0]["prev_receipt_sha256"] is None
    assert "4 receipt(s)" in verify_chain(chain)
    assert "4 receipt(s)" not in verify_chain(chain[1:])  # a tail still links


def test_a_removed_receipt_breaks_the_chain(key: Ed25519PrivateKey) -> None:
    chain = make_chain(key, 4)
    with pytest.raises(VerificationError, match="chain"):
        verify_chain([chain[0], chain[2], chain[3]])


def test_an_altered_receipt_breaks_the_chain_even_if_resigned(key: Ed25519PrivateKey) -> None:
    chain = make_chain(key, 3)
    body = {k: v for k, v in chain[1].items() if k not in ("signature", "signing_public_key")}
    chain[1] = sign_receipt({**body, "model": "cheaper-model"}, key)
    verify_receipt_signature(chain[1])
    with pytest.raises(VerificationError, match="chain"):
        verify_chain(chain)


def test_reordered_receipts_break_the_chain(key: Ed25519PrivateKey) -> None:
    chain = make_chain(key, 3)
    with pytest.raises(VerificationError, match="chain"):
        verify_chain([chain[1], chain[0], chain[2]])


def test_client_key_id_is_hashed() -> None:
    hashed = hash_client_key_id("key123")
    assert "key123" not in hashed
    assert len(hashed) == 64
    assert hashed != hash_client_key_id("key124")


def test_served_at_is_rfc3339_utc(key: Ed25519PrivateKey) -> None:
    stamp = served_at_now()
    assert stamp.endswith("Z") and "T" in stamp
    sign_receipt(receipt_fields(served_at=stamp), key)


def test_near_signature_shape_verifies_and_tampering_fails(key: Ed25519PrivateKey) -> None:
    receipt = sign_receipt(receipt_fields(), key)
    near = near_signature(receipt, key)
    assert near["text"] == f"{receipt['request_sha256']}:{receipt['response_sha256']}"
    assert near["signing_address"] == receipt["signing_public_key"]
    assert near["signing_algo"] == "ed25519"
    verify_near_signature(near)
    with pytest.raises(VerificationError):
        verify_near_signature({**near, "text": near["text"][::-1]})
