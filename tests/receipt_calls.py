"""What a client of relay's proofs does, written once: ask, keep its bytes, fetch the proof."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp.test_utils import TestClient

from relay.cli import main
from tests.api_calls import bearer

NONCE = "5e" * 32
MESSAGES = [{"role": "user", "content": "Say hello"}]


@dataclass
class Saved:
    """One answer as its client saw it: the exact bytes both ways and the receipt id."""

    request_body: bytes
    response_body: bytes
    receipt_id: str
    status: int


async def ask(http: TestClient, token: str, *, stream: bool, **extra: Any) -> Saved:
    # Sent as raw bytes with a space the JSON encoder would not write: the
    # receipt must hash what the client sent, not a re-encoding of it.
    body = {"model": "gpt-sim", "messages": MESSAGES, "stream": stream, **extra}
    request_body = orjson.dumps(body).replace(b'"messages":', b'"messages": ')
    response = await http.post(
        "/v1/chat/completions",
        data=request_body,
        headers={**bearer(token), "Content-Type": "application/json"},
    )
    # Read before the body: the id is there from the first byte.
    receipt_id = response.headers["x-receipt-id"]
    return Saved(request_body, await response.read(), receipt_id, response.status)


async def fetch_receipt(http: TestClient, token: str, receipt_id: str) -> dict[str, Any]:
    response = await http.get(f"/v1/receipts/{receipt_id}", headers=bearer(token))
    assert response.status == 200, await response.text()
    receipt: dict[str, Any] = orjson.loads(await response.read())
    return receipt


async def fetch_receipt_when_committed(
    http: TestClient, token: str, receipt_id: str
) -> dict[str, Any]:
    """The receipt of an answer whose client left: its commit runs in the background."""
    for _ in range(200):
        found = await http.get(f"/v1/receipts/{receipt_id}", headers=bearer(token))
        if found.status == 200:
            break
        await asyncio.sleep(0.05)
    return await fetch_receipt(http, token, receipt_id)


async def fetch_report(http: TestClient, nonce: str | None = NONCE) -> dict[str, Any]:
    query = f"?nonce={nonce}" if nonce is not None else ""
    response = await http.get(f"/v1/attestation/report{query}")
    assert response.status == 200, await response.text()
    assert response.headers["Cache-Control"] == "no-store"
    report: dict[str, Any] = await response.json()
    return report


def relay_verify(
    directory: Path,
    report: dict[str, Any],
    receipts: list[dict[str, Any]],
    saved: Saved | None = None,
    nonce: str | None = NONCE,
    *,
    require_tee: bool = False,
) -> int:
    """`relay verify` on files written as a client would keep them; its exit status."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_bytes(orjson.dumps(report))
    argv = ["verify", "--report", str(directory / "report.json")]
    for index, receipt in enumerate(receipts):
        path = directory / f"receipt-{index}.json"
        path.write_bytes(orjson.dumps(receipt))
        argv += ["--receipt", str(path)]
    if saved is not None:
        (directory / "request.bin").write_bytes(saved.request_body)
        (directory / "response.bin").write_bytes(saved.response_body)
        argv += ["--request-body", str(directory / "request.bin")]
        argv += ["--response-body", str(directory / "response.bin")]
    if nonce is not None:
        argv += ["--nonce", nonce]
    if require_tee:
        argv.append("--require-tee")
    return main(argv)
