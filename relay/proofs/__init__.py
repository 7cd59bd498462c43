"""Proofs: the receipt signing key, attestation reports, signed receipts, offline checks.

    canonical   canonical_json: the byte form signatures and hashes cover
    receipt     sign_receipt, receipt_sha256, the receipt schema
    identity    SigningIdentity, KeyProvider
    keyfile     FileKeyProvider (RELAY_ATTESTATION=none)
    agent       DstackAgent (the dstack guest agent; AttestationUnavailableError is in relay.errors)
    dstack_key  DstackKeyProvider (RELAY_ATTESTATION=dstack)
    quote       where a TDX quote keeps report_data
    nonce       parse_nonce (a caller's 32 bytes, as 64 hex characters)
    report      build_report
    near        NEAR's signature shape
    verify      verify_* and verify_all, VerificationError
    command     `relay verify`

Submodules are imported directly; this package imports nothing, so client code
using only `relay.proofs.verify` does not pull in the dstack SDK.
"""
