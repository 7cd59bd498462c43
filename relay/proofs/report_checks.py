"""The checks of an attestation report itself: report_data against the key and your
nonce, the TDX quote carrying that report_data, and dstack's custody of the key up to
its KMS root. (relay.proofs.verify checks the receipts against the reports.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from relay.proofs.checks import Check, Report, VerificationError, check_algo, strict_hex
from relay.proofs.custody import KmsRoot, kms_root_of
from relay.proofs.quote import describe_quote, quote_report_data


def verify_report_data(report: dict[str, Any], nonce: bytes | None = None) -> str:
    try:
        key = strict_hex(report.get("signing_public_key"), 32)
        reported_nonce = strict_hex(report.get("request_nonce"), 32)
        report_data = strict_hex(report.get("report_data"), 64)
    except ValueError as exc:
        raise VerificationError(f"report_data: report is malformed: {exc}") from None
    if report_data != key + reported_nonce:
        raise VerificationError("report_data: it is not signing key ‖ request_nonce")
    if nonce is not None and reported_nonce != nonce:
        raise VerificationError("report_data: the report answers another nonce than yours")
    fresh = "your nonce" if nonce is not None else "a nonce you did not choose: no freshness"
    return f"report_data  = signing key ‖ {fresh}"


def verify_quote_report_data(report: dict[str, Any]) -> str | None:
    """The quote's own report_data field; None for a report without a TEE (`none`)."""
    tee_type, quote_hex = report.get("tee_type"), report.get("intel_quote")
    if tee_type == "none":
        if quote_hex is not None:
            raise VerificationError("quote: tee_type is none but the report carries a quote")
        return None
    if tee_type != "tdx":
        raise VerificationError(f"quote: unknown tee_type {tee_type!r}")
    try:
        quote = strict_hex(quote_hex, None)
        quoted = quote_report_data(quote)
    except ValueError as exc:
        raise VerificationError(f"quote: intel_quote is malformed: {exc}") from None
    if quoted is None:
        # The quote is what binds the key to the TEE: one that cannot be read binds nothing.
        raise VerificationError(f"quote: not a TDX v4/v5 quote ({describe_quote(quote)})")
    if quoted.hex() != str(report.get("report_data")).lower():
        raise VerificationError("quote: the quote's report_data differs from the report's")
    return f"quote  TDX quote ({describe_quote(quote)}) carries this report_data"


def verify_key_custody(report: dict[str, Any]) -> str | None:
    """dstack's binding: GetKey's secp256k1 key signed the Ed25519 key. None if absent."""
    custody = report.get("key_custody") or {}
    binding = custody.get("binding") if isinstance(custody, dict) else None
    if not binding:
        return None
    if not isinstance(binding, dict):
        raise VerificationError("custody: the binding is malformed")
    expected = "relay-receipt-key:" + str(report.get("signing_public_key"))
    if binding.get("message") != expected:
        raise VerificationError("custody: the binding names another signing key")
    try:
        point = strict_hex(custody.get("derived_public_key"), None)
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), point)
        signature = strict_hex(binding.get("signature"), None)
        key.verify(signature, expected.encode(), ec.ECDSA(hashes.SHA256()))
    except (ValueError, TypeError, InvalidSignature):
        raise VerificationError("custody: the binding signature does not verify") from None
    return "custody  dstack-derived key signed the receipt key"


def recover_kms_root(report: dict[str, Any]) -> KmsRoot | None:
    """The KMS root that key_custody's signature chain ends at, for the report's app id;
    None without a dstack binding (tee_type none). Any well-formed chain ends at *some*
    root: compare it with your KMS's published one (verify_kms_root), and check the
    binding (verify_key_custody), which ties the chain's key to the receipt key."""
    custody = report.get("key_custody") or {}
    if not isinstance(custody, dict) or not custody.get("binding"):
        return None
    try:
        get_key = custody.get("get_key")
        purpose = get_key.get("purpose") if isinstance(get_key, dict) else None
        if not isinstance(purpose, str):
            raise ValueError("get_key names no purpose")
        chain = custody.get("signature_chain")
        if not isinstance(chain, list):
            raise ValueError("it is not a list")
        signatures = [strict_hex(signature, None) for signature in chain]
        derived = strict_hex(custody.get("derived_public_key"), None)
        return kms_root_of(derived, purpose, _app_id(report), signatures)
    except ValueError as exc:
        raise VerificationError(f"custody: the signature chain is malformed: {exc}") from None


def verify_kms_root(report: dict[str, Any], kms_root: str) -> str:
    """The chain ends at `kms_root`: a 0x address or a public key in hex, as dstack's KMS
    contract publishes it (kmsInfo)."""
    root = recover_kms_root(report)
    if root is None:
        raise VerificationError("custody: the report carries no dstack signature chain")
    try:
        named = root.is_named_by(kms_root)
    except ValueError as exc:
        raise VerificationError(f"custody: {exc}") from None
    if not named:
        raise VerificationError(
            f"custody: the signature chain ends at KMS root {root.address}, not {kms_root}"
        )
    app = _app_id_text(report)
    return f"custody  signature chain ends at your KMS root {root.address} (app {app})"


def report_checks(
    report: Report, nonce: bytes | None, require_tee: bool, kms_root: str | None
) -> Iterator[Check]:
    check_algo(report, "report's")  # for a report no receipt's key was matched to
    yield Check(True, verify_report_data(report, nonce))
    quoted = verify_quote_report_data(report)
    if quoted is None and require_tee:
        raise VerificationError("quote: tee_type none: no TEE vouches for this key")
    if quoted is None:
        yield Check(False, "quote  tee_type none: no TEE vouches for this key, only the host")
    else:
        yield Check(True, quoted)
        yield Check(False, "quote  Intel's signature over it is not checked offline (dcap-qvl)")
    custody = verify_key_custody(report)
    if custody:
        yield Check(True, custody)
    if kms_root is not None:
        yield Check(True, verify_kms_root(report, kms_root))
    elif (root := recover_kms_root(report)) is not None:
        yield Check(
            False,
            f"custody  signature chain ends at KMS root {root.address} ({root.public_key}), "
            "not checked against your KMS's published root: compare them, or pass --kms-root",
        )


def _app_id(report: dict[str, Any]) -> bytes:
    # dstack's Info gives the app id as plain hex; accept the 0x its contracts are written with.
    text = _app_id_text(report)
    if not text:
        raise ValueError("the report's info names no app id")
    try:
        return strict_hex(text.removeprefix("0x"), None)
    except ValueError:
        raise ValueError("info.app_id is not an app id in hex") from None


def _app_id_text(report: dict[str, Any]) -> str:
    info = report.get("info")
    app_id = info.get("app_id") if isinstance(info, dict) else None
    return app_id if isinstance(app_id, str) else ""
