"""One receipt chain signed by several keys (`none` instances sharing one database),
checked against one report per instance: as a function and as `relay verify`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.proofs.command import add_arguments, run
from relay.proofs.identity import SigningIdentity
from relay.proofs.keyfile import FileKeyProvider
from relay.proofs.receipt import receipt_sha256, sign_receipt
from relay.proofs.report import build_report
from relay.proofs.verify import VerificationError, verify_all, verify_receipt_key
from tests.test_proofs_receipt import receipt_fields

NONCE_HEX = "ab" * 32


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="relay verify")
    add_arguments(parser)
    return parser.parse_args(argv)


def interleaved_chain(identities: list[SigningIdentity], count: int) -> list[dict[str, Any]]:
    """One log as instances sharing a database write it: each signs with its own key."""
    receipts: list[dict[str, Any]] = []
    for index in range(count):
        prev = receipt_sha256(receipts[-1]) if receipts else None
        key = identities[index % len(identities)].private_key
        receipts.append(sign_receipt(receipt_fields(prev), key))
    return receipts


@pytest.fixture
async def fleet(tmp_path: Path) -> dict[str, Any]:
    identities = [await FileKeyProvider(tmp_path / name).load() for name in "abc"]
    nonce = bytes.fromhex(NONCE_HEX)
    reports = [await build_report(identity, nonce, None) for identity in identities]
    receipts = interleaved_chain(identities, 7)
    paths = [tmp_path / f"report-{name}.json" for name in "abc"]
    for path, report in zip(paths, reports, strict=True):
        path.write_bytes(orjson.dumps(report))
    # The operator's pages of GET /admin/receipts, saved as served.
    pages = [tmp_path / "page-1.json", tmp_path / "page-2.json"]
    pages[0].write_bytes(orjson.dumps({"object": "list", "data": receipts[:4]}))
    pages[1].write_bytes(orjson.dumps({"object": "list", "data": receipts[4:]}))
    return {"reports": reports, "receipts": receipts, "report_paths": paths, "pages": pages}


def keys(fleet: dict[str, Any]) -> list[str]:
    return [report["signing_public_key"] for report in fleet["reports"]]


def test_a_chain_signed_by_three_keys_verifies_against_their_three_reports(
    fleet: dict[str, Any],
) -> None:
    lines = verify_all(fleet["reports"], fleet["receipts"], nonce=bytes.fromhex(NONCE_HEX))
    assert lines[-1].startswith("chain  7 receipt(s)")
    assert sum(line.startswith("report_data") for line in lines) == 3
    assert any("report 3" in line and line.startswith("key  receipt") for line in lines)


def test_each_receipt_is_matched_to_the_report_that_names_its_key(
    fleet: dict[str, Any],
) -> None:
    reversed_reports = fleet["reports"][::-1]
    second = fleet["receipts"][1]  # signed by b, the second report given reversed too
    line = verify_receipt_key(second, reversed_reports)
    assert "report 2" in line and keys(fleet)[1][:16] in line
    assert "report 1" in verify_receipt_key(fleet["receipts"][0], fleet["reports"])


def test_a_receipt_whose_key_no_report_names_fails_naming_that_key(
    fleet: dict[str, Any],
) -> None:
    with pytest.raises(VerificationError) as raised:
        verify_all(fleet["reports"][:2], fleet["receipts"])
    message = raised.value.message
    assert message.startswith("key: receipt ")
    assert keys(fleet)[2] in message
    assert "none of the 2 reports" in message


def test_one_report_for_a_chain_of_several_keys_names_both_keys(fleet: dict[str, Any]) -> None:
    with pytest.raises(VerificationError, match="another key") as raised:
        verify_all(fleet["reports"][0], fleet["receipts"])
    message = raised.value.message
    assert keys(fleet)[1] in message and keys(fleet)[0] in message
    assert "report of the instance that signed it" in message
    assert "key file" in message


def test_a_report_that_signed_none_of_the_receipts_is_noted_and_still_checked(
    fleet: dict[str, Any],
) -> None:
    only_a = fleet["receipts"][:1]
    lines = verify_all(fleet["reports"], only_a, nonce=bytes.fromhex(NONCE_HEX))
    assert sum(line.startswith("report_data") for line in lines) == 3
    bad = {**fleet["reports"][2], "request_nonce": "00" * 32}
    with pytest.raises(VerificationError, match=r"report_data: .*\(report 3, key "):
        verify_all([*fleet["reports"][:2], bad], only_a)


def test_an_empty_list_of_reports_fails() -> None:
    with pytest.raises(VerificationError, match="no report"):
        verify_all([], [sign_receipt(receipt_fields(), Ed25519PrivateKey.generate())])


def report_args(paths: list[Path]) -> list[str]:
    return [arg for path in paths for arg in ("--report", str(path))]


def page_args(paths: list[Path]) -> list[str]:
    return [arg for path in paths for arg in ("--receipt", str(path))]


def test_relay_verify_takes_report_once_per_instance(
    fleet: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*report_args(fleet["report_paths"]), *page_args(fleet["pages"])]
    assert run(parse(*argv, "--nonce", NONCE_HEX)) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out
    assert out.count("ok  key  receipt") == 7
    for index, key in enumerate(keys(fleet), 1):
        assert (
            f"ok  report_data  = signing key ‖ your nonce (report {index}, key {key[:16]}…)" in out
        )
    assert out.splitlines()[-1].startswith("ok  chain  7 receipt(s)")


def test_relay_verify_without_the_report_of_one_signer_fails_naming_its_key(
    fleet: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*report_args(fleet["report_paths"][:2]), *page_args(fleet["pages"])]
    assert run(parse(*argv)) == 1
    fail = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]
    assert len(fail) == 1 and keys(fleet)[2] in fail[0]


@pytest.mark.parametrize("key", [["ab" * 32], {"key": "ab" * 32}], ids=["list", "object"])
def test_a_report_whose_key_is_no_string_fails_as_malformed_never_a_crash(
    fleet: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], key: Any
) -> None:
    hostile = {**fleet["reports"][2], "signing_public_key": key}
    with pytest.raises(VerificationError, match=r"report_data: report is malformed.*report 3"):
        verify_all([*fleet["reports"][:2], hostile], fleet["receipts"][:2])
    path = tmp_path / "hostile.json"
    path.write_bytes(orjson.dumps(hostile))
    receipts = tmp_path / "receipts.json"
    receipts.write_bytes(orjson.dumps(fleet["receipts"][:2]))  # signed by reports 1 and 2
    argv = [*report_args([*fleet["report_paths"][:2], path]), *page_args([receipts])]
    assert run(parse(*argv)) == 1
    assert "FAIL report_data: report is malformed" in capsys.readouterr().out
