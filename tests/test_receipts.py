"""Receipts in none mode: every answer gets one, its client alone reads it, and it verifies."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from relay.cli import main as relay_cli
from relay.proofs.near import verify_near_signature
from relay.proofs.receipt import RECEIPT_FIELDS, hash_client_key_id, receipt_sha256
from relay.proofs.verify import VerificationError, verify_all, verify_chain
from relay.stores.database import connect
from tests.api_calls import ADMIN, assert_error, bearer, client_with_token
from tests.receipt_calls import (
    MESSAGES,
    NONCE,
    ask,
    fetch_receipt,
    fetch_receipt_when_committed,
    fetch_report,
    relay_verify,
)


@pytest.fixture
async def caller(http):
    client, token = await client_with_token(http)
    return client, token


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_an_answer_verifies_end_to_end_with_the_clients_own_bytes(
    http, caller, tmp_path, stream
):
    client, token = caller
    saved = await ask(http, token, stream=stream)
    assert saved.status == 200
    if stream:
        assert saved.response_body.endswith(b"data: [DONE]\n\n")
    receipt = await fetch_receipt(http, token, saved.receipt_id)
    report = await fetch_report(http)

    assert set(receipt) == set(RECEIPT_FIELDS)
    assert receipt["receipt_id"] == saved.receipt_id
    assert receipt["client_key_id"] == hash_client_key_id(client["key_id"])
    assert receipt["status"] == "complete" and receipt["completed"] is True
    assert receipt["stream"] is stream
    assert receipt["model"] == "gpt-sim" and receipt["upstream"] == "simulator"
    assert receipt["endpoint"] == "/v1/chat/completions"
    assert receipt["request_sha256"] == hashlib.sha256(saved.request_body).hexdigest()
    assert receipt["response_sha256"] == hashlib.sha256(saved.response_body).hexdigest()
    # gpt-sim is renamed for the provider: what was forwarded differs from what came in.
    assert receipt["forwarded_sha256"] != receipt["request_sha256"]

    lines = verify_all(
        report, [receipt], saved.request_body, saved.response_body, bytes.fromhex(NONCE)
    )
    assert any(line.startswith("response body") for line in lines)
    assert relay_verify(tmp_path / "ok", report, [receipt], saved) == 0
    # This relay runs without a TEE (tee_type none): whoever requires one is refused.
    with pytest.raises(VerificationError, match="no TEE"):
        verify_all(report, [receipt], require_tee=True)
    assert relay_verify(tmp_path / "tee", report, [receipt], saved, require_tee=True) == 1


async def test_a_body_sent_on_as_received_has_one_hash_for_both(http, caller, simulator):
    # sim-large is the provider's own id: relay forwards the client's very bytes.
    _, token = caller
    saved = await ask(http, token, stream=False, model="sim-large")
    receipt = await fetch_receipt(http, token, saved.receipt_id)
    assert simulator.state.requests[-1].body == saved.request_body
    sent = hashlib.sha256(saved.request_body).hexdigest()
    assert receipt["request_sha256"] == receipt["forwarded_sha256"] == sent


async def test_the_receipt_is_served_byte_for_byte_as_stored(http, caller, database_url):
    _, token = caller
    saved = await ask(http, token, stream=False)
    response = await http.get(f"/v1/receipts/{saved.receipt_id}", headers=bearer(token))
    served = await response.read()
    assert response.content_type == "application/json"
    conn = await connect(database_url, timeout=5)
    try:
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT body, sha256 FROM receipts WHERE id = %s", (saved.receipt_id,)
            )
            body, sha256 = await cur.fetchone()
    finally:
        await conn.close()
    assert served == body.encode()
    assert sha256 == hashlib.sha256(served).hexdigest() == receipt_sha256(orjson.loads(served))


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_flipped_byte_in_the_response_fails_verification(
    http, caller, tmp_path, stream, capsys
):
    _, token = caller
    saved = await ask(http, token, stream=stream)
    receipt = await fetch_receipt(http, token, saved.receipt_id)
    report = await fetch_report(http)
    flipped = bytearray(saved.response_body)
    flipped[len(flipped) // 2] ^= 0x01
    saved.response_body = bytes(flipped)
    with pytest.raises(VerificationError, match="response body"):
        verify_all(report, [receipt], saved.request_body, saved.response_body)
    assert relay_verify(tmp_path, report, [receipt], saved) == 1
    assert "FAIL response body" in capsys.readouterr().out


async def test_a_flipped_byte_in_the_receipt_fails_verification(http, caller, tmp_path, capsys):
    _, token = caller
    saved = await ask(http, token, stream=True)
    receipt = await fetch_receipt(http, token, saved.receipt_id)
    report = await fetch_report(http)
    digest = receipt["forwarded_sha256"]
    receipt["forwarded_sha256"] = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    with pytest.raises(VerificationError, match="signature"):
        verify_all(report, [receipt])
    assert relay_verify(tmp_path, report, [receipt]) == 1
    assert "FAIL signature" in capsys.readouterr().out


async def test_consecutive_receipts_chain_and_a_gap_or_edit_breaks_it(
    http, caller, tmp_path, capsys
):
    _, token = caller
    receipts = []
    for stream in (False, True, False):
        saved = await ask(http, token, stream=stream)
        receipts.append(await fetch_receipt(http, token, saved.receipt_id))
    assert receipts[1]["prev_receipt_sha256"] == receipt_sha256(receipts[0])
    assert "3 receipt(s)" in verify_chain(receipts)
    report = await fetch_report(http)
    assert relay_verify(tmp_path / "chain", report, receipts) == 0
    with pytest.raises(VerificationError, match="chain"):
        verify_chain([receipts[0], receipts[2]])
    assert relay_verify(tmp_path / "gap", report, [receipts[0], receipts[2]]) == 1
    assert "FAIL chain" in capsys.readouterr().out
    edited = dict(receipts[0], signature=receipts[0]["signature"][::-1])
    with pytest.raises(VerificationError, match="chain"):
        verify_chain([edited, receipts[1]])


async def test_another_client_gets_404_for_a_receipt_and_its_signature(http, caller):
    _, token = caller
    saved = await ask(http, token, stream=False)
    _, other = await client_with_token(http, name="other")
    for path in (f"/v1/receipts/{saved.receipt_id}", f"/v1/signature/{saved.receipt_id}"):
        await assert_error(await http.get(path, headers=bearer(other)), 404, "receipt_not_found")
        await assert_error(await http.get(path), 401)
    unknown = await http.get("/v1/receipts/" + "0" * 32, headers=bearer(token))
    await assert_error(unknown, 404, "receipt_not_found")


@pytest.mark.parametrize("bad", ["%00", "abc%00def", "A" * 32, "0" * 33, "..%2F.."])
async def test_a_malformed_receipt_id_is_404(http, caller, bad):
    _, token = caller
    for path in (f"/v1/receipts/{bad}", f"/v1/signature/{bad}"):
        await assert_error(await http.get(path, headers=bearer(token)), 404, "receipt_not_found")


async def test_the_signature_endpoint_answers_in_nears_shape(http, caller):
    _, token = caller
    saved = await ask(http, token, stream=True)
    receipt = await fetch_receipt(http, token, saved.receipt_id)
    response = await http.get(f"/v1/signature/{saved.receipt_id}", headers=bearer(token))
    assert response.status == 200
    near = await response.json()
    assert set(near) == {"text", "signature", "signing_algo", "signing_address"}
    assert near["text"] == f"{receipt['request_sha256']}:{receipt['response_sha256']}"
    assert near["signing_algo"] == "ed25519"
    assert near["signing_address"] == receipt["signing_public_key"]
    verify_near_signature(near)


async def test_a_near_client_finds_the_signers_report_by_its_signing_address(http, caller):
    # As NEAR's chat verifier does: the signature names a signing_address, the report
    # answering the client's nonce must name the same, and its report_data must start
    # with that address (padded to 32 bytes) and end with the nonce.
    _, token = caller
    saved = await ask(http, token, stream=False)
    near = await (await http.get(f"/v1/signature/{saved.receipt_id}", headers=bearer(token))).json()
    report = await fetch_report(http)
    assert report["signing_address"] == near["signing_address"]
    report_data = bytes.fromhex(report["report_data"])
    assert report_data[:32] == bytes.fromhex(report["signing_address"]).ljust(32, b"\0")
    assert report_data[32:] == bytes.fromhex(NONCE)


async def test_an_instance_does_not_sign_nears_text_for_another_keys_receipt(
    make_client, settings, caller
):
    # Two `none` instances, each its own key: B's key (TEE-attested, in other setups)
    # must not vouch for hashes that A witnessed and signed.
    one = await make_client(settings)
    other = await make_client(settings.replace(state_dir=settings.state_dir + "-b"))
    _, token = caller
    saved = await ask(one, token, stream=False)
    response = await other.get(f"/v1/signature/{saved.receipt_id}", headers=bearer(token))
    await assert_error(response, 409, "receipt_signed_by_another_key")
    assert (await one.get(f"/v1/signature/{saved.receipt_id}", headers=bearer(token))).status == 200


def completion_id(saved: Any) -> str:
    """The `id` the client read in the answer, as NEAR's clients take it."""
    if saved.response_body.startswith(b"data: "):
        first = saved.response_body.split(b"\n\n")[0].removeprefix(b"data: ")
        return str(orjson.loads(first)["id"])
    return str(orjson.loads(saved.response_body)["id"])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_an_answer_is_found_by_its_completion_id_as_near_clients_ask(http, caller, stream):
    _, token = caller
    saved = await ask(http, token, stream=stream)
    await ask(http, token, stream=stream)  # a later answer: not the one asked for
    chat_id = completion_id(saved)
    receipt = await fetch_receipt(http, token, chat_id)
    assert receipt["receipt_id"] == saved.receipt_id
    query = "?model=gpt-sim&signing_algo=ed25519"
    response = await http.get(f"/v1/signature/{chat_id}{query}", headers=bearer(token))
    near = await response.json()
    assert near["text"] == f"{receipt['request_sha256']}:{receipt['response_sha256']}"
    verify_near_signature(near)
    _, other = await client_with_token(http, name="other")
    response = await http.get(f"/v1/signature/{chat_id}", headers=bearer(other))
    await assert_error(response, 404, "receipt_not_found")


async def test_a_completion_id_written_as_32_hex_digits_finds_its_answer(
    make_settings, make_client, provider_upstream
):
    # Some providers' completion ids are a bare uuid4().hex: the very form of a receipt
    # id. NEAR's clients ask /v1/signature/{the completion's id} all the same.
    chat_id = uuid.uuid4().hex

    async def provider(request: web.Request) -> web.Response:
        message = {"role": "assistant", "content": "Hello"}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return web.json_response(
            {
                "id": chat_id,
                "object": "chat.completion",
                "created": 1,
                "model": "hex-ids",
                "choices": [choice],
            }
        )

    upstream = await provider_upstream(provider, "hex-ids", models={"gpt-sim": "hex-ids"})
    http = await make_client(make_settings(upstreams=(upstream,)))
    _, token = await client_with_token(http)
    saved = await ask(http, token, stream=False)
    assert completion_id(saved) == chat_id
    receipt = await fetch_receipt(http, token, chat_id)
    assert receipt["receipt_id"] == saved.receipt_id
    near = await (await http.get(f"/v1/signature/{chat_id}", headers=bearer(token))).json()
    assert near["text"] == f"{receipt['request_sha256']}:{receipt['response_sha256']}"
    _, other = await client_with_token(http, name="other")
    response = await http.get(f"/v1/signature/{chat_id}", headers=bearer(other))
    await assert_error(response, 404, "receipt_not_found")


async def test_a_signature_in_another_algorithm_is_refused(http, caller):
    _, token = caller
    saved = await ask(http, token, stream=False)
    path = f"/v1/signature/{saved.receipt_id}?signing_algo=ecdsa"
    error = await assert_error(await http.get(path, headers=bearer(token)), 400)
    assert error["param"] == "signing_algo"


async def test_an_answer_not_stored_still_gets_a_receipt_of_hashes(http, caller, tmp_path):
    _, token = caller
    saved = await ask(http, token, stream=True, store=False)
    receipt = await fetch_receipt(http, token, saved.receipt_id)
    assert receipt["conversation_id"] is None
    report = await fetch_report(http)
    assert verify_all(report, [receipt], saved.request_body, saved.response_body)


async def test_a_failed_answer_gets_a_receipt_of_the_error_the_client_saw(http, caller, simulator):
    _, token = caller
    simulator.config.error_status = 500
    saved = await ask(http, token, stream=False)
    assert saved.status >= 500
    receipt = await fetch_receipt(http, token, saved.receipt_id)
    assert receipt["status"] == "failed" and receipt["completed"] is False
    assert receipt["response_sha256"] == hashlib.sha256(saved.response_body).hexdigest()


async def test_a_cut_stream_gets_a_receipt_of_what_arrived(http, caller, simulator):
    _, token = caller
    simulator.config.cut_after = 3
    saved = await ask(http, token, stream=True)
    receipt = await fetch_receipt(http, token, saved.receipt_id)
    assert receipt["status"] == "cut" and receipt["completed"] is False
    assert receipt["response_sha256"] == hashlib.sha256(saved.response_body).hexdigest()


async def test_a_client_leaving_mid_stream_gets_a_cancelled_receipt(http, caller, simulator):
    _, token = caller
    simulator.config.tokens = 500
    simulator.config.token_delay = 0.02
    response = await http.post(
        "/v1/chat/completions",
        json={"model": "gpt-sim", "messages": MESSAGES, "stream": True},
        headers=bearer(token),
    )
    receipt_id = response.headers["x-receipt-id"]
    await response.content.readany()
    response.close()
    receipt = await fetch_receipt_when_committed(http, token, receipt_id)
    assert receipt["status"] == "cancelled" and receipt["completed"] is False


async def test_a_client_leaving_while_its_answer_waits_to_commit_gets_a_receipt_that_agrees(
    http, caller, database_url
):
    # An answer queued for commit when its client leaves is written as it stood
    # then (complete, [DONE] hashed), not half-changed to cancelled.
    _, token = caller

    async def streamed_to_its_end() -> tuple[Any, str, bytes]:
        response = await http.post(
            "/v1/chat/completions",
            json={"model": "gpt-sim", "messages": MESSAGES, "stream": True},
            headers=bearer(token),
        )
        received = b""
        while not (b'"finish_reason":"stop"' in received and received.endswith(b"\n\n")):
            received += await response.content.readany()
        await asyncio.sleep(0.2)  # its answer is queued or committing
        return response, response.headers["x-receipt-id"], received

    locker = await connect(database_url, timeout=10)
    try:
        async with locker.cursor() as cur:
            await cur.execute("BEGIN")
            await cur.execute("LOCK TABLE receipts IN ACCESS EXCLUSIVE MODE")
            # Two batches wait for the lock (as many as are sent at once); the third
            # answer waits in the queue, and its client leaves there.
            waiting = [await streamed_to_its_end() for _ in range(3)]
            response, receipt_id, received = waiting[-1]
            response.close()
            await asyncio.sleep(0.3)
            await cur.execute("COMMIT")
    finally:
        await locker.close()
    receipt = await fetch_receipt_when_committed(http, token, receipt_id)
    assert receipt["status"] == "complete"
    done = received + b"data: [DONE]\n\n"
    assert receipt["response_sha256"] == hashlib.sha256(done).hexdigest()
    for other, _, _ in waiting[:-1]:
        assert (await other.read()).endswith(b"data: [DONE]\n\n")


async def test_instances_sharing_a_database_keep_one_chain(make_client, settings, caller):
    # Two instances (each its own key file: the chain spans keys) answering at once.
    other = await make_client(settings.replace(state_dir=settings.state_dir + "-b"))
    client_one = await make_client(settings)
    _, token = caller
    answers = await asyncio.gather(
        *(
            ask(instance, token, stream=index % 2 == 0)
            for index, instance in enumerate([client_one, other] * 6)
        )
    )
    ids = {saved.receipt_id for saved in answers}
    conn = await connect(settings.database_url, timeout=5)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT id, body FROM receipts ORDER BY seq")
            rows = await cur.fetchall()
    finally:
        await conn.close()
    assert ids <= {row[0] for row in rows}
    chain = [orjson.loads(row[1]) for row in rows]
    assert chain[0]["prev_receipt_sha256"] is None
    assert verify_chain(chain)
    assert len({receipt["signing_public_key"] for receipt in chain}) == 2


async def test_an_instance_whose_remembered_chain_head_went_stale_links_on_correctly(
    make_client, settings, caller
):
    """Each instance remembers the head its last commit left; the other moves it on
    between every two answers, so each commit starts from a stale head."""
    one = await make_client(settings)
    other = await make_client(settings.replace(state_dir=settings.state_dir + "-b"))
    _, token = caller
    for instance in [one, other] * 3 + [one]:
        saved = await ask(instance, token, stream=False)
        assert saved.status == 200
    conn = await connect(settings.database_url, timeout=5)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT seq, body FROM receipts ORDER BY seq")
            rows = await cur.fetchall()
            await cur.execute("SELECT seq, sha256 FROM receipt_chain_head")
            head = await cur.fetchone()
    finally:
        await conn.close()
    assert [row[0] for row in rows] == list(range(1, 8))
    chain = [orjson.loads(row[1]) for row in rows]
    assert verify_chain(chain)
    keys = [receipt["signing_public_key"] for receipt in chain]
    assert keys[::2] == [keys[0]] * 4 and keys[1::2] == [keys[1]] * 3 and keys[0] != keys[1]
    assert head == (7, receipt_sha256(chain[-1]))


async def test_a_deleted_clients_receipts_stay_in_the_chain(http, caller, database_url):
    client, token = caller
    first = await ask(http, token, stream=False)
    _, other_token = await client_with_token(http, name="stays")
    second = await ask(http, other_token, stream=False)
    response = await http.delete(f"/admin/clients/{client['id']}", headers=ADMIN)
    assert response.status in (200, 204)
    conn = await connect(database_url, timeout=5)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT id, client_id, body FROM receipts ORDER BY seq")
            rows = await cur.fetchall()
    finally:
        await conn.close()
    assert [row[0] for row in rows] == [first.receipt_id, second.receipt_id]
    assert rows[0][1] is None  # kept, but no client can read it any more
    assert verify_chain([orjson.loads(row[2]) for row in rows])


async def test_an_auditor_reads_the_whole_chain_in_pages_and_it_verifies(http, caller, tmp_path):
    _, token = caller
    _, other_token = await client_with_token(http, name="another")
    ids = []
    for each in (token, other_token, token, other_token, token):
        ids.append((await ask(http, each, stream=False)).receipt_id)
    response = await http.get("/admin/receipts", headers=ADMIN)
    assert response.status == 200
    raw = await response.read()
    whole = orjson.loads(raw)
    assert (whole["object"], whole["last_seq"], whole["has_more"]) == ("list", 5, False)
    assert [receipt["receipt_id"] for receipt in whole["data"]] == ids  # every client's
    # Each receipt exactly as signed and as its client reads it.
    own = await http.get(f"/v1/receipts/{ids[0]}", headers=bearer(token))
    assert await own.read() in raw
    assert "5 receipt(s)" in verify_chain(whole["data"])

    pages, after = [], 0
    while True:
        response = await http.get(f"/admin/receipts?after={after}&limit=2", headers=ADMIN)
        page = await response.read()
        pages.append(tmp_path / f"page-{len(pages)}.json")
        pages[-1].write_bytes(page)
        body = orjson.loads(page)
        if not body["has_more"]:
            break
        after = body["last_seq"]
    assert len(pages) == 3
    # relay verify reads the pages as served, in order, as one chain.
    report = tmp_path / "report.json"
    report.write_bytes(orjson.dumps(await fetch_report(http)))
    argv = ["verify", "--report", str(report)]
    argv += [arg for path in pages for arg in ("--receipt", str(path))]
    assert relay_cli(argv) == 0

    past = orjson.loads(await (await http.get("/admin/receipts?after=5", headers=ADMIN)).read())
    # At the chain's end a follower stays where it is, to ask again later.
    assert past == {"object": "list", "data": [], "last_seq": 5, "has_more": False}
    far = await http.get(f"/admin/receipts?after={2**63 - 1}", headers=ADMIN)  # 19 digits
    assert orjson.loads(await far.read())["last_seq"] == 2**63 - 1


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("limit=0", 400),
        ("limit=501", 400),
        ("after=-1", 400),
        ("after=x", 400),
        (f"after={2**63}", 400),
        ("after=" + "9" * 5000, 400),  # past what int() reads at all
    ],
)
async def test_the_chain_export_checks_its_query_and_wants_the_admin_token(
    http, caller, query, status
):
    _, token = caller
    await assert_error(await http.get(f"/admin/receipts?{query}", headers=ADMIN), status)
    await assert_error(await http.get("/admin/receipts", headers=bearer(token)), 401)
    await assert_error(await http.get("/admin/receipts"), 401)


async def test_receipts_off_means_no_header_and_no_rows(make_client, make_settings, database_url):
    http = await make_client(make_settings(receipts=False))
    _, token = await client_with_token(http)
    response = await http.post(
        "/v1/chat/completions",
        json={"model": "gpt-sim", "messages": [{"role": "user", "content": "hi"}]},
        headers=bearer(token),
    )
    assert response.status == 200
    assert "x-receipt-id" not in response.headers
    conn = await connect(database_url, timeout=5)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT count(*) FROM receipts")
            assert (await cur.fetchone())[0] == 0
    finally:
        await conn.close()
    health = await (await http.get("/health")).json()
    assert health["attestation"]["receipts"] is False


def test_relay_verify_runs_as_a_command(tmp_path: Path) -> None:
    """The console entry point is wired: `python -m relay verify --help` works."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "relay", "verify", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--response-body" in result.stdout
