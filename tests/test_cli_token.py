"""`relay token issue` gives a client a token relay accepts; `relay token inspect`
says what relay makes of a token, and never prints it."""

from __future__ import annotations

import time

import jwt
import pytest

from relay.config import load_settings
from tests.api_calls import bearer, create_client
from tests.conftest import JWT_SECRET
from tests.relay_process import run_relay
from tests.test_bearer_refusals import claims_for
from tests.test_cli_clients import cli_runner, output
from tests.test_revocation import eventually_status

SERVED = {"RELAY_JWT_SECRET": JWT_SECRET}  # the secret the `http` relay signs with


@pytest.fixture
def token_cli(database_url, tmp_path):
    return cli_runner(database_url, tmp_path / "cli-state", "token", **SERVED)


@pytest.fixture
def clients_cli(database_url, tmp_path):
    return cli_runner(database_url, tmp_path / "cli-state")


async def test_an_issued_token_is_accepted(http, token_cli):
    client = await create_client(http, scopes=["chat"])

    issued = output(token_cli("issue", client["id"]))

    assert issued["token_type"] == "Bearer"
    assert issued["expires_in"] == 3600  # RELAY_JWT_TTL's default
    assert issued["scope"] == "chat"
    response = await http.get("/v1/me", headers=bearer(issued["access_token"]))
    assert response.status == 200
    assert (await response.json())["id"] == client["id"]


async def test_ttl_shortens_the_lifetime(http, token_cli):
    client = await create_client(http)
    issued = output(token_cli("issue", client["id"], "--ttl", "120"))
    assert issued["expires_in"] == 120
    claims = jwt.decode(issued["access_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 120


@pytest.mark.parametrize("ttl", ["0", "-1", "soon", "3601"])
async def test_ttl_outside_its_range_is_refused(http, token_cli, ttl):
    client = await create_client(http)
    done = token_cli("issue", client["id"], "--ttl", ttl, ok=False)
    assert done.returncode == 2
    assert "--ttl" in done.stderr and done.stdout == ""


async def test_a_disabled_or_unknown_client_gets_none(http, token_cli, clients_cli):
    client = await create_client(http)
    clients_cli("disable", client["id"])
    done = token_cli("issue", client["id"], ok=False)
    assert done.returncode == 1
    assert f"relay clients enable {client['id']}" in done.stderr
    assert done.stdout == ""

    unknown = token_cli("issue", "00000000-0000-0000-0000-000000000000", ok=False)
    assert unknown.returncode == 1 and "No client" in unknown.stderr


async def test_inspect_accepts_a_valid_token_and_never_prints_it(http, token_cli):
    client = await create_client(http, scopes=["chat"])
    token = output(token_cli("issue", client["id"]))["access_token"]

    for given in (token, f"Bearer {token}\n"):
        done = token_cli("inspect", stdin=given)
        verdict = output(done)
        assert verdict["accepted"] is True and verdict["code"] is None
        assert verdict["client_id"] == client["id"]
        assert verdict["key_version"] == 1 and verdict["scope"] == "chat"
        signature = token.rsplit(".", 1)[1]
        assert signature not in done.stdout and signature not in done.stderr


async def test_inspect_names_an_expired_tokens_client(http, token_cli):
    client = await create_client(http)
    long_ago = int(time.time()) - 7200
    token = jwt.encode(
        claims_for(client["id"], iat=long_ago, exp=long_ago + 60), JWT_SECRET, algorithm="HS256"
    )
    done = token_cli("inspect", stdin=token, ok=False)
    assert done.returncode == 1
    verdict = output(done)
    assert verdict["accepted"] is False and verdict["code"] == "token_expired"
    assert verdict["client_id"] == client["id"]
    assert verdict["expires_at"].startswith(time.strftime("%Y-", time.gmtime(long_ago)))


async def test_inspect_says_revoked_after_a_new_key(http, token_cli, clients_cli):
    client = await create_client(http)
    token = output(token_cli("issue", client["id"]))["access_token"]
    clients_cli("regenerate-key", client["id"])
    assert await eventually_status(http, token, 401) == 401

    done = token_cli("inspect", stdin=token, ok=False)
    verdict = output(done)
    assert done.returncode == 1
    assert verdict["code"] == "token_revoked" and verdict["client_id"] == client["id"]


@pytest.mark.parametrize("token", ["forged", "not.a.token", "Bearer x.y.z"])
async def test_inspect_refuses_a_forged_token_without_claims(http, token_cli, token):
    if token == "forged":
        client = await create_client(http)
        token = jwt.encode(claims_for(client["id"]), "another-" + JWT_SECRET, algorithm="HS256")
    done = token_cli("inspect", stdin=token, ok=False)
    assert done.returncode == 1
    assert output(done) == {
        "accepted": False,
        "code": "invalid_token",
        "reason": "The access token is invalid.",
    }


def test_inspect_without_a_token_says_how_to_give_one(token_cli):
    for given in ("", "\n", "Bearer "):
        done = token_cli("inspect", stdin=given, ok=False)
        assert done.returncode == 2 and done.stdout == ""
        assert "no token on stdin" in done.stderr


def test_in_development_it_uses_the_secret_a_relay_kept_and_makes_none(database_url, tmp_path):
    state = tmp_path / "state"
    settings = {"RELAY_DATABASE_URL": database_url, "RELAY_STATE_DIR": str(state)}
    done = run_relay("token", "issue", "00000000-0000-0000-0000-000000000000", **settings)
    assert done.returncode == 2 and done.stdout == ""
    assert "RELAY_JWT_SECRET is not set" in done.stderr
    assert not state.exists()  # a secret made up now would match no relay's

    kept = load_settings({"RELAY_STATE_DIR": str(state)}, secrets=("jwt_secret",))  # as serve
    client = cli_runner(database_url, state)("create", "--name", "dev")
    issued = run_relay("token", "issue", output(client)["id"], **settings)
    assert issued.returncode == 0, issued.stderr
    claims = jwt.decode(
        output(issued)["access_token"], kept.jwt_secret, algorithms=["HS256"], audience="relay-api"
    )
    assert claims["sub"] == output(client)["id"]
