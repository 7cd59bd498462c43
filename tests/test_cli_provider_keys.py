"""Only the commands that forward to a provider demand its key's variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.test_cli_clients import KEYED_UPSTREAMS, REPO, SERVICE_ONLY_KEY


def relay(command: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RELAY_UPSTREAMS": KEYED_UPSTREAMS, **settings}
    env.pop(SERVICE_ONLY_KEY, None)
    return subprocess.run(
        [sys.executable, "-m", "relay", command],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_refuses_to_start_naming_the_missing_variable(database_url, tmp_path: Path):
    done = relay(
        "serve",
        RELAY_DATABASE_URL=database_url,
        RELAY_STATE_DIR=str(tmp_path / "state"),
        RELAY_PORT="0",
    )
    assert done.returncode == 2
    assert done.stderr == (
        "relay: RELAY_UPSTREAMS: upstream 'provider':"
        f" api_key_env '{SERVICE_ONLY_KEY}' is not set, nor {SERVICE_ONLY_KEY}_FILE\n"
    )


def test_migrate_needs_no_provider_key(empty_database_url, tmp_path: Path):
    done = relay(
        "migrate", RELAY_DATABASE_URL=empty_database_url, RELAY_STATE_DIR=str(tmp_path / "state")
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("applied ")
