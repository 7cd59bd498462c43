"""What no restart mends exits 2 (the unit's RestartPreventExitStatus=2 then stops
retrying), in one line and without a traceback."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from relay.commands.serve import relay_runner, start_sites
from relay.config import ConfigError, Settings
from relay.proofs.keyfile import KEY_FILE_NAME
from relay.stores.database import connect
from relay.stores.migrations import LOCK_ID, migrate
from tests.conftest import ADMIN_TOKEN, JWT_SECRET
from tests.relay_process import run_relay

VALID_KEY = Ed25519PrivateKey.generate().private_bytes(
    Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="relay-") as name:
        yield Path(name)


def socket_path(directory: Path, size: int) -> str:
    path = str(directory / "s")
    return path + "s" * (size - len(os.fsencode(path)))


def serve(database_url: str, redis_url: str, state_dir: Path, **settings: str):
    return run_relay(
        "serve",
        RELAY_DATABASE_URL=database_url,
        RELAY_REDIS_URL=redis_url,
        RELAY_JWT_SECRET=JWT_SECRET,
        RELAY_ADMIN_TOKEN=ADMIN_TOKEN,
        RELAY_STATE_DIR=str(state_dir),
        **settings,
    )


# Where relay listens


async def test_a_socket_path_of_108_bytes_is_a_setting_error_and_one_of_107_is_not(
    short_dir,
):
    # Python keeps sun_path's last byte for the NUL: 108 bytes raised "[Errno None]
    # AF_UNIX path too long", an exit 1 that systemd restarted every 2 s for ever.
    too_long, longest = socket_path(short_dir, 108), socket_path(short_dir, 107)
    runner = relay_runner(web.Application())
    await runner.setup()
    try:
        with pytest.raises(ConfigError) as refused:
            await start_sites(runner, Settings(unix_socket=too_long))
        sites = await start_sites(runner, Settings(unix_socket=longest))
    finally:
        await runner.cleanup()
    assert str(refused.value) == (
        f"RELAY_UNIX_SOCKET: cannot listen on {too_long}: the path is 108 bytes long;"
        " a Unix socket's may be at most 108, the NUL ending it included"
    )
    assert [site.name for site in sites] == [f"http://unix:{longest}:"]


def test_relay_serve_exits_2_on_a_socket_path_of_108_bytes(
    database_url, redis_url, tmp_path, short_dir
):
    path = socket_path(short_dir, 108)
    done = serve(database_url, redis_url, tmp_path / "state", RELAY_UNIX_SOCKET=path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"relay serve: RELAY_UNIX_SOCKET: cannot listen on {path}: the path is 108 bytes"
        " long; a Unix socket's may be at most 108, the NUL ending it included"
    )
    assert "Traceback" not in done.stderr


# The receipt-signing key file (RELAY_ATTESTATION=none)


def key_file_holding(state_dir: Path, content: bytes, mode: int) -> Path:
    state_dir.mkdir(mode=0o700)
    key_file = state_dir / KEY_FILE_NAME
    key_file.write_bytes(content)
    key_file.chmod(mode)
    return key_file


@pytest.mark.parametrize(
    ("content", "mode", "why"),
    [
        (VALID_KEY, 0o644, "has mode 0644; it must be 0600"),
        (b"-----BEGIN GARBAGE-----\n", 0o600, "does not hold an unencrypted Ed25519 PEM key"),
        (b"", 0o600, "does not hold an unencrypted Ed25519 PEM key"),
    ],
    ids=["readable by others", "garbage", "empty"],
)
def test_relay_serve_exits_2_on_a_key_file_it_cannot_use(
    database_url, redis_url, tmp_path, content, mode, why
):
    # Each was an exit 1, restarted every 2 s for ever: no restart reads the file otherwise.
    key_file = key_file_holding(tmp_path / "state", content, mode)
    done = serve(database_url, redis_url, tmp_path / "state")
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"relay serve: signing key file {key_file} {why}")
    assert "Traceback" not in done.stderr


# Migrations


EDITED = (
    "001_create_clients.sql was edited after it was applied;"
    " add a new migration instead of changing an applied one"
)


async def edit_an_applied_migration(database_url: str) -> None:
    await migrate(database_url)
    conn = await connect(database_url, timeout=10)
    try:
        async with conn.cursor() as cur:
            await cur.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
    finally:
        await conn.close()


async def test_relay_migrate_exits_2_on_an_applied_migration_edited_since(
    empty_database_url, tmp_path
):
    # An exit 1 that systemd restarted every 2 s for ever: the file or the ledger must
    # be mended first. (A migration that failed, or a lock held too long, stays 1.)
    await edit_an_applied_migration(empty_database_url)
    done = run_relay(
        "migrate", RELAY_DATABASE_URL=empty_database_url, RELAY_STATE_DIR=str(tmp_path / "s")
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"relay migrate: {EDITED}\n"


async def test_relay_clients_exits_2_on_an_applied_migration_edited_since(
    empty_database_url, tmp_path
):
    # `relay clients` brings the schema up to date first: the same refusal, the same status.
    await edit_an_applied_migration(empty_database_url)
    done = run_relay(
        "clients",
        "list",
        RELAY_DATABASE_URL=empty_database_url,
        RELAY_STATE_DIR=str(tmp_path / "s"),
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"relay clients list: {EDITED}\n"
    assert done.stdout == ""


# Ctrl-C


async def test_ctrl_c_during_relay_migrate_exits_130_in_one_line(database_url, tmp_path):
    holder = await connect(database_url, timeout=10)
    try:
        async with holder.cursor() as cur:
            await cur.execute("SELECT pg_advisory_lock(%s)", (LOCK_ID,))
            env = {key: value for key, value in os.environ.items() if not key.startswith("RELAY_")}
            env.update(RELAY_DATABASE_URL=database_url, RELAY_STATE_DIR=str(tmp_path / "state"))
            migrating = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "relay",
                "migrate",
                env=env,
                stderr=asyncio.subprocess.PIPE,
            )
            assert migrating.stderr is not None
            async with asyncio.timeout(30):  # until it waits for the lock
                while b"waiting for another instance" not in await migrating.stderr.readline():
                    pass
            migrating.send_signal(signal.SIGINT)
            async with asyncio.timeout(30):
                rest = (await migrating.stderr.read()).decode()
                code = await migrating.wait()
    finally:
        await holder.close()
    # Python's own ending: a traceback through asyncio and aiopg, and death by SIGINT.
    assert code == 130, rest
    assert rest == "relay migrate: interrupted\n"
