"""`relay verify`: check a report and receipts offline, printing each check that holds."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

import orjson

from relay.json_pairs import repeats_a_field
from relay.proofs.custody import kms_root_address
from relay.proofs.nonce import parse_nonce
from relay.proofs.verify import VerificationError, iter_checks

EXIT_OK, EXIT_FAILED, EXIT_UNUSABLE = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--report",
        type=Path,
        action="append",
        required=True,
        help="attestation report (JSON, as served); when several keys signed the receipts "
        "(RELAY_ATTESTATION=none instances), repeat it, one report per instance",
    )
    parser.add_argument(
        "--receipt",
        type=Path,
        action="append",
        required=True,
        help="receipt file: a JSON object, a JSON list, one object per line, or a page "
        "of GET /admin/receipts; repeat in log order to check the chain",
    )
    parser.add_argument("--request-body", type=Path, help="the exact bytes you sent (last receipt)")
    parser.add_argument(
        "--response-body", type=Path, help="the exact bytes you received (last receipt)"
    )
    parser.add_argument("--nonce", help="the 64-hex nonce you asked the report for")
    parser.add_argument(
        "--require-tee",
        action="store_true",
        help="fail a report no TEE vouches for (tee_type none) instead of noting it",
    )
    parser.add_argument(
        "--kms-root",
        help="the dstack KMS root the key's signature chain must end at: its 0x address "
        "or public key hex, as your KMS publishes it (without it, the root is printed)",
    )


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """0 when every check holds, 1 on the first failed check, 2 on unusable input."""
    out = out or sys.stdout
    try:
        reports = [_json_object(path.read_bytes(), path, "report") for path in args.report]
        receipts = [receipt for path in args.receipt for receipt in load_receipts(path)]
        nonce = parse_nonce(args.nonce)
        request_body = args.request_body.read_bytes() if args.request_body else None
        response_body = args.response_body.read_bytes() if args.response_body else None
        if args.kms_root is not None:
            kms_root_address(args.kms_root)
    except (OSError, ValueError) as exc:
        print(f"FAIL {exc}", file=out)
        return EXIT_UNUSABLE
    try:
        checks = iter_checks(
            reports,
            receipts,
            request_body,
            response_body,
            nonce,
            require_tee=args.require_tee,
            kms_root=args.kms_root,
        )
        for check in checks:
            print(("ok  " if check.held else "note ") + check.text, file=out)
    except VerificationError as exc:
        print(f"FAIL {exc.message}", file=out)
        return EXIT_FAILED
    return EXIT_OK


def load_receipts(path: Path) -> list[dict[str, Any]]:
    """Receipts from a file holding one JSON object, a JSON list, JSON lines, or a page
    of the chain as `GET /admin/receipts` serves it."""
    data = path.read_bytes()
    try:
        whole = orjson.loads(data)
    except orjson.JSONDecodeError:
        return [_json_object(line, path, "receipt") for line in data.splitlines() if line.strip()]
    _refuse_repeated_fields(data, path)
    if isinstance(whole, dict) and whole.get("object") == "list":
        whole = whole.get("data")
        if not isinstance(whole, list):
            raise ValueError(f"{path}: a list page without a data list")
    items = whole if isinstance(whole, list) else [whole]
    return [_json_object(item, path, "receipt") for item in items]


def _json_object(value: Any, path: Path, what: str) -> dict[str, Any]:
    if isinstance(value, bytes):
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON ({exc})") from None
        _refuse_repeated_fields(value, path)
        value = parsed
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object")
    if set(value) == {"error"}:
        # What `curl -o` keeps of a 404 or a 429: the fetch failed, not a proof.
        raise ValueError(f"{path}: relay answered with an error, not a {what}: {_error(value)}")
    return value


def _refuse_repeated_fields(data: bytes, path: Path) -> None:
    """A receipt or report naming a field twice is refused: the signature may hold for
    the value read here (orjson keeps the last) while another reader keeps the first,
    and sees a receipt that says something else."""
    if repeats_a_field(data):
        raise ValueError(f"{path}: an object in it names the same field twice")


def _error(body: dict[str, Any]) -> str:
    error = body["error"]
    fields = error if isinstance(error, dict) else {"message": error}
    said = orjson.dumps(fields.get("message")).decode()
    if fields.get("code") is not None:
        said += f" (code {orjson.dumps(fields['code']).decode()})"
    return f"{said}; the fetch failed, no proof was checked"
