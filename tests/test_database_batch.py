"""`Batch`: a transaction in as few round trips as it can take, all of it or none of it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from relay.stores.database import Database, UniqueViolation, prepared

INSERT = prepared("test_batch_insert", "INSERT INTO batch_probe VALUES (%s::integer)")


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    # One connection: what a failed batch leaves behind is what the next user gets.
    database = await Database.open(database_url, size=1, timeout=10)
    async with database.cursor() as cur:
        await cur.execute("CREATE TABLE batch_probe (n integer PRIMARY KEY)")
    yield database
    await database.close()


async def count(db: Database) -> int:
    async with db.cursor() as cur:
        await cur.execute("SELECT count(*) FROM batch_probe")
        row = await cur.fetchone()
    return int(row[0])


async def test_deferred_statements_go_together_in_order_as_one_transaction(db):
    async with db.batch() as tx:
        tx.defer("INSERT INTO batch_probe VALUES (%s)", (1,))
        tx.defer("UPDATE batch_probe SET n = n + 1")  # sees the insert before it
    async with db.cursor() as cur:
        await cur.execute("SELECT n FROM batch_probe")
        assert await cur.fetchall() == [(2,)]


async def test_a_one_round_trip_batch_that_fails_leaves_nothing(db):
    rolled_back = []
    with pytest.raises(UniqueViolation):
        async with db.batch() as tx:
            tx.on_rollback(lambda: rolled_back.append(True))
            tx.defer("INSERT INTO batch_probe VALUES (1)")
            tx.defer("INSERT INTO batch_probe VALUES (1)")
    assert await count(db) == 0
    assert rolled_back == [True]


async def test_a_batch_failing_at_commit_after_a_round_trip_is_rolled_back(db):
    with pytest.raises(UniqueViolation):
        async with db.batch() as tx:
            await tx.execute("INSERT INTO batch_probe VALUES (1)")  # the transaction is open
            tx.defer("INSERT INTO batch_probe VALUES (1)")  # fails with the COMMIT
    # Same connection: it must not be left inside the aborted transaction.
    assert await count(db) == 0
    async with db.batch() as tx:
        tx.defer("INSERT INTO batch_probe VALUES (3)")
    assert await count(db) == 1


async def test_execute_sends_the_deferred_statements_first(db):
    async with db.batch() as tx:
        tx.defer("INSERT INTO batch_probe VALUES (5)")
        await tx.execute("SELECT n FROM batch_probe")
        assert await tx.fetchall() == [(5,)]


async def runs_of(db: Database, statement_name: str) -> int | None:
    """How often the pool's one connection ran its prepared statement (None: not prepared)."""
    async with db.cursor() as cur:
        await cur.execute(
            "SELECT generic_plans + custom_plans FROM pg_prepared_statements WHERE name = %s",
            (statement_name,),
        )
        row = await cur.fetchone()
    return None if row is None else int(row[0])


async def test_a_prepared_statement_is_prepared_once_then_only_executed(db):
    for n in (1, 2, 3):
        async with db.batch() as tx:
            tx.defer(INSERT, (n,))
    assert await count(db) == 3
    assert await runs_of(db, INSERT.name) == 3


async def test_a_prepared_statement_that_failed_before_its_prepare_ran_is_prepared_again(db):
    """The batch's first statement fails: its PREPARE, after it, never ran."""
    with pytest.raises(UniqueViolation):
        async with db.batch() as tx:
            tx.defer("INSERT INTO batch_probe VALUES (1), (1)")
            tx.defer(INSERT, (2,))
    assert await runs_of(db, INSERT.name) is None
    async with db.batch() as tx:
        tx.defer(INSERT, (3,))
    assert await count(db) == 1


async def test_a_prepared_statement_whose_batch_failed_after_its_prepare_is_prepared_afresh(db):
    """PREPARE outlives the rollback, but the connection the batch failed on is not
    pooled again (aiopg keeps the error with it): the next is a new one, where the
    statement is prepared anew."""
    with pytest.raises(UniqueViolation):
        async with db.batch() as tx:
            tx.defer(INSERT, (1,))
            tx.defer(INSERT, (1,))
    assert await runs_of(db, INSERT.name) is None
    async with db.batch() as tx:
        tx.defer(INSERT, (3,))
    assert await count(db) == 1
    assert await runs_of(db, INSERT.name) == 1  # prepared anew


def test_a_prepared_statement_names_the_type_of_each_value():
    with pytest.raises(ValueError):
        prepared("test_batch_untyped", "INSERT INTO batch_probe VALUES (%s)")
    with pytest.raises(ValueError):
        prepared("test_batch_named", "INSERT INTO batch_probe VALUES (%(n)s::integer)")
    modulo = prepared("test_batch_modulo", "SELECT n %% 2 FROM batch_probe WHERE n = %s::integer")
    assert modulo.prepare.endswith("AS SELECT n % 2 FROM batch_probe WHERE n = $1::integer")
    assert modulo.execute == "EXECUTE relay_test_batch_modulo(%s::integer)"
