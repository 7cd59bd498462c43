"""The private PostgreSQL and Redis servers start, answer, and survive a restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psycopg2
import redis

from relay.devservers import PostgresServer, RedisServer, free_port
from relay.devservers.postgres_server import _grant_search, _postgres_bindir, _postgres_user
from relay.devservers.process import HOST, _ephemeral_ports


def test_postgres_restart_keeps_port_and_data(postgres_tmp_path: Path) -> None:
    with PostgresServer(postgres_tmp_path / "pg", fast=True) as pg:
        with psycopg2.connect(pg.url) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
            cur.execute("CREATE TABLE kept (v text)")
            cur.execute("INSERT INTO kept VALUES ('still here')")
        conn.close()
        port = pg.port

        pg.stop()
        pg.start()

        assert pg.port == port
        with psycopg2.connect(pg.url_for("postgres")) as conn, conn.cursor() as cur:
            cur.execute("SELECT v FROM kept")
            assert cur.fetchall() == [("still here",)]
        conn.close()


def test_a_data_dir_never_initialised_is_built_again(postgres_tmp_path: Path) -> None:
    # What an older relay dev left when its first initdb was cut short before PG_VERSION.
    data_dir = postgres_tmp_path / "pg"
    data_dir.mkdir()
    (data_dir / "global").mkdir()
    with PostgresServer(data_dir, fast=True) as pg:
        with psycopg2.connect(pg.url) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        conn.close()
    assert sorted(path.name for path in postgres_tmp_path.iterdir()) == ["pg", "pg.log"]


def initdb_killed_after_bootstrap(data_dir: Path) -> None:
    """Run initdb in data_dir, as an older relay dev did, and SIGKILL it once template1 is
    bootstrapped, before it makes template0 and postgres: PG_VERSION, the configuration
    files and pg_control are there, the cluster is not."""
    as_postgres = _postgres_user()
    data_dir.mkdir()
    if as_postgres:
        os.chown(data_dir, as_postgres["user"], as_postgres["group"])
        _grant_search(data_dir, as_postgres["user"], as_postgres["extra_groups"])
    argv = [str(_postgres_bindir() / "initdb"), "-D", str(data_dir), "-U", "postgres", "--no-sync"]
    initdb = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, start_new_session=True, cwd="/", **as_postgres
    )
    deadline = time.monotonic() + 60
    while not (data_dir / "base" / "1" / "PG_VERSION").exists():  # written after bootstrap
        assert initdb.poll() is None and time.monotonic() < deadline
        time.sleep(0.001)
    os.killpg(initdb.pid, signal.SIGKILL)
    assert initdb.wait() == -signal.SIGKILL  # cut short, not finished already
    assert (data_dir / "global" / "pg_control").exists()


def test_a_data_dir_initdb_did_not_finish_is_built_again(postgres_tmp_path: Path) -> None:
    data_dir = postgres_tmp_path / "pg"
    initdb_killed_after_bootstrap(data_dir)
    with PostgresServer(data_dir, fast=True) as pg:
        with psycopg2.connect(pg.url) as conn, conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database ORDER BY datname")
            assert cur.fetchall() == [("postgres",), ("template0",), ("template1",)]
        conn.close()
    assert sorted(path.name for path in postgres_tmp_path.iterdir()) == ["pg", "pg.log"]


def test_redis_restart_keeps_port(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        assert client.ping() is True
        port = server.port

        server.stop()
        server.start()

        assert server.port == port
        assert client.ping() is True  # redis-py reconnects on its own
        client.close()


def test_free_ports_are_distinct_and_never_the_kernels_own_pick() -> None:
    # A port from the ephemeral range can go to any outgoing connection between
    # being found free and the server binding it: `relay dev` then failed to listen.
    ports = [free_port() for _ in range(50)]

    assert len(set(ports)) == len(ports)
    assert not any(port in _ephemeral_ports() for port in ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind((HOST, port))
