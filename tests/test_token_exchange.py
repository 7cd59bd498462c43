"""An API key is traded for a JWT that `/v1/me` recognises; every bad key gets the same 401."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import bcrypt
import jwt

from relay.appkeys import CLIENTS
from relay.services.apikeys import BcryptPool
from tests.api_calls import ADMIN, assert_error, bearer, client_with_token, create_client, exchange
from tests.conftest import JWT_SECRET


async def test_key_to_token_to_me(http):
    client, token = await client_with_token(http, name="phone app", scopes=["chat", "history"])

    response = await http.get("/v1/me", headers=bearer(token))

    assert response.status == 200, await response.text()
    me = await response.json()
    assert me["id"] == client["id"]
    assert me["name"] == "phone app"
    assert me["scopes"] == ["chat", "history"]
    now = int(time.time())
    assert now + 3600 - 60 <= me["token_expires_at"] <= now + 3600 + 5
    assert 3600 - 60 <= me["token_expires_in"] <= 3600


async def test_token_response_fields_and_no_store(http):
    client = await create_client(http, scopes=["chat"])

    response = await http.post("/auth/token", json={"api_key": client["api_key"]})

    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == "chat"
    assert isinstance(body["access_token"], str) and body["access_token"].count(".") == 2


async def test_a_body_opening_with_a_byte_order_mark_is_exchanged(http):
    client = await create_client(http)
    body = b'\xef\xbb\xbf{"api_key": "' + client["api_key"].encode() + b'"}'
    response = await http.post(
        "/auth/token", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status == 200, await response.text()


async def test_token_claims(http, settings):
    client = await create_client(http, scopes=["chat", "tools"])
    before = int(time.time())
    token = await exchange(http, client["api_key"])

    header = jwt.get_unverified_header(token)
    claims = jwt.decode(
        token, JWT_SECRET, algorithms=["HS256"], audience="relay-api", issuer="relay"
    )

    assert header["alg"] == "HS256" and header["typ"] == "JWT"
    assert claims["sub"] == client["id"]
    assert before <= claims["iat"] <= int(time.time())
    assert claims["exp"] == claims["iat"] + settings.jwt_ttl
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16
    assert claims["scope"] == "chat tools"
    assert claims["key_version"] == 1
    assert claims["iss"] == "relay"
    assert claims["aud"] == "relay-api"


async def test_each_token_has_its_own_jti(http):
    client = await create_client(http)
    first = await exchange(http, client["api_key"])
    second = await exchange(http, client["api_key"])
    decode = {"algorithms": ["HS256"], "audience": "relay-api"}
    assert (
        jwt.decode(first, JWT_SECRET, **decode)["jti"]
        != jwt.decode(second, JWT_SECRET, **decode)["jti"]
    )


async def test_token_ttl_follows_settings(make_client, make_settings):
    http = await make_client(make_settings(jwt_ttl=120))
    client = await create_client(http)
    response = await http.post("/auth/token", json={"api_key": client["api_key"]})
    assert (await response.json())["expires_in"] == 120


def _wrong_secret(key: str) -> str:
    prefix, key_id, secret = key.split("_")
    flipped = ("0" if secret[0] != "0" else "1") + secret[1:]
    return f"{prefix}_{key_id}_{flipped}"


async def _refusal(http, api_key: str) -> bytes:
    response = await http.post("/auth/token", json={"api_key": api_key})
    await assert_error(response, 401, "invalid_api_key")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    return await response.read()


async def test_every_bad_key_gets_the_same_401(http):
    good = await create_client(http)
    disabled = await create_client(http, name="disabled one")
    response = await http.patch(
        f"/admin/clients/{disabled['id']}", json={"status": "disabled"}, headers=ADMIN
    )
    assert response.status == 200

    bodies = {
        "wrong secret": await _refusal(http, _wrong_secret(good["api_key"])),
        "unknown key id": await _refusal(http, "rk_0123456789abcdef_" + "ab" * 24),
        "malformed key": await _refusal(http, "not-a-key"),
        "truncated key": await _refusal(http, good["api_key"][:-1]),
        "disabled client": await _refusal(http, disabled["api_key"]),
    }

    assert len(set(bodies.values())) == 1, bodies


async def test_missing_api_key_is_invalid_request(http):
    for body in ({}, {"api_key": ""}, {"api_key": 42}):
        response = await http.post("/auth/token", json=body)
        error = await assert_error(response, 400)
        assert error["param"] == "api_key"


async def test_a_key_sent_with_whitespace_around_it_is_told_so(http):
    # As a key read from a file or pasted from a terminal often is; every bad key's 401
    # would hide the cause. (It says nothing of the key: any text with it is told so.)
    key = (await create_client(http))["api_key"]
    for sent in (key + "\n", " " + key, key + " ", "\t"):
        response = await http.post("/auth/token", json={"api_key": sent})
        error = await assert_error(response, 400, "invalid_request")
        assert error["param"] == "api_key"
        assert "whitespace" in error["message"]
    response = await http.post("/auth/token", json={"api_key": key})
    assert response.status == 200


class RecordingExecutor(ThreadPoolExecutor):
    """Notes which function ran on which thread, to show where bcrypt runs."""

    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.calls: list[tuple[Any, tuple[Any, ...], int]] = []

    def submit(self, fn, /, *args, **kwargs):
        def run() -> Any:
            self.calls.append((fn, args, threading.get_ident()))
            return fn(*args, **kwargs)

        return super().submit(run)


def _recording(http) -> tuple[RecordingExecutor, RecordingExecutor]:
    """The app's bcrypt pool and the loop's default executor, each replaced by a recorder."""
    bcrypt_threads = RecordingExecutor()
    http.app[CLIENTS].hasher.pool = BcryptPool(bcrypt_threads, workers=2, queued=8)
    default = RecordingExecutor()
    asyncio.get_running_loop().set_default_executor(default)
    return bcrypt_threads, default


def _bcrypt_checks(executor: RecordingExecutor) -> list[tuple[Any, tuple[Any, ...], int]]:
    return [call for call in executor.calls if call[0] is bcrypt.checkpw]


async def test_unknown_key_id_still_checks_a_bcrypt_hash_off_the_loop(http):
    hasher = http.app[CLIENTS].hasher
    checked: list[str | None] = []
    real_check = hasher.check

    async def counting_check(secret: str, hashed: str | None) -> bool:
        checked.append(hashed)
        return await real_check(secret, hashed)

    hasher.check = counting_check  # the app's own instance, seen by the exchange
    bcrypt_threads, default = _recording(http)

    await _refusal(http, "rk_0123456789abcdef_" + "ab" * 24)

    assert checked == [None]  # no stored hash: the dummy one is checked instead
    [(_, (secret, target), thread)] = _bcrypt_checks(bcrypt_threads)
    assert secret == b"ab" * 24
    assert thread != threading.get_ident()
    assert target.startswith(b"$2")  # a real bcrypt hash, as costly as a stored one
    assert _bcrypt_checks(default) == []


async def test_text_that_cannot_be_a_key_is_refused_without_bcrypt(http):
    """The key format is public: refusing what does not match it at once tells a
    guesser nothing, and costs relay no bcrypt check."""
    bcrypt_threads, default = _recording(http)

    bodies = {
        await _refusal(http, text)
        for text in (
            "garbage",
            "é" * 200,  # past bcrypt's 72 bytes
            "rk_0123456789ABCDEF_" + "ab" * 24,  # a key's hex is lower case
            "rk_0123456789abcdef_" + "ab" * 25,  # a secret too long
        )
    }

    assert bodies == {await _refusal(http, "rk_0123456789abcdef_" + "ab" * 24)}
    assert len(_bcrypt_checks(bcrypt_threads)) == 1  # the well-formed one only
    assert _bcrypt_checks(default) == []


async def test_good_key_bcrypt_runs_on_its_own_threads(http):
    client = await create_client(http)
    bcrypt_threads, default = _recording(http)

    await exchange(http, client["api_key"])

    runs = _bcrypt_checks(bcrypt_threads)
    assert len(runs) == 1
    assert runs[0][2] != threading.get_ident()
    # Not in the default executor, where aiohttp resolves host names.
    assert _bcrypt_checks(default) == []
