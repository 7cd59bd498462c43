"""The OpenAPI description of relay's proofs: the attestation report, receipts, NEAR signatures."""

from __future__ import annotations

from typing import Any

from relay.api.spec.components import REQUEST_LIMIT_HEADERS, ref
from relay.api.spec.paths import AUTHENTICATED, JWT, NONE, answer, operation, path_parameter

HEX = {"type": "string", "pattern": "^[0-9a-f]*$"}
SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
RECEIPT_ID = path_parameter(
    "receipt_id",
    "The answer's `x-receipt-id` header, or the `id` of its completion (`chatcmpl-…`)"
    " among your latest 10,000 answers.",
)
SIGNING_ALGO = {
    "name": "signing_algo",
    "in": "query",
    "required": False,
    "description": "As NEAR's clients send it; relay signs with `ed25519` only (else 400).",
    "schema": {"type": "string", "enum": ["ed25519"]},
}

PROOF_SCHEMAS: dict[str, Any] = {
    "AttestationReport": {
        "type": "object",
        "required": [
            "signing_algo",
            "signing_public_key",
            "signing_address",
            "request_nonce",
            "nonce_generated",
            "report_data",
            "tee_type",
            "intel_quote",
            "event_log",
            "info",
            "key_custody",
            "relay_version",
        ],
        "properties": {
            "signing_algo": {"const": "ed25519"},
            "signing_public_key": {**HEX, "description": "The receipt key, 32 bytes."},
            "signing_address": {
                **HEX,
                "description": "The same key, as NEAR's clients name it (and its signatures).",
            },
            "request_nonce": {**HEX, "description": "Your nonce, or one made for you."},
            "nonce_generated": {"type": "boolean"},
            "report_data": {**HEX, "description": "signing_public_key ‖ request_nonce."},
            "tee_type": {"type": "string", "enum": ["tdx", "none"]},
            "intel_quote": {
                "type": ["string", "null"],
                "description": "The TDX quote (hex) over report_data; null if tee_type is none.",
            },
            "event_log": {"type": ["string", "null"]},
            "info": {"type": "object", "description": "dstack's app id, instance id, tcb info."},
            "key_custody": {"type": "object", "description": "How the signing key is held."},
            "relay_version": {"type": "string"},
        },
    },
    "Receipt": {
        "type": "object",
        "description": (
            "Ed25519 `signature` over the canonical JSON (sorted keys, no whitespace) of "
            "every other field; served byte for byte as signed."
        ),
        "required": [
            "version",
            "receipt_id",
            "client_key_id",
            "conversation_id",
            "model",
            "upstream",
            "endpoint",
            "status",
            "stream",
            "completed",
            "served_at",
            "request_sha256",
            "forwarded_sha256",
            "response_sha256",
            "prev_receipt_sha256",
            "signing_public_key",
            "signature",
        ],
        "properties": {
            "version": {"const": 1},
            "receipt_id": {"type": "string"},
            "client_key_id": {**SHA256, "description": "A hash of your API key's id."},
            "conversation_id": {"type": ["string", "null"]},
            "model": {"type": "string"},
            "upstream": {"type": "string"},
            "endpoint": {"type": "string"},
            "status": {"type": "string", "enum": ["complete", "cut", "cancelled", "failed"]},
            "stream": {"type": "boolean"},
            "completed": {"type": "boolean"},
            "served_at": {"type": "string", "format": "date-time"},
            "request_sha256": {**SHA256, "description": "The bytes relay received."},
            "forwarded_sha256": {**SHA256, "description": "The bytes sent to the provider."},
            "response_sha256": {**SHA256, "description": "The bytes you received."},
            "prev_receipt_sha256": {
                "anyOf": [SHA256, {"type": "null"}],
                "description": "sha256 of the previous receipt's canonical JSON.",
            },
            "signing_public_key": HEX,
            "signature": HEX,
        },
    },
    "NearSignature": {
        "type": "object",
        "required": ["text", "signature", "signing_algo", "signing_address"],
        "properties": {
            "text": {"type": "string", "description": "request_sha256:response_sha256"},
            "signature": HEX,
            "signing_algo": {"const": "ed25519"},
            "signing_address": {**HEX, "description": "The Ed25519 public key."},
        },
    },
}

PROOF_PATHS: dict[str, Any] = {
    "/v1/attestation/report": {
        "get": operation(
            "get_attestation_report",
            "A TEE quote binding relay's signing key to your nonce",
            tag="proofs",
            security=NONE,
            parameters=(
                {
                    "name": "nonce",
                    "in": "query",
                    "required": False,
                    "description": "64 hex characters; one is generated (and said so) if absent.",
                    "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
                },
            ),
            description="Never cached. Check it offline with `relay verify`.",
            responses={"200": answer("The report.", ref("schemas", "AttestationReport"))},
            errors=(400, 429, 503),
        )
    },
    "/v1/receipts/{receipt_id}": {
        "get": operation(
            "get_receipt",
            "The signed receipt of one of your answers",
            tag="proofs",
            security=JWT,
            parameters=(RECEIPT_ID,),
            responses={
                "200": answer("The receipt.", ref("schemas", "Receipt"), REQUEST_LIMIT_HEADERS)
            },
            errors=(*AUTHENTICATED, 404),
        )
    },
    "/v1/signature/{receipt_id}": {
        "get": operation(
            "get_signature",
            "The same proof in NEAR's signature shape",
            tag="proofs",
            security=JWT,
            parameters=(RECEIPT_ID, SIGNING_ALGO),
            responses={
                "200": answer(
                    "The signature.", ref("schemas", "NearSignature"), REQUEST_LIMIT_HEADERS
                )
            },
            errors=(*AUTHENTICATED, 400, 404, 409),
        )
    },
}
