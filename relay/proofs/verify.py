"""Offline verification of reports and receipts, importable by client code.

Each `verify_*` raises VerificationError on the first thing that does not hold
and otherwise returns a one-line description of what did. Checking the Intel
quote's own signature chain needs Intel's PCS collateral and is left to tools
such as dcap-qvl; here the quote is only checked to carry the right report_data.
dstack's key chain is recovered up to its KMS root, which only the caller can
compare with the root their KMS publishes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from itertools import pairwise
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from relay.proofs.custody import KmsRoot, kms_root_of
from relay.proofs.quote import describe_quote, quote_report_data
from relay.proofs.receipt import check_receipt_body, receipt_sha256, sha256_hex, signing_payload

BODY_FIELDS = ("request_sha256", "forwarded_sha256", "response_sha256")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")
# What mends a receipt signed by a key the report(s) do not name.
_ASK_THE_SIGNER = (
    "add the report of the instance that signed it (one report per instance: `relay verify` "
    "takes --report again, verify_all a list); with RELAY_ATTESTATION=none each instance has "
    "a key of its own unless the instances share one key file"
)

Report = dict[str, Any]
# One report, or one per instance whose key signed some of the receipts (a `none` fleet).
Reports = Report | Sequence[Report]


class VerificationError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Check(NamedTuple):
    held: bool  # False: a note about something that could not be checked here
    text: str


def verify_receipt_signature(receipt: dict[str, Any]) -> str:
    rid = _rid(receipt)
    try:
        check_receipt_body({k: v for k, v in receipt.items() if k != "signature"})
        # Lower-case only, as relay writes them: an upper-cased signature would verify
        # yet change the receipt's hash, which the next receipt's chain link is over.
        public_key = _hex(receipt["signing_public_key"], 32, lower=True)
        signature = _hex(receipt.get("signature"), 64, lower=True)
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
        _check_algo(reports[0], "report's")
        if key != reports[0].get("signing_public_key"):
            raise VerificationError(
                f"key: receipt {_rid(receipt)} was signed by another key than the report's: "
                f"the receipt names {key}, the report {reports[0].get('signing_public_key')}; "
                + _ASK_THE_SIGNER
            )
        return f"key  receipt {_rid(receipt)} signed by the reported key"
    for index, one in enumerate(reports, 1):
        if key == one.get("signing_public_key"):
            _check_algo(one, f"report {index}'s")
            return f"key  receipt {_rid(receipt)} signed by report {index}'s key {str(key)[:16]}…"
    raise VerificationError(
        f"key: receipt {_rid(receipt)} was signed by {key}, a key none of the "
        f"{len(reports)} reports names; " + _ASK_THE_SIGNER
    )


def verify_report_data(report: dict[str, Any], nonce: bytes | None = None) -> str:
    try:
        key = _hex(report.get("signing_public_key"), 32)
        reported_nonce = _hex(report.get("request_nonce"), 32)
        report_data = _hex(report.get("report_data"), 64)
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
        quote = _hex(quote_hex, None)
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
        point = _hex(custody.get("derived_public_key"), None)
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), point)
        signature = _hex(binding.get("signature"), None)
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
        signatures = [_hex(signature, None) for signature in chain]
        derived = _hex(custody.get("derived_public_key"), None)
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
    receipts: list[dict[str, Any]],
    request_body: bytes | None = None,
    response_body: bytes | None = None,
    nonce: bytes | None = None,
    *,
    require_tee: bool = False,
    kms_root: str | None = None,
) -> Iterator[Check]:
    """Every check in order; bodies belong to the last receipt. Raises on the first failure
    (with `require_tee`, a report no TEE vouches for is one; with `kms_root`, a report whose
    key chain does not end at that root). Given a list of reports, one per instance, each
    receipt is checked against the report naming its key, and every report's checks are
    made (the nonce, `require_tee` and `kms_root` apply to each), tagged with its place."""
    if not receipts:
        raise VerificationError("chain: no receipts")
    reports = _reports(report)
    for receipt in receipts:
        yield Check(True, verify_receipt_signature(receipt))
        yield Check(True, verify_receipt_key(receipt, reports))
    if len(reports) == 1:
        yield from _report_checks(reports[0], nonce, require_tee, kms_root)
    else:
        signers = {receipt.get("signing_public_key") for receipt in receipts}
        for index, one in enumerate(reports, 1):
            yield from _tagged(
                index, one, signers, _report_checks(one, nonce, require_tee, kms_root)
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
    tag = f"report {index}, key {str(report.get('signing_public_key'))[:16]}…"
    if report.get("signing_public_key") not in signers:
        yield Check(False, f"key  {tag} signed none of these receipts")
    try:
        for check in checks:
            yield Check(check.held, f"{check.text} ({tag})")
    except VerificationError as exc:
        raise VerificationError(f"{exc.message} ({tag})") from None


def _report_checks(
    report: Report, nonce: bytes | None, require_tee: bool, kms_root: str | None
) -> Iterator[Check]:
    _check_algo(report, "report's")  # for a report no receipt's key was matched to
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


def verify_all(
    report: Reports,
    receipts: list[dict[str, Any]],
    request_body: bytes | None = None,
    response_body: bytes | None = None,
    nonce: bytes | None = None,
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


def _reports(report: Reports) -> Sequence[Report]:
    reports = [report] if isinstance(report, dict) else report
    if not reports:
        raise VerificationError("report: no report given")
    return reports


def _check_algo(report: Report, whose: str) -> None:
    if report.get("signing_algo") != "ed25519":
        raise VerificationError(f"key: {whose} signing_algo is {report.get('signing_algo')!r}")


def _hex(value: Any, size: int | None, *, lower: bool = False) -> bytes:
    # Strict: bytes.fromhex would also accept spaces inside the string.
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise ValueError("expected a hex string")
    if lower and value != value.lower():
        raise ValueError("expected lower-case hex")
    data = bytes.fromhex(value)
    if size is not None and len(data) != size:
        raise ValueError(f"expected {size} bytes, got {len(data)}")
    return data


def _app_id(report: dict[str, Any]) -> bytes:
    # dstack's Info gives the app id as plain hex; accept the 0x its contracts are written with.
    text = _app_id_text(report)
    if not text:
        raise ValueError("the report's info names no app id")
    try:
        return _hex(text.removeprefix("0x"), None)
    except ValueError:
        raise ValueError("info.app_id is not an app id in hex") from None


def _app_id_text(report: dict[str, Any]) -> str:
    info = report.get("info")
    app_id = info.get("app_id") if isinstance(info, dict) else None
    return app_id if isinstance(app_id, str) else ""


def _rid(receipt: Any) -> str:
    return str(receipt.get("receipt_id", "?")) if isinstance(receipt, dict) else "?"
