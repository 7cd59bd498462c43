"""Migrations apply each file once, refuse an edited applied file, and tolerate a race."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg2.extensions
import pytest

from relay.stores.database import connect, fetch_all
from relay.stores.migrations import (
    MigrationError,
    load_migrations,
    migrate,
    migrations_dir,
    pending,
)

REPO = Path(__file__).resolve().parents[1]


async def recorded(dsn: str) -> list[dict]:
    conn = await connect(dsn, timeout=10)
    try:
        async with conn.cursor() as cur:
            return await fetch_all(
                cur, "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
            )
    finally:
        conn.close()


async def table_names(dsn: str) -> set[str]:
    conn = await connect(dsn, timeout=10)
    try:
        async with conn.cursor() as cur:
            rows = await fetch_all(
                cur, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
    finally:
        conn.close()
    return {row["tablename"] for row in rows}


async def test_applies_every_file_once_and_then_nothing(empty_database_url):
    names = [migration.name for migration in load_migrations()]
    assert names and names[0] == "001_create_clients.sql"

    assert await migrate(empty_database_url) == names
    assert await migrate(empty_database_url) == []

    rows = await recorded(empty_database_url)
    assert [row["name"] for row in rows] == names
    assert {"clients", "schema_migrations"} <= await table_names(empty_database_url)


async def test_pending_names_what_the_database_has_not_had(empty_database_url, tmp_path):
    names = [migration.name for migration in load_migrations()]
    assert await pending(empty_database_url) == names  # not even the ledger yet
    await migrate(empty_database_url)
    assert await pending(empty_database_url) == []
    newer = tmp_path / "sql"
    shutil.copytree(migrations_dir(), newer)
    (newer / "999_add_later.sql").write_text("CREATE TABLE later (id int);")
    assert await pending(empty_database_url, newer) == ["999_add_later.sql"]


async def test_a_role_that_cannot_create_the_ledger_gets_one_line(empty_database_url):
    conn = await connect(empty_database_url, timeout=10)
    try:
        async with conn.cursor() as cur:
            await cur.execute("DROP ROLE IF EXISTS relay_reader")
            await cur.execute("CREATE ROLE relay_reader LOGIN")
            await cur.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    finally:
        conn.close()
    params = psycopg2.extensions.parse_dsn(empty_database_url)
    reader = psycopg2.extensions.make_dsn(**{**params, "user": "relay_reader"})
    try:
        with pytest.raises(
            MigrationError, match=r"cannot keep the migrations' ledger: .*perm"
        ) as e:
            await migrate(reader)
        assert e.value.must_mend  # a grant, not a restart, mends it
    finally:
        conn = await connect(empty_database_url, timeout=10)
        try:
            async with conn.cursor() as cur:
                await cur.execute("DROP ROLE relay_reader")  # roles outlive the database
        finally:
            conn.close()


async def test_an_edited_applied_file_is_refused(empty_database_url, tmp_path):
    sql = tmp_path / "sql"
    shutil.copytree(migrations_dir(), sql)
    await migrate(empty_database_url, sql)

    first = sorted(sql.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- an innocent-looking edit\n")

    with pytest.raises(MigrationError, match=first.name) as refused:
        await migrate(empty_database_url, sql)
    assert refused.value.must_mend


# Every released migration, as released: databases have applied these texts, and an
# edit (a comment too) would make every one of them refuse to start. Add a new file.
RELEASED = {
    1: "62f3d74037adb2f014d067bc7e445d361894a3cbda3b335fd6bd9763944cee2d",
    2: "431ada4174b09d80435c2b1766fa8c649a6a710af80a02a07b4c1d21790a59f3",
    3: "f79812725384f67997fbbdfa446a8c4b445935ee030aed158da9ed3375de4c9f",
    4: "d38512f3556b3edf28c2820d379f87df7e730e78661c03ca075b55fdb1b3ed30",
    5: "71f24820af7de2b808a9463b6773fef5eb420d6df26668e0469e94e9da61c2c0",
    6: "8d99227f0b4d36792be0b574051ae0ad7adfb344574526118392c3c5d60c3891",
    7: "bd2f2fe56ddbafd2494c9ea1d212a8cb5f21a4a250d634de190e4be265fe4eb9",
    8: "d4d12d93cb76d0e048a2c14e7aae2585251f06cac31d019acc3db4171e56a2fc",
    9: "0d0f92f40578555167c7e29b1455138a4cc1ea097331df4210e7f0973317e92d",
    10: "83142ebed8d24d18248702e519211393006e0784c95d19d0c6b64942a83372e4",
    11: "8a7b1bde7f82b0b1080585117836c6eb3460f464c30129f78da7dec22f9a15ac",
    12: "2190b4dc45a84d713e65d714e86569a379789b816fabd55102b6ed2a32f0ab1c",
}


def test_released_migrations_are_never_edited():
    found = {migration.version: migration.checksum for migration in load_migrations()}
    assert {version: found.get(version) for version in RELEASED} == RELEASED


async def test_a_database_that_applied_004_before_its_comment_was_corrected_starts(
    empty_database_url, tmp_path
):
    sql = tmp_path / "sql"
    shutil.copytree(migrations_dir(), sql)
    fourth = sql / "004_drop_receipts_sha256_unique.sql"
    fourth.write_text(fourth.read_text().replace("about a sixth", "about a third"))
    await migrate(empty_database_url, sql)  # the text as it was released first

    assert await migrate(empty_database_url) == []  # today's text


async def test_a_new_file_is_applied_after_the_others(empty_database_url, tmp_path):
    sql = tmp_path / "sql"
    shutil.copytree(migrations_dir(), sql)
    await migrate(empty_database_url, sql)

    (sql / "999_create_extra.sql").write_text("CREATE TABLE extra (id int);")
    assert await migrate(empty_database_url, sql) == ["999_create_extra.sql"]
    assert "extra" in await table_names(empty_database_url)


async def test_a_failing_file_rolls_back_alone(empty_database_url, tmp_path):
    sql = tmp_path / "sql"
    shutil.copytree(migrations_dir(), sql)
    (sql / "998_create_half.sql").write_text("CREATE TABLE half (id int); SELECT 1/0;")

    with pytest.raises(
        MigrationError, match=r"998_create_half\.sql failed: .*division by zero"
    ) as failed:
        await migrate(empty_database_url, sql)
    assert not failed.value.must_mend  # it may have met a lock: a later try may pass

    names = [row["name"] for row in await recorded(empty_database_url)]
    assert "998_create_half.sql" not in names
    assert names == [migration.name for migration in load_migrations()]
    assert "half" not in await table_names(empty_database_url)


async def test_a_migration_may_outlast_the_connect_timeout_but_not_its_own(
    empty_database_url, tmp_path, monkeypatch
):
    sql = tmp_path / "sql"
    shutil.copytree(migrations_dir(), sql)
    (sql / "997_create_slowly.sql").write_text("SELECT pg_sleep(1.5);")
    # The connection's own timeout no longer bounds each statement.
    assert "997_create_slowly.sql" in await migrate(empty_database_url, sql, timeout=1)
    (sql / "998_create_slower.sql").write_text("SELECT pg_sleep(5);")
    monkeypatch.setattr("relay.stores.migrations._STATEMENT_SECONDS", 0.5)
    with pytest.raises(MigrationError, match=r"998_create_slower\.sql ran longer than"):
        await migrate(empty_database_url, sql)


async def test_waiting_too_long_for_another_instance_is_a_clear_error(
    empty_database_url, monkeypatch
):
    monkeypatch.setattr("relay.stores.migrations._LOCK_WAIT_SECONDS", 0.5)
    holder = await connect(empty_database_url, timeout=10)
    try:
        async with holder.cursor() as cur:
            await cur.execute("SELECT pg_advisory_lock(%s)", (0x72656C6179,))
            with pytest.raises(MigrationError, match="migration lock") as waited:
                await migrate(empty_database_url)
            assert not waited.value.must_mend
    finally:
        await holder.close()


async def test_waiting_for_another_instance_is_logged_once_then_the_lock_taken(
    empty_database_url, caplog
):
    # relay serve and relay migrate waited (up to 10 min) without a word in the log.
    caplog.set_level(logging.INFO, logger="relay.stores.migrations")

    def said() -> list[str]:
        return [
            record.getMessage()
            for record in caplog.records
            if record.name == "relay.stores.migrations" and "lock" in record.getMessage()
        ]

    await migrate(empty_database_url)
    assert said() == []  # the lock free at once: nothing to say

    holder = await connect(empty_database_url, timeout=10)
    try:
        async with holder.cursor() as cur:
            await cur.execute("SELECT pg_advisory_lock(%s)", (0x72656C6179,))
            waiting = asyncio.create_task(migrate(empty_database_url))
            for _ in range(500):  # until it waits
                if said():
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)
            assert not waiting.done()
            assert said() == [
                "waiting for another instance's migrations (the migration lock is held)"
            ]
            await cur.execute("SELECT pg_advisory_unlock(%s)", (0x72656C6179,))
            assert await waiting == []
    finally:
        await holder.close()
    assert said()[1:] == ["migration lock taken"]
    taken = [record for record in caplog.records if record.getMessage() == "migration lock taken"]
    assert taken[0].waited_s >= 0.2


@pytest.mark.parametrize("name", ["1_short.sql", "002-dashes.sql", "003_Capital.sql"])
def test_badly_named_files_are_refused(tmp_path, name):
    (tmp_path / name).write_text("SELECT 1;")
    with pytest.raises(MigrationError) as refused:
        load_migrations(tmp_path)
    assert refused.value.must_mend


def test_two_files_with_one_number_are_refused(tmp_path):
    (tmp_path / "001_create_a.sql").write_text("SELECT 1;")
    (tmp_path / "001_create_b.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError) as refused:
        load_migrations(tmp_path)
    assert refused.value.must_mend


async def test_concurrent_migrations_apply_once(empty_database_url):
    names = [migration.name for migration in load_migrations()]

    results = await asyncio.gather(*(migrate(empty_database_url) for _ in range(4)))

    assert sorted(result for result in results if result) == [names]
    assert sum(1 for result in results if not result) == 3
    assert [row["name"] for row in await recorded(empty_database_url)] == names


def test_relay_migrate_command(empty_database_url, tmp_path):
    env = {
        **os.environ,
        "RELAY_DATABASE_URL": empty_database_url,
        "RELAY_STATE_DIR": str(tmp_path / "state"),
    }
    command = [sys.executable, "-m", "relay", "migrate"]

    first = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("applied ")
    assert "001_create_clients.sql" in first.stdout

    again = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "applied 0 migration(s)"


def test_relay_migrate_command_without_a_database(tmp_path):
    env = {
        **os.environ,
        "RELAY_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nowhere",
        "RELAY_STATE_DIR": str(tmp_path / "state"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "relay", "migrate"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    # One line, with what the driver found: the operator learns why, not just that.
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("relay migrate: The database is unavailable")
    assert line.endswith("(Connection refused)")
    assert "Traceback" not in done.stderr
