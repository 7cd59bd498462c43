"""dstack's signature chain behind the receipt key: recovered up to the KMS root, offline."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import orjson
import pytest
from eth_keys import keys
from eth_keys.constants import SECPK1_N

from relay.proofs.agent import DstackAgent
from relay.proofs.command import add_arguments, run
from relay.proofs.dstack_key import DstackKeyProvider
from relay.proofs.keyfile import FileKeyProvider
from relay.proofs.report import build_report
from relay.proofs.verify import (
    VerificationError,
    recover_kms_root,
    verify_all,
    verify_kms_root,
)
from tests.fake_dstack import FakeDstackState, fake_kms_root, start_fake_dstack
from tests.test_proofs_receipt import make_chain

NONCE = bytes(range(32))
OTHER_ROOT = keys.PrivateKey(b"\x07" * 32).public_key


@pytest.fixture
async def dstack(tmp_path: Path) -> dict[str, Any]:
    """A report and receipts from relay's dstack mode against the fake agent."""
    state = FakeDstackState()
    async with start_fake_dstack(tmp_path, state) as (socket_path, _):
        async with DstackAgent(socket_path) as agent:
            identity = await DstackKeyProvider(agent).load()
            report = await build_report(identity, NONCE, agent)
    receipts = make_chain(identity.private_key, 2)
    return {"report": report, "receipts": receipts, "root": fake_kms_root(state)}


def flipped(hex_text: str, index: int) -> str:
    data = bytearray(bytes.fromhex(hex_text))
    data[index] ^= 0x01
    return data.hex()


def with_custody(report: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**report, "key_custody": {**report["key_custody"], **changes}}


async def test_the_chain_ends_at_the_kms_root_that_issued_the_app_key(
    dstack: dict[str, Any],
) -> None:
    root: keys.PublicKey = dstack["root"]
    recovered = recover_kms_root(dstack["report"])
    assert recovered is not None
    assert recovered.public_key == root.to_compressed_bytes().hex()
    assert recovered.address == root.to_checksum_address()


@pytest.mark.parametrize("form", ["address", "lower address", "compressed", "uncompressed"])
async def test_the_right_kms_root_holds_in_each_form_it_is_published_in(
    dstack: dict[str, Any], form: str
) -> None:
    root: keys.PublicKey = dstack["root"]
    name = {
        "address": root.to_checksum_address(),
        "lower address": root.to_address(),
        "compressed": root.to_compressed_bytes().hex(),
        "uncompressed": "04" + root.to_bytes().hex(),
    }[form]
    line = verify_kms_root(dstack["report"], name)
    assert line.startswith("custody") and root.to_checksum_address() in line
    lines = verify_all(dstack["report"], dstack["receipts"], nonce=NONCE, kms_root=name)
    assert line in lines


async def test_another_kms_root_fails(dstack: dict[str, Any]) -> None:
    for name in (OTHER_ROOT.to_checksum_address(), OTHER_ROOT.to_compressed_bytes().hex()):
        with pytest.raises(VerificationError, match=r"custody: .* ends at KMS root"):
            verify_kms_root(dstack["report"], name)
        with pytest.raises(VerificationError, match="custody"):
            verify_all(dstack["report"], dstack["receipts"], kms_root=name)


@pytest.mark.parametrize("link", [0, 1])
@pytest.mark.parametrize("index", [0, 31, 32, 63, 64])  # r, s and the recovery id
async def test_a_flipped_byte_in_either_chain_signature_fails(
    dstack: dict[str, Any], link: int, index: int
) -> None:
    chain = list(dstack["report"]["key_custody"]["signature_chain"])
    chain[link] = flipped(chain[link], index)
    report = with_custody(dstack["report"], signature_chain=chain)
    with pytest.raises(VerificationError, match="custody"):
        verify_kms_root(report, dstack["root"].to_checksum_address())


@pytest.mark.parametrize("index", [1, 16, 32])
async def test_a_flipped_byte_in_the_derived_key_fails(dstack: dict[str, Any], index: int) -> None:
    custody = dstack["report"]["key_custody"]
    report = with_custody(
        dstack["report"], derived_public_key=flipped(custody["derived_public_key"], index)
    )
    with pytest.raises(VerificationError, match="custody"):
        verify_kms_root(report, dstack["root"].to_checksum_address())


@pytest.mark.parametrize("index", [0, 19])
async def test_a_flipped_byte_in_the_app_id_fails(dstack: dict[str, Any], index: int) -> None:
    info = dstack["report"]["info"]
    report = {**dstack["report"], "info": {**info, "app_id": flipped(info["app_id"], index)}}
    with pytest.raises(VerificationError, match=r"custody: .* ends at KMS root"):
        verify_kms_root(report, dstack["root"].to_checksum_address())


async def test_another_purpose_fails(dstack: dict[str, Any]) -> None:
    custody = dstack["report"]["key_custody"]
    get_key = {**custody["get_key"], "purpose": "other"}
    with pytest.raises(VerificationError, match="custody"):
        verify_kms_root(
            with_custody(dstack["report"], get_key=get_key), dstack["root"].to_address()
        )


async def test_a_high_s_twin_of_a_signature_is_refused(dstack: dict[str, Any]) -> None:
    # (r, n - s) with the other recovery id recovers the same key; dstack's k256 never
    # emits it, so accepting it would let two encodings stand for one signature.
    chain = list(dstack["report"]["key_custody"]["signature_chain"])
    signature = bytes.fromhex(chain[1])
    s = int.from_bytes(signature[32:64], "big")
    chain[1] = (
        signature[:32] + (SECPK1_N - s).to_bytes(32, "big") + bytes([signature[64] ^ 1])
    ).hex()
    report = with_custody(dstack["report"], signature_chain=chain)
    with pytest.raises(VerificationError, match="high s"):
        recover_kms_root(report)


def _chain(report: dict[str, Any]) -> list[str]:
    return list(report["key_custody"]["signature_chain"])


@pytest.mark.parametrize(
    "change",
    [
        {"signature_chain": None},
        {"signature_chain": "ab" * 65},
        {"signature_chain": []},
        {"signature_chain": ["ab" * 65]},
        {"signature_chain": ["ab" * 65] * 3},
        {"signature_chain": ["zz" * 65, "ab" * 65]},
        {"signature_chain": [7, "ab" * 65]},
        {"signature_chain": ["ab" * 64, "ab" * 65]},
        {"get_key": None},
        {"get_key": "signing"},
        {"binding": {"scheme": "x"}, "get_key": {}},
        {"get_key": {"purpose": 7}},
        {"derived_public_key": "02" + "ff" * 32},
        {"derived_public_key": None},
    ],
)
async def test_a_malformed_chain_fails_as_such_never_as_a_crash(
    dstack: dict[str, Any], change: dict[str, Any]
) -> None:
    with pytest.raises(VerificationError, match="custody: "):
        recover_kms_root(with_custody(dstack["report"], **change))


@pytest.mark.parametrize("recovery_id", [2, 27, 28, 255])
async def test_a_recovery_id_dstack_never_writes_fails(
    dstack: dict[str, Any], recovery_id: int
) -> None:
    chain = _chain(dstack["report"])
    chain[0] = chain[0][:-2] + bytes([recovery_id]).hex()
    with pytest.raises(VerificationError, match="recovery id"):
        recover_kms_root(with_custody(dstack["report"], signature_chain=chain))


@pytest.mark.parametrize("app_id", [None, 7, "", "ab" * 32, "xy" * 20, "no info"])
async def test_a_missing_or_malformed_app_id_fails(dstack: dict[str, Any], app_id: Any) -> None:
    info = None if app_id == "no info" else {**dstack["report"]["info"], "app_id": app_id}
    with pytest.raises(VerificationError, match=r"custody: .*app id"):
        recover_kms_root({**dstack["report"], "info": info})


async def test_an_app_id_written_with_0x_is_the_same_app(dstack: dict[str, Any]) -> None:
    info = dstack["report"]["info"]
    report = {**dstack["report"], "info": {**info, "app_id": "0x" + info["app_id"]}}
    assert recover_kms_root(report) == recover_kms_root(dstack["report"])


async def test_a_none_report_has_no_chain_and_cannot_meet_a_kms_root(tmp_path: Path) -> None:
    identity = await FileKeyProvider(tmp_path / "state").load()
    report = await build_report(identity, NONCE, None)
    assert recover_kms_root(report) is None
    with pytest.raises(VerificationError, match="no dstack signature chain"):
        verify_kms_root(report, OTHER_ROOT.to_checksum_address())


# relay verify, as a user runs it


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="relay verify")
    add_arguments(parser)
    return parser.parse_args(argv)


def write_files(tmp_path: Path, report: dict[str, Any], receipts: list[Any]) -> list[str]:
    (tmp_path / "report.json").write_bytes(orjson.dumps(report))
    (tmp_path / "chain.json").write_bytes(orjson.dumps(receipts))
    return [
        "--report", str(tmp_path / "report.json"),
        "--receipt", str(tmp_path / "chain.json"),
        "--nonce", NONCE.hex(),
    ]  # fmt: skip


async def test_verify_without_a_kms_root_names_the_root_to_compare(
    dstack: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(parse(*write_files(tmp_path, dstack["report"], dstack["receipts"]))) == 0
    out = capsys.readouterr().out
    root: keys.PublicKey = dstack["root"]
    notes = [line for line in out.splitlines() if line.startswith("note custody")]
    assert len(notes) == 1, out
    assert root.to_checksum_address() in notes[0]
    assert root.to_compressed_bytes().hex() in notes[0]
    assert "--kms-root" in notes[0]
    assert "not checked against the KMS root here" not in out


async def test_verify_with_the_right_kms_root_passes(
    dstack: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = write_files(tmp_path, dstack["report"], dstack["receipts"])
    assert run(parse(*args, "--kms-root", dstack["root"].to_checksum_address())) == 0
    out = capsys.readouterr().out
    address = dstack["root"].to_checksum_address()
    assert f"ok  custody  signature chain ends at your KMS root {address}" in out
    assert "note custody" not in out


async def test_verify_with_another_kms_root_fails(
    dstack: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = write_files(tmp_path, dstack["report"], dstack["receipts"])
    assert run(parse(*args, "--kms-root", OTHER_ROOT.to_compressed_bytes().hex())) == 1
    out = capsys.readouterr().out
    assert "FAIL custody: the signature chain ends at KMS root" in out
    assert "Traceback" not in out


async def test_verify_with_a_tampered_chain_fails(
    dstack: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chain = _chain(dstack["report"])
    chain[1] = flipped(chain[1], 40)
    report = with_custody(dstack["report"], signature_chain=chain)
    args = write_files(tmp_path, report, dstack["receipts"])
    assert run(parse(*args, "--kms-root", dstack["root"].to_checksum_address())) == 1
    assert "FAIL custody" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name", ["kms", "0x1234", "0x" + "ab" * 21, "05" + "ab" * 32, "02" + "ff" * 32]
)
async def test_a_kms_root_that_names_no_key_is_unusable_input(
    dstack: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    args = write_files(tmp_path, dstack["report"], dstack["receipts"])
    assert run(parse(*args, "--kms-root", name)) == 2
    assert "FAIL KMS root" in capsys.readouterr().out


async def test_an_address_with_a_broken_checksum_is_unusable_input(
    dstack: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = dstack["root"].to_checksum_address()
    # Swap the case of one letter: EIP-55 mixed case exists to catch such a typo.
    index = next(i for i, c in enumerate(address) if i > 1 and c.isalpha())
    broken = address[:index] + address[index].swapcase() + address[index + 1 :]
    args = write_files(tmp_path, dstack["report"], dstack["receipts"])
    assert run(parse(*args, "--kms-root", broken)) == 2
    assert "checksum" in capsys.readouterr().out


async def test_verify_of_a_none_report_with_a_kms_root_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    identity = await FileKeyProvider(tmp_path / "state").load()
    report = await build_report(identity, NONCE, None)
    args = write_files(tmp_path, report, make_chain(identity.private_key, 1))
    assert run(parse(*args)) == 0
    assert "custody" not in capsys.readouterr().out  # none mode: no chain, as before
    assert run(parse(*args, "--kms-root", OTHER_ROOT.to_checksum_address())) == 1
    assert "FAIL custody: the report carries no dstack signature chain" in capsys.readouterr().out
