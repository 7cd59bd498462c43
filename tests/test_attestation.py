"""Attestation reports and the signing key, in none mode and in dstack mode against a fake agent."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys

import pytest

from relay.app import create_app
from relay.config import Secret
from relay.proofs.agent import AttestationUnavailableError
from relay.proofs.quote import quote_report_data
from relay.proofs.verify import verify_all
from tests.api_calls import assert_error, bearer, client_with_token
from tests.fake_dstack import start_fake_dstack
from tests.receipt_calls import NONCE, ask, fetch_receipt, fetch_report, relay_verify
from tests.relay_process import RelayProcess


async def test_a_none_report_binds_key_and_nonce_and_carries_no_quote(http):
    report = await fetch_report(http)
    assert report["tee_type"] == "none"
    assert report["intel_quote"] is None and report["event_log"] is None
    assert report["signing_algo"] == "ed25519"
    assert report["request_nonce"] == NONCE and report["nonce_generated"] is False
    assert report["report_data"] == report["signing_public_key"] + NONCE
    assert set(report) >= {"info", "key_custody", "relay_version"}


async def test_a_missing_nonce_is_generated_and_said_so(http):
    one = await fetch_report(http, nonce=None)
    two = await fetch_report(http, nonce=None)
    assert one["nonce_generated"] is True
    assert len(bytes.fromhex(one["request_nonce"])) == 32
    assert one["request_nonce"] != two["request_nonce"]
    assert one["report_data"] == one["signing_public_key"] + one["request_nonce"]


@pytest.mark.parametrize("nonce", ["", "ab" * 31, "ab" * 33, "zz" * 32, "0x" + "ab" * 31])
async def test_a_bad_nonce_is_400(http, nonce):
    response = await http.get("/v1/attestation/report", params={"nonce": nonce})
    error = await assert_error(response, 400)
    assert error["param"] == "nonce"


async def test_health_says_which_tee_signs(http):
    health = await (await http.get("/health")).json()
    assert health["attestation"] == {"tee_type": "none", "receipts": True}


async def test_production_without_a_tee_warns_at_start_up_and_in_health(
    make_client, make_settings, caplog
):
    settings = make_settings(
        env="production", identity_hash_key=Secret("i" * 32), jwt_secret=Secret("j" * 32)
    )
    with caplog.at_level(logging.WARNING):
        http = await make_client(settings)
    assert any("RELAY_ATTESTATION=none" in record.getMessage() for record in caplog.records)
    health = await (await http.get("/health")).json()
    assert health["attestation"]["tee_type"] == "none"
    assert "no TEE" in health["attestation"]["warning"]


async def test_the_none_key_is_the_same_across_restarts(make_client, settings):
    first = await fetch_report(await make_client(settings))
    second = await fetch_report(await make_client(settings))
    assert first["signing_public_key"] == second["signing_public_key"]


@pytest.fixture
async def dstack(tmp_path):
    async with start_fake_dstack(tmp_path) as (socket_path, state):
        yield socket_path, state


@pytest.fixture
def dstack_settings(make_settings, dstack):
    socket_path, _ = dstack
    return make_settings(attestation="dstack", dstack_endpoint=socket_path)


async def test_a_dstack_report_carries_a_quote_over_key_and_nonce(make_client, dstack_settings):
    http = await make_client(dstack_settings)
    report = await fetch_report(http)
    assert report["tee_type"] == "tdx"
    expected = report["signing_public_key"] + NONCE
    assert report["report_data"] == expected
    assert quote_report_data(bytes.fromhex(report["intel_quote"])) == bytes.fromhex(expected)
    assert report["info"]["app_id"] and report["key_custody"]["provider"] == "dstack"
    health = await (await http.get("/health")).json()
    assert health["attestation"] == {"tee_type": "tdx", "receipts": True}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_dstack_receipts_verify_end_to_end(make_client, dstack_settings, tmp_path, stream):
    http = await make_client(dstack_settings)
    _, token = await client_with_token(http)
    saved = await ask(http, token, stream=stream)
    receipt = await fetch_receipt(http, token, saved.receipt_id)
    report = await fetch_report(http)
    lines = verify_all(
        report, [receipt], saved.request_body, saved.response_body, bytes.fromhex(NONCE)
    )
    assert any(line.startswith("quote") for line in lines)
    assert any(line.startswith("custody") for line in lines)
    assert relay_verify(tmp_path / "proof", report, [receipt], saved) == 0


async def test_the_dstack_key_is_the_same_across_restarts(make_client, dstack_settings):
    first = await fetch_report(await make_client(dstack_settings))
    # A fresh state dir: the key comes from the agent, not from the disk.
    other = dstack_settings.replace(state_dir=dstack_settings.state_dir + "-fresh")
    second = await fetch_report(await make_client(other))
    assert first["signing_public_key"] == second["signing_public_key"]


async def test_a_dstack_agent_failing_later_makes_the_report_503(
    make_client, dstack_settings, dstack
):
    http = await make_client(dstack_settings)
    _, state = dstack
    state.fail_status = 500
    response = await http.get("/v1/attestation/report")
    error = await assert_error(response, 503, "attestation_unavailable")
    # The cause, naming the agent's socket, is the operator's, not a caller's.
    assert dstack_settings.dstack_endpoint not in error["message"]
    assert "RELAY_DSTACK_ENDPOINT" not in error["message"]


async def test_an_unreachable_agent_stops_start_up_naming_the_setting(
    make_client, make_settings, tmp_path
):
    settings = make_settings(attestation="dstack", dstack_endpoint=str(tmp_path / "absent.sock"))
    with pytest.raises(AttestationUnavailableError, match="RELAY_DSTACK_ENDPOINT"):
        await make_client(settings, create_app(settings))


async def test_relay_serve_with_an_unreachable_agent_exits_with_the_message(
    database_url, redis_url, tmp_path
):
    relay = RelayProcess(
        database_url,
        redis_url,
        tmp_path,
        {"RELAY_ATTESTATION": "dstack", "RELAY_DSTACK_ENDPOINT": str(tmp_path / "absent.sock")},
    )
    relay.start()
    try:
        code = await relay.wait(timeout=60)
    finally:
        relay.kill()
    assert code != 0
    logs = relay.logs()
    assert "relay serve:" in logs and "RELAY_DSTACK_ENDPOINT" in logs
    assert "Traceback" not in logs


def test_relay_serve_refuses_an_unknown_attestation_mode(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "relay", "serve"],
        env={"PATH": "/usr/bin:/bin", "RELAY_ATTESTATION": "sgx-maybe"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "RELAY_ATTESTATION" in result.stderr


async def test_reports_are_not_shared_between_concurrent_callers(http):
    reports = await asyncio.gather(*(fetch_report(http, nonce=None) for _ in range(4)))
    assert len({report["request_nonce"] for report in reports}) == 4


async def test_another_keys_receipt_is_a_409_no_sdk_asks_again(make_client, settings):
    # Two `none` instances, each its own key: asking B again never makes B's key A's.
    one = await make_client(settings)
    other = await make_client(settings.replace(state_dir=settings.state_dir + "-b"))
    _, token = await client_with_token(one)
    saved = await ask(one, token, stream=False)
    response = await other.get(f"/v1/signature/{saved.receipt_id}", headers=bearer(token))
    await assert_error(response, 409, "receipt_signed_by_another_key")
    assert response.headers["x-should-retry"] == "false"
