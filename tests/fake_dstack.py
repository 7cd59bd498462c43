"""An in-process fake of the dstack guest agent: aiohttp on a Unix socket, as the SDK expects.

It answers POST /GetKey, /GetQuote, /Info and /Version with the JSON fields
dstack-sdk 0.5.4's pydantic models require. Keys are a pure function of
(seed, path, purpose, algorithm), so a restarted agent with the same seed hands
out the same key; quotes are TDX v4-shaped with report_data at offset 568.
GetKey's signature chain is real, signed as dstack signs it by an app key and a
KMS root key the fake holds (see `signature_chain`).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from eth_keys import keys
from eth_utils import keccak

QUOTE_HEADER_SIZE = 48
QUOTE_REPORT_DATA_OFFSET = 568  # header 48 + 520 bytes of TD report body before report_data
TD_REPORT_BODY_SIZE = 584
# Unix socket paths are limited to 108 bytes on Linux; deep tmp_paths can exceed it.
_MAX_SOCKET_PATH = 100


@dataclass
class FakeDstackState:
    seed: bytes = b"fake dstack app seed"
    app_id: str = "ab" * 20
    instance_id: str = "cd" * 20
    compose_hash: str = "ef" * 32
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fail_status: int | None = None  # answer every call with this HTTP status
    malformed: bool = False  # answer every call 200 with a JSON list instead of an object
    quote_report_data: bytes | None = None  # put this in quotes instead of the asked data
    kms_root_key: bytes = hashlib.sha256(b"fake dstack kms root").digest()

    def methods(self) -> list[str]:
        return [name for name, _ in self.calls]


def derived_key(seed: bytes, path: str, purpose: str, algorithm: str) -> bytes:
    return hashlib.sha256(
        b"\0".join([seed, path.encode(), purpose.encode(), algorithm.encode()])
    ).digest()


def fake_kms_root(state: FakeDstackState) -> keys.PublicKey:
    return keys.PrivateKey(state.kms_root_key).public_key


def signature_chain(state: FakeDstackState, key: bytes, purpose: str) -> list[str]:
    """GetKey's chain as dstack builds it (guest-agent/src/rpc_service.rs `get_key`,
    kms/src/crypto.rs `derive_k256_key`): 65-byte r‖s‖recid signatures over keccak256."""
    # The KMS derives the app key from its root key and the app id; a hash stands in for its KDF.
    app_id = bytes.fromhex(state.app_id)
    app = keys.PrivateKey(hashlib.sha256(state.kms_root_key + app_id + b"app-key").digest())
    derived = keys.PrivateKey(key).public_key.to_compressed_bytes().hex()
    by_app = app.sign_msg_hash(keccak(f"{purpose}:{derived}".encode()))
    issued = b"dstack-kms-issued:" + app_id + app.public_key.to_compressed_bytes()
    by_kms = keys.PrivateKey(state.kms_root_key).sign_msg_hash(keccak(issued))
    return [by_app.to_bytes().hex(), by_kms.to_bytes().hex()]


def fake_quote(report_data: bytes) -> bytes:
    header = (
        (4).to_bytes(2, "little")  # version
        + (2).to_bytes(2, "little")  # attestation key type: ECDSA-256 with P-256
        + (0x81).to_bytes(4, "little")  # TEE type: TDX
        + bytes(4)
        + bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")  # Intel's QE vendor id
        + bytes(20)
    )
    body = bytearray(hashlib.sha512(b"measurements").digest() * 10)[:TD_REPORT_BODY_SIZE]
    body[520:584] = report_data
    signature = bytes(64)
    return header + bytes(body) + len(signature).to_bytes(4, "little") + signature


def _event_log(state: FakeDstackState) -> list[dict[str, Any]]:
    return [
        {
            "imr": 3,
            "event_type": 134217729,
            "digest": hashlib.sha384(bytes.fromhex(state.compose_hash)).hexdigest(),
            "event": "compose-hash",
            "event_payload": state.compose_hash,
        }
    ]


def fake_dstack_app(state: FakeDstackState) -> web.Application:
    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        payload = orjson.loads(await request.read() or b"{}")
        state.calls.append((request.path.lstrip("/"), payload))
        if state.fail_status is not None:
            return web.Response(status=state.fail_status, text="fake failure")
        if state.malformed:
            return web.json_response([])
        return await handler(request)

    async def body(request: web.Request) -> dict[str, Any]:
        payload: dict[str, Any] = orjson.loads(await request.read() or b"{}")
        return payload

    async def get_key(request: web.Request) -> web.Response:
        payload = await body(request)
        algorithm = payload.get("algorithm") or "secp256k1"
        if algorithm not in ("secp256k1", "k256"):
            return web.json_response({"error": f"unsupported algorithm {algorithm}"}, status=400)
        purpose = payload.get("purpose", "")
        key = derived_key(state.seed, payload.get("path", ""), purpose, algorithm)
        chain = signature_chain(state, key, purpose)
        return web.json_response({"key": key.hex(), "signature_chain": chain})

    async def get_quote(request: web.Request) -> web.Response:
        payload = await body(request)
        asked = bytes.fromhex(payload["report_data"])
        if len(asked) > 64:
            return web.json_response({"error": "report_data longer than 64 bytes"}, status=400)
        quoted = state.quote_report_data or asked.ljust(64, b"\0")
        return web.json_response(
            {
                "quote": fake_quote(quoted).hex(),
                "event_log": orjson.dumps(_event_log(state)).decode(),
                "report_data": quoted.hex(),
                "vm_config": "{}",
            }
        )

    async def info(request: web.Request) -> web.Response:
        await body(request)
        tcb_info = {
            "mrtd": "11" * 48,
            "rtmr0": "22" * 48,
            "rtmr1": "33" * 48,
            "rtmr2": "44" * 48,
            "rtmr3": "55" * 48,
            "mr_aggregated": "66" * 32,
            "os_image_hash": "77" * 32,
            "compose_hash": state.compose_hash,
            "device_id": "88" * 32,
            "app_compose": '{"manifest_version":2,"name":"relay"}',
            "event_log": _event_log(state),
        }
        return web.json_response(
            {
                "app_id": state.app_id,
                "instance_id": state.instance_id,
                "app_cert": "-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n",
                # The real agent sends tcb_info as a JSON string; the SDK parses it.
                "tcb_info": orjson.dumps(tcb_info).decode(),
                "app_name": "relay",
                "device_id": "88" * 32,
                "mr_aggregated": "66" * 32,
                "os_image_hash": "77" * 32,
                "key_provider_info": '{"name":"kms","id":"99"}',
                "compose_hash": state.compose_hash,
                "vm_config": "{}",
            }
        )

    async def version(request: web.Request) -> web.Response:
        await body(request)
        return web.json_response({"version": "0.5.7", "rev": "fake"})

    app = web.Application(middlewares=[record])
    app.router.add_post("/GetKey", get_key)
    app.router.add_post("/GetQuote", get_quote)
    app.router.add_post("/Info", info)
    app.router.add_post("/Version", version)
    return app


@asynccontextmanager
async def start_fake_dstack(
    tmp_path: Path, state: FakeDstackState | None = None
) -> AsyncIterator[tuple[str, FakeDstackState]]:
    """Serve a fake agent on a Unix socket; yields (socket path, state) until the block ends."""
    state = state or FakeDstackState()
    short_dir = None
    socket_path = tmp_path / "dstack.sock"
    if len(str(socket_path)) > _MAX_SOCKET_PATH:
        short_dir = Path(tempfile.mkdtemp(prefix="dstack-"))
        socket_path = short_dir / "dstack.sock"
    runner = web.AppRunner(fake_dstack_app(state))
    await runner.setup()
    try:
        await web.UnixSite(runner, str(socket_path)).start()
        yield str(socket_path), state
    finally:
        await runner.cleanup()
        if short_dir is not None:
            shutil.rmtree(short_dir, ignore_errors=True)
