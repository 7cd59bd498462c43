"""`relay clients …` manages the same clients as the admin API, from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.api_calls import assert_error, bearer, exchange
from tests.test_revocation import eventually_status

REPO = Path(__file__).resolve().parents[1]


def cli_runner(database_url: str, state: Path, command: str = "clients", **settings: str) -> Any:
    """`run(*args, ok=True, stdin="")`: `relay <command> *args` against this database."""
    env = {
        **os.environ,
        "RELAY_DATABASE_URL": database_url,
        "RELAY_STATE_DIR": str(state),
        "RELAY_BCRYPT_ROUNDS": "4",
        **settings,
    }

    def run(*args: str, ok: bool = True, stdin: str = "") -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "relay", command, *args],
            input=stdin,
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if ok:
            assert done.returncode == 0, done.stderr
        return done

    return run


@pytest.fixture
def relay_cli(database_url, tmp_path):
    return cli_runner(database_url, tmp_path / "cli-state")


def output(done: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(done.stdout)


async def test_create_list_disable_enable(http, relay_cli):
    created = output(relay_cli("create", "--name", "cli app", "--scope", "chat"))
    assert created["name"] == "cli app"
    assert created["scopes"] == ["chat"]
    assert created["api_key"].startswith("rk_")

    listed = relay_cli("list")
    assert created["api_key"] not in listed.stdout
    assert created["api_key"].split("_")[2] not in listed.stdout
    assert [client["id"] for client in output(listed)] == [created["id"]]

    token = await exchange(http, created["api_key"])
    assert (await http.get("/v1/me", headers=bearer(token))).status == 200

    disabled = output(relay_cli("disable", created["id"]))
    assert disabled["status"] == "disabled"
    assert "api_key" not in disabled
    response = await http.post("/auth/token", json={"api_key": created["api_key"]})
    await assert_error(response, 401, "invalid_api_key")
    # Another process made the change: relay hears of it by NOTIFY, a moment later.
    assert await eventually_status(http, token, 401) == 401

    assert output(relay_cli("enable", created["id"]))["status"] == "active"
    assert await eventually_status(http, token, 200) == 200


async def test_regenerate_key(http, relay_cli):
    created = output(relay_cli("create", "--name", "rotating"))
    old_token = await exchange(http, created["api_key"])

    renewed = output(relay_cli("regenerate-key", created["id"]))

    assert renewed["id"] == created["id"]
    assert renewed["api_key"].startswith("rk_") and renewed["api_key"] != created["api_key"]
    assert renewed["key_version"] == 2
    response = await http.post("/auth/token", json={"api_key": created["api_key"]})
    await assert_error(response, 401, "invalid_api_key")
    assert await eventually_status(http, old_token, 401) == 401
    new_token = await exchange(http, renewed["api_key"])
    assert (await http.get("/v1/me", headers=bearer(new_token))).status == 200


def test_create_without_history(relay_cli):
    created = output(relay_cli("create", "--name", "private", "--no-history"))
    assert created["store_history"] is False


@pytest.mark.parametrize("action", ["disable", "enable", "regenerate-key", "delete"])
def test_unknown_client_is_an_error(relay_cli, action):
    done = relay_cli(action, str(uuid.uuid4()), ok=False)
    assert done.returncode == 1
    assert "No client" in done.stderr
    assert done.stdout == ""


def test_invalid_name_is_an_error(relay_cli):
    done = relay_cli("create", "--name", "   ", ok=False)
    assert done.returncode == 1
    assert "name" in done.stderr
    assert "Traceback" not in done.stderr


def test_delete(relay_cli):
    created = output(relay_cli("create", "--name", "short-lived"))
    assert output(relay_cli("delete", created["id"])) == {"id": created["id"], "deleted": True}
    assert output(relay_cli("list")) == []


def test_list_pages_through_every_client(relay_cli):
    ids = [output(relay_cli("create", "--name", f"c{n}"))["id"] for n in range(3)]
    first = relay_cli("list", "--limit", "2")
    assert [client["id"] for client in output(first)] == ids[:2]
    cursor = first.stderr.strip().removeprefix("more clients follow: --after ")
    assert cursor != first.stderr.strip()
    rest = relay_cli("list", "--limit", "2", "--after", cursor)
    assert [client["id"] for client in output(rest)] == ids[2:]
    assert rest.stderr == ""
    for bad in ("0", "-5", "501", "many"):
        refused = relay_cli("list", "--limit", bad, ok=False)
        assert refused.returncode == 2 and "--limit" in refused.stderr


def test_honours_run_migrations(empty_database_url, tmp_path):
    # During a rolling upgrade the new version's CLI must not migrate under old instances.
    held = cli_runner(empty_database_url, tmp_path / "state", RELAY_RUN_MIGRATIONS="false")
    done = held("list", ok=False)
    assert done.returncode == 1
    assert "lacks" in done.stderr and "relay migrate" in done.stderr
    assert "Traceback" not in done.stderr

    # Left at its default, the same command brings the schema up to date first.
    assert output(cli_runner(empty_database_url, tmp_path / "state")("list")) == []
    assert output(held("list")) == []


# The provider key kept only in the service's environment (a root-only
# EnvironmentFile, say), so not in the operator's shell.
SERVICE_ONLY_KEY = "PROVIDER_KEY_ONLY_THE_SERVICE_HAS"
KEYED_UPSTREAMS = json.dumps(
    [
        {
            "name": "provider",
            "base_url": "https://provider.example/v1",
            "api_key_env": SERVICE_ONLY_KEY,
            "models": {"m": "m"},
        }
    ]
)


def test_needs_no_provider_key(database_url, tmp_path):
    assert SERVICE_ONLY_KEY not in os.environ
    run = cli_runner(database_url, tmp_path / "state", RELAY_UPSTREAMS=KEYED_UPSTREAMS)
    created = output(run("create", "--name", "made without the provider key"))
    assert [client["id"] for client in output(run("list"))] == [created["id"]]
