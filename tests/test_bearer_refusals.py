"""Every way a `/v1/*` bearer token can be wrong ends in a 401 in the error shape."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
import uuid
from typing import Any

import jwt
import orjson
import pytest
from multidict import CIMultiDict

from tests.api_calls import ADMIN, assert_error, bearer, client_with_token, exchange
from tests.conftest import JWT_SECRET

REQUIRED_CLAIMS = ("sub", "iat", "exp", "jti", "iss", "aud", "key_version")


def claims_for(client_id: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "sub": client_id,
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "scope": "",
        "key_version": 1,
        "iss": "relay",
        "aud": "relay-api",
    }
    claims.update(changes)
    return {key: value for key, value in claims.items() if value is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], claims: dict[str, Any], secret: str = JWT_SECRET) -> str:
    """A token whose header says anything, signed with HMAC-SHA256 under `secret`."""
    signing_input = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}"
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


async def assert_refused(http, headers: dict[str, str], code: str | None = None) -> None:
    response = await http.get("/v1/me", headers=headers)
    await assert_error(response, 401, code)
    challenge = response.headers["WWW-Authenticate"]
    # RFC 6750 §3: a token that was sent and refused is named invalid_token; none sent, no error.
    if headers.get("Authorization", "").lower().startswith("bearer ") and code != "missing_token":
        assert challenge == 'Bearer realm="relay", error="invalid_token"'
    else:
        assert challenge == 'Bearer realm="relay"'


@pytest.fixture
async def caller(http) -> tuple[dict[str, Any], str]:
    return await client_with_token(http)


async def test_the_good_token_works(http, caller):
    _, token = caller
    assert (await http.get("/v1/me", headers=bearer(token))).status == 200


async def test_no_header(http):
    await assert_refused(http, {}, "missing_token")


@pytest.mark.parametrize("scheme", ["Basic", "Token", "bearer-ish", ""])
async def test_wrong_scheme(http, caller, scheme):
    _, token = caller
    await assert_refused(http, {"Authorization": f"{scheme} {token}".strip()}, "missing_token")


async def test_bearer_without_token(http):
    await assert_refused(http, {"Authorization": "Bearer   "}, "missing_token")


async def test_bad_signature(http, caller):
    client, _ = caller
    forged = jwt.encode(claims_for(client["id"]), "another-secret-" + "x" * 32, algorithm="HS256")
    await assert_refused(http, bearer(forged), "invalid_token")


async def test_tampered_payload(http, caller):
    client, token = caller
    header, _, signature = token.split(".")
    payload = _b64(orjson.dumps(claims_for(client["id"], scope="admin")))
    await assert_refused(http, bearer(f"{header}.{payload}.{signature}"), "invalid_token")


async def test_alg_none(http, caller):
    client, _ = caller
    claims = _b64(orjson.dumps(claims_for(client["id"])))
    for alg in ("none", "None", "NONE"):
        header = _b64(orjson.dumps({"alg": alg, "typ": "JWT"}))
        await assert_refused(http, bearer(f"{header}.{claims}."), "invalid_token")


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_hs512_with_the_right_secret(http, caller):
    client, _ = caller
    token = jwt.encode(claims_for(client["id"]), JWT_SECRET, algorithm="HS512")
    await assert_refused(http, bearer(token), "invalid_token")


async def test_rs256_labelled_token(http, caller):
    # Algorithm confusion: an RS256 header over an HMAC made with the shared secret.
    client, _ = caller
    token = hand_made({"alg": "RS256", "typ": "JWT"}, claims_for(client["id"]))
    await assert_refused(http, bearer(token), "invalid_token")


async def test_hand_made_hs256_is_accepted(http, caller):
    """The control for the hand-made tokens above: the same recipe with HS256 works."""
    client, _ = caller
    token = hand_made({"alg": "HS256", "typ": "JWT"}, claims_for(client["id"]))
    assert (await http.get("/v1/me", headers=bearer(token))).status == 200


@pytest.mark.parametrize(
    "changes",
    [
        {"aud": "someone-else"},
        {"aud": ["someone-else"]},
        {"iss": "not-relay"},
        # PyJWT 2.10.0 checked `iss in issuer`: a part of relay's issuer passed for it.
        {"iss": "rel"},
        {"exp": int(time.time()) - 120, "iat": int(time.time()) - 3600},
        {"key_version": "1"},
        {"sub": str(uuid.uuid4())},
        {"sub": "not-a-uuid"},
    ],
    ids=[
        "audience",
        "audience-list",
        "issuer",
        "issuer-part",
        "expired",
        "version-text",
        "unknown",
        "bad-sub",
    ],
)
async def test_wrong_claims(http, caller, changes):
    client, _ = caller
    token = jwt.encode(claims_for(client["id"], **changes), JWT_SECRET, algorithm="HS256")
    await assert_refused(http, bearer(token))


@pytest.mark.parametrize(
    "spelling",
    [
        str.upper,
        lambda id: f"urn:uuid:{id}",
        lambda id: f"{{{id}}}",
        lambda id: id.replace("-", ""),
    ],
    ids=["upper", "urn", "braces", "undashed"],
)
async def test_the_client_id_spelled_otherwise_is_refused(http, caller, spelling):
    # Read as the same client, it was cached under a spelling no revocation named.
    client, _ = caller
    token = jwt.encode(claims_for(spelling(client["id"])), JWT_SECRET, algorithm="HS256")
    await assert_refused(http, bearer(token), "invalid_token")


async def test_expired_has_its_own_code(http, caller):
    client, _ = caller
    claims = claims_for(client["id"], exp=int(time.time()) - 120, iat=int(time.time()) - 3600)
    token = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    await assert_refused(http, bearer(token), "token_expired")


@pytest.mark.parametrize("missing", REQUIRED_CLAIMS)
async def test_missing_claim(http, caller, missing):
    client, _ = caller
    claims = claims_for(client["id"])
    del claims[missing]
    token = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    await assert_refused(http, bearer(token))


@pytest.mark.parametrize(
    "garbage",
    ["garbage", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9", "é" * 20, "x" * 5000],
)
async def test_malformed(http, garbage):
    await assert_refused(http, bearer(garbage))


async def test_old_key_version_after_regenerate(http, caller):
    client, token = caller
    response = await http.post(f"/admin/clients/{client['id']}/regenerate-key", headers=ADMIN)
    assert response.status == 200
    await assert_refused(http, bearer(token), "token_revoked")

    new_token = await exchange(http, (await response.json())["api_key"])
    assert (await http.get("/v1/me", headers=bearer(new_token))).status == 200


async def test_disabled_client(http, caller):
    client, token = caller
    response = await http.patch(
        f"/admin/clients/{client['id']}", json={"status": "disabled"}, headers=ADMIN
    )
    assert response.status == 200
    await assert_refused(http, bearer(token), "token_revoked")


async def test_deleted_client(http, caller):
    client, token = caller
    assert (await http.delete(f"/admin/clients/{client['id']}", headers=ADMIN)).status == 200
    await assert_refused(http, bearer(token), "token_revoked")


async def test_admin_token_is_not_a_bearer_token(http):
    await assert_refused(http, ADMIN)


@pytest.mark.parametrize("path", ["/v1/me", "/admin/clients"])
async def test_a_token_that_is_not_utf8_is_a_401_not_a_500(http, path):
    reader, writer = await asyncio.open_connection(http.host, http.port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n".encode()
        + b"Authorization: Bearer \xff\xfe\r\n\r\n"
    )
    await writer.drain()
    status_line = (await reader.read()).split(b"\r\n", 1)[0]
    writer.close()
    assert status_line.split()[1] == b"401"


@pytest.mark.parametrize("path", ["/v1/me", "/admin/clients", "/metrics"])
@pytest.mark.parametrize("good_first", [True, False])
async def test_two_authorization_headers_are_a_400_whichever_comes_first(
    make_client, make_settings, path, good_first
):
    # RFC 9110: the field holds one value. A proxy reading the other one than relay
    # would disagree with relay about who is calling.
    http = await make_client(make_settings(metrics_token="m" * 40))
    _, token = await client_with_token(http)
    good = {"/v1/me": f"Bearer {token}", "/metrics": "Bearer " + "m" * 40}.get(
        path, ADMIN["Authorization"]
    )
    values = [good, "Bearer junk"] if good_first else ["Bearer junk", good]
    headers = CIMultiDict(("Authorization", value) for value in values)
    response = await http.get(path, headers=headers)
    await assert_error(response, 400, "invalid_request")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="relay", error="invalid_request"'
