"""Attestation reports in none mode, nonces, and report_data checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import relay
from relay.proofs.identity import SigningIdentity
from relay.proofs.keyfile import FileKeyProvider
from relay.proofs.nonce import parse_nonce
from relay.proofs.report import build_report
from relay.proofs.verify import VerificationError, verify_all, verify_report_data
from tests.test_proofs_receipt import make_chain

NONCE = bytes.fromhex("ab" * 32)

REPORT_FIELDS = {
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
}


def test_parse_nonce_takes_exactly_64_hex_characters() -> None:
    assert parse_nonce(None) is None
    assert parse_nonce("AB" * 32) == NONCE
    for bad in [
        "",
        "ab" * 31,
        "ab" * 33,
        "zz" * 32,
        "0x" + "ab" * 31,
        " " + "ab" * 31 + "a ",
        "ab " * 21 + "a",
    ]:
        with pytest.raises(ValueError, match="64 hex"):
            parse_nonce(bad)


async def test_a_none_mode_report_says_so_and_carries_no_quote(tmp_path: Path) -> None:
    identity = await FileKeyProvider(tmp_path).load()
    report = await build_report(identity, NONCE, None)
    assert set(report) == REPORT_FIELDS
    assert report["signing_algo"] == "ed25519"
    assert report["tee_type"] == "none"
    assert report["intel_quote"] is None
    assert report["event_log"] is None
    assert report["info"] == {}
    assert report["relay_version"] == relay.__version__
    assert report["report_data"] == identity.public_key_hex + NONCE.hex()
    assert report["nonce_generated"] is False
    assert verify_report_data(report, NONCE)


async def test_a_missing_nonce_is_generated_and_said_so(tmp_path: Path) -> None:
    identity = await FileKeyProvider(tmp_path).load()
    one = await build_report(identity, None, None)
    two = await build_report(identity, None, None)
    assert one["nonce_generated"] is True
    assert len(bytes.fromhex(one["request_nonce"])) == 32
    assert one["request_nonce"] != two["request_nonce"]
    assert "did not choose" in verify_report_data(one)


async def test_a_nonce_of_the_wrong_length_is_refused(tmp_path: Path) -> None:
    identity = await FileKeyProvider(tmp_path).load()
    with pytest.raises(ValueError, match="32 bytes"):
        await build_report(identity, b"short", None)


async def test_a_tdx_identity_without_its_agent_is_refused() -> None:
    identity = SigningIdentity.of(Ed25519PrivateKey.generate(), {}, "tdx")
    with pytest.raises(ValueError, match="agent"):
        await build_report(identity, NONCE, None)


async def test_tampered_report_data_fails(tmp_path: Path) -> None:
    identity = await FileKeyProvider(tmp_path).load()
    report = await build_report(identity, NONCE, None)
    flipped = report["report_data"][:-1] + ("0" if report["report_data"][-1] != "0" else "1")
    with pytest.raises(VerificationError, match="report_data"):
        verify_report_data({**report, "report_data": flipped})
    with pytest.raises(VerificationError, match="nonce"):
        verify_report_data(report, bytes(32))
    with pytest.raises(VerificationError, match="report_data"):
        verify_report_data({**report, "signing_public_key": "00" * 32})


async def test_a_none_report_that_carries_a_quote_fails(tmp_path: Path) -> None:
    identity = await FileKeyProvider(tmp_path).load()
    report = await build_report(identity, NONCE, None)
    receipts = make_chain(identity.private_key, 1)
    assert verify_all(report, receipts, nonce=NONCE)
    with pytest.raises(VerificationError, match="quote"):
        verify_all({**report, "intel_quote": "04" * 700}, receipts, nonce=NONCE)


async def test_receipts_from_another_key_fail_against_the_report(tmp_path: Path) -> None:
    identity = await FileKeyProvider(tmp_path / "a").load()
    other = await FileKeyProvider(tmp_path / "b").load()
    report = await build_report(identity, NONCE, None)
    with pytest.raises(VerificationError, match="another key"):
        verify_all(report, make_chain(other.private_key, 1))
