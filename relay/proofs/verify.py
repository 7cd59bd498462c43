"""Offline verification of reports and receipts, importable by client code.

Each `verify_*` raises VerificationError on the first thing that does not hold
and otherwise returns a one-line description of what did. Checking the Intel
quote's own signature chain needs Intel's PCS collateral and is left to tools
such as dcap-qvl; here the quote is only checked to carry the right report_data.
dstack's key chain is recovered up to its KMS root, which only the caller can
compare with the root their KMS publishes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import pairwise
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from relay.proofs.checks import Check, Report, VerificationError, check_algo, strict_hex
from relay.proofs.nonce import parse_nonce
from relay.proofs.receipt import check_receipt_body, receipt_sha256, sha256_hex, signing_payload
from relay.proofs.report_checks import (
    recover_kms_root,
    report_checks,
    verify_key_custody,
    verify_kms_root,
    verify_quote_report_data,
    verify_report_data,
)

# The report's own checks live in relay.proofs.report_checks; client code finds every
# check here.
__all__ = [
    "Check",
    "VerificationError",
    "iter_checks",
    "recover_kms_root",
    "verify_all",
    "verify_body",
    "verify_chain",
    "verify_key_custody",
    "verify_kms_root",
    "verify_quote_report_data",
    "verify_receipt_key",
    "verify_receipt_signature",
    "verify_report_data",
]

BODY_FIELDS = ("request_sha256", "forwarded_sha256", "response_sha256")
# What mends a receipt signed by a key the report(s) do not name.
_ASK_THE_SIGNER = (
    "add the report of the instance that signed it (one report per instance: `relay verify` "
    "takes --report again, verify_all a list); with RELAY_ATTESTATION=none each instance has "
    "a key of its own unless the instances share one key file"
)

# One report, or one per instance whose key signed some of the receipts (a `none` fleet).
Reports = Report | Sequence[Report]


def verify_receipt_signature(receipt: dict[str, Any]) -> str:
    rid = _rid(receipt)
    try:
        check_receipt_body({k: v for k, v in receipt.items() if k != "signature"})
        # Lower-case only, as relay writes them: an upper-cased signature would verify
        # yet change the receipt's hash, which the next receipt's chain link is over.
        public_key = strict_hex(receipt["signing_public_key"], 32, lower=True)
        signature = strict_hex(receipt.get("signature"), 64, lower=True)
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, signing_payload(receipt))
    except (ValueError, TypeError) as exc:
        raise VerificationError(f"signature: receipt {rid} is malformed: {exc}") from None
    except InvalidSignature:
        raise VerificationError(f"signature: receipt {rid} does not verify under its key") from None
    return f"signature  receipt {rid} signed by {receipt['signing_public_key'][:16]}…"


def verify_receipt_key(receipt: dict[str, Any], report: Reports) -> str:
    """The receipt's key is the report's; given several reports, that of the one naming it."""
    reports, key = _reports(report), receipt.get("signing_public_key")
    if len(reports) == 1:
        check_algo(reports[0], "report's")
        if key != reports[0].get("signing_public_key"):
            raise VerificationError(
                f"key: receipt {_rid(receipt)} was signed by another key than the report's: "
                f"the receipt names {key}, the report {reports[0].get('signing_public_key')}; "
                + _ASK_THE_SIGNER
            )
        return f"key  receipt {_rid(receipt)} signed by the reported key"
    for index, one in enumerate(reports, 1):
        if key == one.get("signing_public_key"):
            check_algo(one, f"report {index}'s")
            return f"key  receipt {_rid(receipt)} signed by report {index}'s key {str(key)[:16]}…"
    raise VerificationError(
        f"key: receipt {_rid(receipt)} was signed by {key}, a key none of the "
        f"{len(reports)} reports names; " + _ASK_THE_SIGNER
    )


def verify_body(receipt: dict[str, Any], field: str, data: bytes) -> str:
    name = field if field.endswith("_sha256") else f"{field}_sha256"
    if name not in BODY_FIELDS:
        raise VerificationError(f"body: {field!r} is not one of {', '.join(BODY_FIELDS)}")
    label = name.removesuffix("_sha256")
    if sha256_hex(data) != receipt.get(name):
        raise VerificationError(f"{label} body: sha256 differs from receipt {_rid(receipt)}")
    return f"{label} body  sha256 matches receipt {_rid(receipt)} ({len(data)} bytes)"


def verify_chain(receipts: list[dict[str, Any]]) -> str:
    if not receipts:
        raise VerificationError("chain: no receipts")
    for before, after in pairwise(receipts):
        try:
            expected = receipt_sha256(before)
        except ValueError as exc:
            raise VerificationError(f"chain: receipt {_rid(before)} is malformed: {exc}") from None
        if after.get("prev_receipt_sha256") != expected:
            raise VerificationError(
                f"chain: receipt {_rid(after)} does not follow {_rid(before)} "
                "(a receipt between them is missing or one was altered)"
            )
    start = receipts[0].get("prev_receipt_sha256")
    origin = "the start of the log" if start is None else f"{str(start)[:16]}…"
    return f"chain  {len(receipts)} receipt(s) linked in order after {origin}"


def iter_checks(
    report: Reports,
    receipts: list[dict[str, Any]] | dict[str, Any],
    request_body: bytes | None = None,
    response_body: bytes | None = None,
    nonce: bytes | str | None = None,
    *,
    require_tee: bool = False,
    kms_root: str | None = None,
) -> Iterator[Check]:
    """Every check in order; bodies belong to the last receipt. Raises on the first failure
    (with `require_tee`, a report no TEE vouches for is one; with `kms_root`, a report whose
    key chain does not end at that root). Given a list of reports, one per instance, each
    receipt is checked against the report naming its key, and every report's checks are
    made (the nonce, `require_tee` and `kms_root` apply to each), tagged with its place."""
    receipts = [receipts] if isinstance(receipts, dict) else receipts
    if not receipts:
        raise VerificationError("chain: no receipts")
    if not isinstance(receipts, list | tuple) or not all(isinstance(r, dict) for r in receipts):
        raise VerificationError("receipt: give a receipt (a JSON object) or a list of them")
    nonce = _nonce_bytes(nonce)
    for name, body in (("request_body", request_body), ("response_body", response_body)):
        if body is not None and not isinstance(body, bytes | bytearray | memoryview):
            raise VerificationError(f"{name}: give the bytes as saved, not {type(body).__name__}")
    reports = _reports(report)
    for receipt in receipts:
        yield Check(True, verify_receipt_signature(receipt))
        yield Check(True, verify_receipt_key(receipt, reports))
    if len(reports) == 1:
        yield from report_checks(reports[0], nonce, require_tee, kms_root)
    else:
        signers = {receipt.get("signing_public_key") for receipt in receipts}
        for index, one in enumerate(reports, 1):
            yield from _tagged(
                index, one, signers, report_checks(one, nonce, require_tee, kms_root)
            )
    last = receipts[-1]
    if request_body is not None:
        yield Check(True, verify_body(last, "request", request_body))
    if response_body is not None:
        yield Check(True, verify_body(last, "response", response_body))
    yield Check(True, verify_chain(receipts))


def _tagged(
    index: int, report: Report, signers: set[Any], checks: Iterator[Check]
) -> Iterator[Check]:
    """One of several reports' checks, each line and failure naming the report."""
    key = report.get("signing_public_key")
    tag = f"report {index}, key {str(key)[:16]}…"
    # A key that is no string (a list, say) signed nothing, and is no set member either.
    if not isinstance(key, str) or key not in signers:
        yield Check(False, f"key  {tag} signed none of these receipts")
    try:
        for check in checks:
            yield Check(check.held, f"{check.text} ({tag})")
    except VerificationError as exc:
        raise VerificationError(f"{exc.message} ({tag})") from None


def verify_all(
    report: Reports,
    receipts: list[dict[str, Any]] | dict[str, Any],
    request_body: bytes | None = None,
    response_body: bytes | None = None,
    nonce: bytes | str | None = None,
    *,
    require_tee: bool = False,
    kms_root: str | None = None,
) -> list[str]:
    """The lines that held; raises VerificationError on the first failure. `report` is one
    report, or a list of them when several keys signed the receipts (see iter_checks). Without
    `require_tee` a report of `tee_type: none` passes: check the report's tee_type,
    or ask for a TEE, before trusting what runs. Without `kms_root` nothing ties the
    key to your KMS: compare recover_kms_root's answer with its published root."""
    checks = iter_checks(
        report,
        receipts,
        request_body,
        response_body,
        nonce,
        require_tee=require_tee,
        kms_root=kms_root,
    )
    return [check.text for check in checks if check.held]


def _nonce_bytes(nonce: bytes | str | None) -> bytes | None:
    """The caller's nonce as the report holds it: 32 bytes, given so or as the 64 hex
    characters it was asked with (as `relay verify --nonce` takes it)."""
    if nonce is None or (isinstance(nonce, bytes) and len(nonce) == 32):
        return nonce
    if isinstance(nonce, str):
        try:
            return parse_nonce(nonce)
        except ValueError as exc:
            raise VerificationError(f"nonce: {exc}") from None
    raise VerificationError("nonce: give the 32 bytes, or the 64 hex characters asked with")


def _reports(report: Reports) -> Sequence[Report]:
    reports = [report] if isinstance(report, dict) else report
    if not reports:
        raise VerificationError("report: no report given")
    if not isinstance(reports, list | tuple) or not all(isinstance(r, dict) for r in reports):
        raise VerificationError("report: give a report (a JSON object) or a list of them")
    return reports


def _rid(receipt: Any) -> str:
    return str(receipt.get("receipt_id", "?")) if isinstance(receipt, dict) else "?"
