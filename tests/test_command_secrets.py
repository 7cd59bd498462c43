"""Each command demands only the secrets it uses: relay serve all three, relay token the
JWT secret, relay migrate and relay clients none, so an operator's shell runs them
without the service's credentials."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import pytest

from relay.config import REQUIRED_SECRETS, SECRETS, ConfigError, Settings, load_settings
from tests.api_calls import bearer, exchange
from tests.relay_process import run_relay

STRONG = {
    "RELAY_JWT_SECRET": "j" * 40,
    "RELAY_ADMIN_TOKEN": "a" * 40,
    "RELAY_IDENTITY_HASH_KEY": "i" * 40,
}


def relay(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """`relay …` in production, in a shell holding none of relay's secrets but `settings`."""
    return run_relay(*args, **{"RELAY_ENV": "production", "RELAY_BCRYPT_ROUNDS": "4", **settings})


def test_settings_read_only_the_secrets_a_command_uses(tmp_path: Path, caplog):
    environ = {
        "RELAY_ENV": "production",
        "RELAY_STATE_DIR": str(tmp_path / "state"),
        # Neither read nor checked: a placeholder, and a file only the service could read.
        "RELAY_ADMIN_TOKEN": "change-me",
        "RELAY_JWT_SECRET_FILE": str(tmp_path / "readable-only-by-the-service"),
    }
    with caplog.at_level(logging.WARNING, logger="relay.config"):
        settings = load_settings(environ, secrets=())
    assert caplog.records == []  # RELAY_JWT_SECRET_FILE is read (by serve), not misspelt
    # Held empty: nothing built from these settings signs or checks with them.
    assert all(getattr(settings, name) == "" for name in SECRETS)


@pytest.mark.parametrize("needed", REQUIRED_SECRETS)
def test_a_secret_a_command_uses_is_still_demanded_in_production(tmp_path: Path, needed: str):
    variable = f"RELAY_{needed.upper()}"
    environ = {"RELAY_ENV": "production", "RELAY_STATE_DIR": str(tmp_path)}
    with pytest.raises(ConfigError, match=f"^{variable} is missing; production needs"):
        Settings.from_env(environ, secrets=(needed,))
    settings = Settings.from_env({**environ, variable: STRONG[variable]}, secrets=(needed,))
    assert getattr(settings, needed) == STRONG[variable]
    with pytest.raises(ConfigError, match=f"^{variable} still holds the example's"):
        Settings.from_env({**environ, variable: "change-me-" + "x" * 40}, secrets=(needed,))


def test_development_generates_only_the_secrets_a_command_uses(tmp_path: Path):
    state = tmp_path / "state"
    settings = load_settings({"RELAY_STATE_DIR": str(state)}, secrets=())
    assert settings.jwt_secret == "" and not state.exists()
    settings = load_settings({"RELAY_STATE_DIR": str(state)}, secrets=("jwt_secret",))
    assert sorted(path.name for path in state.iterdir()) == ["jwt_secret"]
    assert settings.jwt_secret and settings.admin_token == ""


def test_serve_demands_every_secret(tmp_path: Path):
    for missing in STRONG:
        given = {name: value for name, value in STRONG.items() if name != missing}
        done = relay("serve", RELAY_STATE_DIR=str(tmp_path / "state"), **given)
        assert done.returncode == 2
        assert done.stderr == (
            f"relay: {missing} is missing; production needs a random secret of 32+ bytes\n"
        )


def test_migrate_needs_no_secret(empty_database_url, tmp_path: Path):
    done = relay(
        "migrate",
        RELAY_DATABASE_URL=empty_database_url,
        RELAY_STATE_DIR=str(tmp_path / "state"),
        RELAY_JWT_SECRET_FILE=str(tmp_path / "readable-only-by-the-service"),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("applied ")


async def test_clients_need_no_secret(http, database_url, tmp_path: Path):
    # API keys are bcrypt hashes in PostgreSQL: no relay secret goes into them.
    settings = {"RELAY_DATABASE_URL": database_url, "RELAY_STATE_DIR": str(tmp_path / "state")}
    created = relay("clients", "create", "--name", "made without secrets", **settings)
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["api_key"]
    # The service, with its own secrets, takes the key.
    token = await exchange(http, key)
    assert (await http.get("/v1/me", headers=bearer(token))).status == 200
    listed = relay("clients", "list", **settings)
    assert listed.returncode == 0, listed.stderr
    assert [client["name"] for client in json.loads(listed.stdout)] == ["made without secrets"]


def test_token_demands_the_jwt_secret_alone(database_url, tmp_path: Path):
    settings = {"RELAY_DATABASE_URL": database_url, "RELAY_STATE_DIR": str(tmp_path / "state")}
    done = relay("token", "inspect", **settings)
    assert done.returncode == 2
    assert done.stderr == (
        "relay: RELAY_JWT_SECRET is missing; production needs a random secret of 32+ bytes\n"
    )
    # Without the admin token or the identity key, it goes on to look the client up.
    unknown = "00000000-0000-0000-0000-000000000000"
    settings["RELAY_JWT_SECRET"] = STRONG["RELAY_JWT_SECRET"]
    given = relay("token", "issue", unknown, **settings)
    assert given.returncode == 1
    assert given.stderr == f"relay token issue: No client '{unknown}'.\n"
