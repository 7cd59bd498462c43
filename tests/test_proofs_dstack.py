"""dstack mode against an in-process fake guest agent, through the real SDK."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from relay.proofs.agent import AttestationUnavailableError, DstackAgent
from relay.proofs.dstack_key import KEY_PATH, KEY_PURPOSE, DstackKeyProvider
from relay.proofs.quote import V4_REPORT_DATA_OFFSET, quote_report_data
from relay.proofs.report import build_report
from relay.proofs.verify import VerificationError, verify_all, verify_key_custody
from tests.fake_dstack import FakeDstackState, start_fake_dstack

NONCE = bytes(range(32))


async def test_the_key_is_the_same_on_every_restart(tmp_path: Path) -> None:
    async with start_fake_dstack(tmp_path) as (socket_path, _):
        async with DstackAgent(socket_path) as agent:
            first = await DstackKeyProvider(agent).load()
    # A new agent process with the same app seed: same key.
    async with start_fake_dstack(tmp_path) as (socket_path, state):
        async with DstackAgent(socket_path) as agent:
            second = await DstackKeyProvider(agent).load()
    assert second.public_key_hex == first.public_key_hex
    assert state.calls == [
        ("GetKey", {"path": KEY_PATH, "purpose": KEY_PURPOSE, "algorithm": "secp256k1"})
    ]


async def test_another_app_gets_another_key(tmp_path: Path) -> None:
    async with start_fake_dstack(tmp_path, FakeDstackState(seed=b"one")) as (path, _):
        async with DstackAgent(path) as agent:
            one = await DstackKeyProvider(agent).load()
    async with start_fake_dstack(tmp_path, FakeDstackState(seed=b"two")) as (path, _):
        async with DstackAgent(path) as agent:
            two = await DstackKeyProvider(agent).load()
    assert one.public_key_hex != two.public_key_hex


async def test_key_custody_keeps_the_signature_chain_and_binds_the_key(tmp_path: Path) -> None:
    async with start_fake_dstack(tmp_path) as (socket_path, _):
        async with DstackAgent(f"unix:{socket_path}") as agent:
            identity = await DstackKeyProvider(agent).load()
    custody = identity.key_custody
    assert identity.tee_type == "tdx"
    assert custody["provider"] == "dstack"
    assert custody["get_key"] == {
        "path": KEY_PATH,
        "purpose": KEY_PURPOSE,
        "algorithm": "secp256k1",
    }
    assert len(custody["signature_chain"]) == 2
    assert all(len(bytes.fromhex(sig)) == 65 for sig in custody["signature_chain"])
    report = {"signing_public_key": identity.public_key_hex, "key_custody": custody}
    assert verify_key_custody(report)
    with pytest.raises(VerificationError, match="custody"):
        verify_key_custody({**report, "signing_public_key": "00" * 32})
    # A report that is not what it should be fails as such, never as a crash.
    for binding in ("x", ["x"], 7):
        with pytest.raises(VerificationError, match="binding is malformed"):
            verify_key_custody({**report, "key_custody": {**custody, "binding": binding}})


async def test_the_report_binds_key_and_nonce_into_the_quote(tmp_path: Path) -> None:
    async with start_fake_dstack(tmp_path) as (socket_path, state):
        async with DstackAgent(socket_path) as agent:
            identity = await DstackKeyProvider(agent).load()
            report = await build_report(identity, NONCE, agent)
    expected = bytes.fromhex(identity.public_key_hex) + NONCE
    assert report["report_data"] == expected.hex()
    assert report["request_nonce"] == NONCE.hex()
    assert report["nonce_generated"] is False
    assert report["tee_type"] == "tdx"
    quote = bytes.fromhex(report["intel_quote"])
    assert quote[V4_REPORT_DATA_OFFSET : V4_REPORT_DATA_OFFSET + 64] == expected
    assert quote_report_data(quote) == expected
    assert ("GetQuote", {"report_data": expected.hex()}) in state.calls
    assert report["event_log"].startswith("[")
    info = report["info"]
    assert info["app_id"] == state.app_id
    assert info["instance_id"] == state.instance_id
    assert info["compose_hash"] == state.compose_hash
    assert info["tcb_info"]["compose_hash"] == state.compose_hash
    assert info["tcb_info"]["mrtd"]
    assert report["key_custody"] == identity.key_custody


async def test_a_dstack_report_verifies_offline(tmp_path: Path) -> None:
    from tests.test_proofs_receipt import make_chain

    async with start_fake_dstack(tmp_path) as (socket_path, _):
        async with DstackAgent(socket_path) as agent:
            identity = await DstackKeyProvider(agent).load()
            report = await build_report(identity, NONCE, agent)
    receipts = make_chain(identity.private_key, 2)
    lines = verify_all(report, receipts, nonce=NONCE, require_tee=True)  # a TDX quote vouches
    assert any(line.startswith("quote") for line in lines)
    assert any(line.startswith("custody") for line in lines)
    other_nonce = bytes(32)
    with pytest.raises(VerificationError, match="nonce"):
        verify_all(report, receipts, nonce=other_nonce)


@pytest.mark.parametrize("quote", ["00" * 48, "0300" + "00" * 2 + "81000000" + "00" * 700])
async def test_a_tdx_report_whose_quote_cannot_be_read_fails(tmp_path: Path, quote: str) -> None:
    from tests.test_proofs_receipt import make_chain

    async with start_fake_dstack(tmp_path) as (socket_path, _):
        async with DstackAgent(socket_path) as agent:
            identity = await DstackKeyProvider(agent).load()
            report = await build_report(identity, NONCE, agent)
    receipts = make_chain(identity.private_key, 1)
    with pytest.raises(VerificationError, match="not a TDX v4/v5 quote"):
        verify_all({**report, "intel_quote": quote}, receipts, nonce=NONCE)


async def test_a_quote_over_other_report_data_is_refused(tmp_path: Path) -> None:
    state = FakeDstackState(quote_report_data=b"\x01" * 64)
    async with start_fake_dstack(tmp_path, state) as (socket_path, _):
        async with DstackAgent(socket_path) as agent:
            identity = await DstackKeyProvider(agent).load()
            with pytest.raises(AttestationUnavailableError, match="different report_data"):
                await build_report(identity, NONCE, agent)


async def test_info_is_asked_once_per_agent(tmp_path: Path) -> None:
    async with start_fake_dstack(tmp_path) as (socket_path, state):
        async with DstackAgent(socket_path) as agent:
            identity = await DstackKeyProvider(agent).load()
            await build_report(identity, None, agent)
            await build_report(identity, None, agent)
    assert state.methods().count("Info") == 1
    assert state.methods().count("GetQuote") == 2


async def test_a_missing_socket_stops_start_up_at_once_naming_the_setting(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(AttestationUnavailableError, match="RELAY_DSTACK_ENDPOINT") as caught:
        DstackAgent(str(tmp_path / "absent.sock"))
    assert time.monotonic() - started < 1
    assert "absent.sock" in caught.value.message
    assert caught.value.status == 503


async def test_a_socket_nobody_listens_on_fails_quickly(tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(stale))
    listener.close()  # the file stays, nobody accepts
    started = time.monotonic()
    async with DstackAgent(str(stale)) as agent:
        with pytest.raises(AttestationUnavailableError, match="RELAY_DSTACK_ENDPOINT"):
            await DstackKeyProvider(agent).load()
    assert time.monotonic() - started < 2


async def test_an_agent_answering_errors_is_unavailable(tmp_path: Path) -> None:
    async with start_fake_dstack(tmp_path, FakeDstackState(fail_status=500)) as (path, _):
        async with DstackAgent(path) as agent:
            with pytest.raises(AttestationUnavailableError, match="500"):
                await DstackKeyProvider(agent).load()


async def test_an_agent_answering_nonsense_is_unavailable(tmp_path: Path) -> None:
    async with start_fake_dstack(tmp_path, FakeDstackState(malformed=True)) as (path, _):
        async with DstackAgent(path) as agent:
            with pytest.raises(AttestationUnavailableError, match="RELAY_DSTACK_ENDPOINT"):
                await DstackKeyProvider(agent).load()
