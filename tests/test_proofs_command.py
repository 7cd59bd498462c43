"""`relay verify` through run(args): what a client sees on good and tampered files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.proofs.command import add_arguments, run
from relay.proofs.keyfile import FileKeyProvider
from relay.proofs.report import build_report
from relay.proofs.verify import VerificationError, verify_all
from tests.test_proofs_receipt import REQUEST, RESPONSE, make_chain

NONCE_HEX = "cd" * 32


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="relay verify")
    add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture
async def files(tmp_path: Path) -> dict[str, Any]:
    identity = await FileKeyProvider(tmp_path / "state").load()
    report = await build_report(identity, bytes.fromhex(NONCE_HEX), None)
    receipts = make_chain(identity.private_key, 3)
    paths = {
        "report": tmp_path / "report.json",
        "receipt": tmp_path / "receipt.json",
        "chain": tmp_path / "chain.jsonl",
        "request": tmp_path / "request.bin",
        "response": tmp_path / "response.bin",
    }
    paths["report"].write_bytes(orjson.dumps(report))
    paths["receipt"].write_bytes(orjson.dumps(receipts[-1]))
    paths["chain"].write_bytes(b"\n".join(orjson.dumps(r) for r in receipts) + b"\n")
    paths["request"].write_bytes(REQUEST)
    paths["response"].write_bytes(RESPONSE)
    return {"paths": paths, "receipts": receipts, "tmp": tmp_path}


def good_args(paths: dict[str, Path], *extra: str) -> list[str]:
    return [
        "--report", str(paths["report"]),
        "--receipt", str(paths["chain"]),
        "--request-body", str(paths["request"]),
        "--response-body", str(paths["response"]),
        "--nonce", NONCE_HEX,
        *extra,
    ]  # fmt: skip


async def test_good_files_verify_and_each_check_is_printed(
    files: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(parse(*good_args(files["paths"]))) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out
    for check in ("signature", "key", "report_data", "request body", "response body", "chain"):
        assert f"ok  {check}" in out
    assert "note quote  tee_type none" in out


async def test_a_tampered_response_fails_with_a_non_zero_exit(
    files: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    response = files["paths"]["response"]
    data = bytearray(response.read_bytes())
    data[-3] ^= 0x20
    response.write_bytes(bytes(data))
    assert run(parse(*good_args(files["paths"]))) == 1
    out = capsys.readouterr().out
    assert "FAIL response body" in out
    assert "ok  signature" in out  # what held before the failure is still shown


async def test_a_tampered_receipt_fails(
    files: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    receipt = dict(files["receipts"][-1], completed=False)
    files["paths"]["receipt"].write_bytes(orjson.dumps(receipt))
    args = parse(
        "--report", str(files["paths"]["report"]), "--receipt", str(files["paths"]["receipt"])
    )
    assert run(args) == 1
    assert "FAIL signature" in capsys.readouterr().out


async def test_a_receipt_missing_from_the_chain_fails(
    files: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    first, _, last = files["receipts"]
    tmp: Path = files["tmp"]
    (tmp / "a.json").write_bytes(orjson.dumps(first))
    (tmp / "c.json").write_bytes(orjson.dumps(last))
    args = parse(
        "--report",
        str(files["paths"]["report"]),
        "--receipt",
        str(tmp / "a.json"),
        "--receipt",
        str(tmp / "c.json"),
    )
    assert run(args) == 1
    assert "FAIL chain" in capsys.readouterr().out


async def test_receipts_as_a_json_list_verify(files: dict[str, Any]) -> None:
    listed = files["tmp"] / "list.json"
    listed.write_bytes(orjson.dumps(files["receipts"]))
    args = parse("--report", str(files["paths"]["report"]), "--receipt", str(listed))
    assert run(args) == 0


async def test_a_wrong_nonce_fails(
    files: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(parse(*good_args(files["paths"])[:-2], "--nonce", "ee" * 32)) == 1
    assert "FAIL report_data" in capsys.readouterr().out


async def test_unusable_input_exits_2(
    files: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(parse(*good_args(files["paths"])[:-2], "--nonce", "xyz")) == 2
    missing = parse(
        "--report", str(files["tmp"] / "nope.json"), "--receipt", str(files["paths"]["receipt"])
    )
    assert run(missing) == 2
    files["paths"]["report"].write_text("not json")
    assert run(parse(*good_args(files["paths"]))) == 2
    assert capsys.readouterr().out.count("FAIL") == 3


async def test_one_report_prints_exactly_what_it_always_printed(
    files: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(parse(*good_args(files["paths"]))) == 0
    receipts = files["receipts"]
    key = receipts[0]["signing_public_key"][:16]
    last = receipts[-1]["receipt_id"]
    expected = [
        line
        for receipt in receipts
        for line in (
            f"ok  signature  receipt {receipt['receipt_id']} signed by {key}…",
            f"ok  key  receipt {receipt['receipt_id']} signed by the reported key",
        )
    ] + [
        "ok  report_data  = signing key ‖ your nonce",
        "note quote  tee_type none: no TEE vouches for this key, only the host",
        f"ok  request body  sha256 matches receipt {last} ({len(REQUEST)} bytes)",
        f"ok  response body  sha256 matches receipt {last} ({len(RESPONSE)} bytes)",
        "ok  chain  3 receipt(s) linked in order after the start of the log",
    ]
    assert capsys.readouterr().out.splitlines() == expected


def relay_error(message: str, code: str, type: str = "invalid_request_error") -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": None, "code": code}})


@pytest.mark.parametrize("saved_as", ["receipt", "chain"])
async def test_relays_error_answer_saved_as_the_receipt_is_unusable_input(
    files: dict[str, Any], capsys: pytest.CaptureFixture[str], saved_as: str
) -> None:
    # `curl -sS -o receipt.json` keeps a 404's body as the receipt.
    files["paths"][saved_as].write_bytes(relay_error("Receipt not found.", "not_found"))
    args = parse(
        "--report", str(files["paths"]["report"]), "--receipt", str(files["paths"][saved_as])
    )
    assert run(args) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"FAIL {files['paths'][saved_as]}: ")
    assert "Receipt not found." in out and "not_found" in out
    assert "the fetch failed" in out and "malformed" not in out


async def test_relays_error_answer_saved_as_the_report_is_unusable_input(
    files: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    limited = relay_error("Rate limit exceeded; retry later.", "rate_limit_exceeded", "requests")
    files["paths"]["report"].write_bytes(limited)
    assert run(parse(*good_args(files["paths"]))) == 2
    out = capsys.readouterr().out
    assert out.count("FAIL") == 1 and "signing_algo" not in out
    assert "Rate limit exceeded; retry later." in out and "rate_limit_exceeded" in out


async def test_an_error_answer_in_a_page_of_receipts_is_unusable_input(
    files: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    page = files["tmp"] / "page.jsonl"
    good = orjson.dumps(files["receipts"][0])
    page.write_bytes(good + b"\n" + relay_error("Invalid admin token.", "invalid_token") + b"\n")
    args = parse("--report", str(files["paths"]["report"]), "--receipt", str(page))
    assert run(args) == 2
    assert "invalid_token" in capsys.readouterr().out


async def test_a_receipt_with_an_added_error_field_is_a_failed_check_not_unusable(
    files: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    receipt = {**files["receipts"][-1], "error": {"message": "x", "code": "y"}}
    files["paths"]["receipt"].write_bytes(orjson.dumps(receipt))
    args = parse(
        "--report", str(files["paths"]["report"]), "--receipt", str(files["paths"]["receipt"])
    )
    assert run(args) == 1
    assert "FAIL signature" in capsys.readouterr().out


async def test_a_receipt_naming_a_field_twice_is_unusable(
    files: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # Signed as "complete"; a reader keeping the first of two values would read "failed".
    signed = files["paths"]["receipt"].read_bytes()
    doubled = files["tmp"] / "doubled.json"
    doubled.write_bytes(b'{"status":"failed","completed":false,' + signed[1:])
    args = parse("--report", str(files["paths"]["report"]), "--receipt", str(doubled))
    assert run(args) == 2
    assert "names the same field twice" in capsys.readouterr().out
    lines = files["tmp"] / "doubled.jsonl"
    lines.write_bytes(files["paths"]["chain"].read_bytes() + doubled.read_bytes() + b"\n")
    assert run(parse("--report", str(files["paths"]["report"]), "--receipt", str(lines))) == 2


async def test_the_functions_take_the_nonce_as_asked_and_refuse_what_is_no_proof(
    files: dict[str, Any],
) -> None:
    report = orjson.loads(files["paths"]["report"].read_bytes())
    receipts = files["receipts"]
    for nonce in (NONCE_HEX, bytes.fromhex(NONCE_HEX), NONCE_HEX.upper()):
        assert verify_all(report, receipts, REQUEST, RESPONSE, nonce)
    assert verify_all(report, receipts[-1])  # one receipt, not in a list
    with pytest.raises(VerificationError, match="another nonce"):
        verify_all(report, receipts, nonce="ee" * 32)
    with pytest.raises(VerificationError, match="nonce: "):
        verify_all(report, receipts, nonce="xyz")
    with pytest.raises(VerificationError, match="request_body: give the bytes"):
        verify_all(report, receipts, REQUEST.decode())
    # What is no receipt or report at all (client code passing the wrong thing) is
    # refused as such, not met with an AttributeError from inside the checks.
    for wrong in ([1], "receipt", [receipts[-1], None]):
        with pytest.raises(VerificationError, match="receipt: "):
            verify_all(report, wrong)
    for wrong in ([1], "report", [report, []]):
        with pytest.raises(VerificationError, match="report: "):
            verify_all(wrong, receipts)
