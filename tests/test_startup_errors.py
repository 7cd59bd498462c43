"""A start-up that fails because of a setting says which, in one line, and exits 2 (the
unit's RestartPreventExitStatus=2: no restart loop); an outage exits 1 and is retried."""

from __future__ import annotations

import errno
import multiprocessing
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import psycopg2.extensions
import pytest
from aiohttp import web

from relay.app import create_app
from relay.commands.serve import relay_runner, start_sites
from relay.config import ConfigError, Settings
from relay.devservers import free_port
from relay.stores.database_admin import with_database
from tests.relay_process import RelayProcess, run_relay

PASSWORD = "hunter2-never-shown"
# Spelt so that tests/test_config.py, which finds every RELAY_* name in the code, does
# not take it for a variable relay reads.
MISSPELT = "_".join(("RELAY", "MISSPELT", "SETTING"))


relay = run_relay


@pytest.fixture
async def runner() -> AsyncIterator[web.AppRunner]:
    runner = relay_runner(web.Application())
    await runner.setup()
    yield runner
    await runner.cleanup()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="relay-") as name:
        yield Path(name)


# Where relay listens


async def test_a_host_that_is_no_name_is_a_setting_error(runner):
    with pytest.raises(ConfigError) as refused:
        await start_sites(runner, Settings(host="not a host", port=free_port()))
    assert str(refused.value).startswith("RELAY_HOST: cannot listen on not a host:")
    assert isinstance(refused.value, OSError)  # what `relay dev` catches


async def test_a_socket_path_that_is_a_directory_is_a_setting_error(runner, short_dir):
    with pytest.raises(ConfigError) as refused:
        await start_sites(runner, Settings(unix_socket=str(short_dir)))
    assert str(refused.value) == (
        f"RELAY_UNIX_SOCKET: cannot listen on {short_dir}: it is a directory"
        " (relay replaces only a socket left behind)"
    )
    assert short_dir.is_dir()


async def test_a_socket_path_too_long_for_a_socket_is_a_setting_error(runner, short_dir):
    path = short_dir / ("s" * 120)
    with pytest.raises(ConfigError) as refused:
        await start_sites(runner, Settings(unix_socket=str(path)))
    assert "a Unix socket's may be at most 108" in str(refused.value)
    assert "None" not in str(refused.value)


def _listen_unprivileged(port: int, answer: multiprocessing.SimpleQueue[str]) -> None:
    import asyncio

    if os.geteuid() == 0:  # as the relay user of the unit: no CAP_NET_BIND_SERVICE
        os.setgid(65534)
        os.setuid(65534)

    async def listen() -> str:
        runner = relay_runner(web.Application())
        await runner.setup()
        try:
            await start_sites(runner, Settings(port=port))
        except ConfigError as exc:
            return f"ConfigError {exc}"
        except OSError as exc:
            return f"OSError {exc}"
        finally:
            await runner.cleanup()
        return "listening"

    answer.put(asyncio.run(listen()))


def test_a_privileged_port_without_the_capability_is_a_setting_error():
    unprivileged = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    if unprivileged <= 80:
        pytest.skip("any user may bind port 80 here")
    context = multiprocessing.get_context("fork")
    answer = context.SimpleQueue()
    child = context.Process(target=_listen_unprivileged, args=(80, answer))
    child.start()
    child.join(30)
    assert answer.get() == (
        "ConfigError RELAY_PORT: cannot listen on 127.0.0.1:80: permission denied (a port"
        " below 1024 needs CAP_NET_BIND_SERVICE, which relay's unit does not grant: listen"
        " on a port from 1024 up, behind nginx)"
    )


async def test_relay_serve_exits_2_on_a_host_that_is_no_name(database_url, redis_url, tmp_path):
    process = RelayProcess(database_url, redis_url, tmp_path, {"RELAY_HOST": "not a host"})
    process.start()
    code = await process.wait(60)
    logs = process.logs()
    assert code == 2, logs
    assert "relay serve: RELAY_HOST: cannot listen on not a host:" in logs
    assert "Traceback" not in logs


# Redis


async def start(settings: Settings) -> None:
    runner = relay_runner(create_app(settings))
    try:
        await runner.setup()
    finally:
        await runner.cleanup()


def redis_with(redis_url: str, *, user: str = "", password: str = "", path: str = "/0") -> str:
    host_and_port = redis_url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    credentials = f"{user}:{password}@" if user or password else ""
    return f"redis://{credentials}{host_and_port}{path}"


async def test_credentials_redis_refuses_stop_start_up(make_settings, redis_url):
    url = redis_with(redis_url, user="relay-nobody", password=PASSWORD)
    with pytest.raises(ConfigError) as refused:
        await start(make_settings(redis_url=url))
    message = str(refused.value)
    assert message.startswith("RELAY_REDIS_URL: Redis at ")
    assert "refuses relay's credentials" in message and PASSWORD not in message


async def test_a_database_number_redis_does_not_have_stops_start_up(make_settings, redis_url):
    with pytest.raises(ConfigError) as refused:
        await start(make_settings(redis_url=redis_with(redis_url, path="/99")))
    assert "refuses relay's connection: DB index is out of range" in str(refused.value)


def test_a_redis_url_path_that_is_no_number_is_refused_as_settings_are_read(redis_url):
    # By every command, as it reads its settings; the URL (a password) never quoted.
    url = redis_with(redis_url, password=PASSWORD, path="/abc")
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"RELAY_REDIS_URL": url})
    assert str(refused.value) == (
        "RELAY_REDIS_URL is invalid: its path must be a database number, such as /0"
    )


async def test_a_server_that_does_not_speak_redis_stops_start_up(make_settings, aiohttp_server):
    # Another service's port (or a TLS Redis reached with redis://): no restart mends it.
    server = await aiohttp_server(web.Application())
    with pytest.raises(ConfigError) as refused:
        await start(make_settings(redis_url=f"redis://127.0.0.1:{server.port}/0"))
    assert str(refused.value) == (
        f"RELAY_REDIS_URL: the server at 127.0.0.1:{server.port} does not speak Redis's"
        " protocol (a TLS Redis is reached with rediss://)"
    )


async def test_relay_serve_exits_2_when_redis_refuses_its_password(
    database_url, redis_url, tmp_path
):
    url = redis_with(redis_url, user="relay-nobody", password=PASSWORD)
    process = RelayProcess(database_url, redis_url, tmp_path, {"RELAY_REDIS_URL": url})
    process.start()
    code = await process.wait(60)
    logs = process.logs()
    assert code == 2, logs
    assert "relay serve: RELAY_REDIS_URL: Redis at " in logs
    assert PASSWORD not in logs and "Traceback" not in logs


# PostgreSQL


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel completes them) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest.mark.parametrize("command", [("migrate",), ("clients", "list")])
def test_a_database_that_never_answers_times_out_as_configured(silent_server, tmp_path, command):
    done = relay(
        *command,
        timeout=20,  # relay's own default wait was 30 s, whatever RELAY_DATABASE_TIMEOUT said
        RELAY_DATABASE_URL=f"postgresql://relay:{PASSWORD}@127.0.0.1:{silent_server}/relay",
        RELAY_DATABASE_TIMEOUT="1",
        RELAY_STATE_DIR=str(tmp_path / "state"),
    )
    assert done.returncode == 1, done.stderr
    assert f"timed out after 1 s connecting to 127.0.0.1:{silent_server}" in done.stderr
    assert PASSWORD not in done.stderr and "Traceback" not in done.stderr


async def test_relay_serve_waits_for_the_database_as_configured(silent_server, redis_url, tmp_path):
    url = f"postgresql://relay:{PASSWORD}@127.0.0.1:{silent_server}/relay"
    process = RelayProcess(url, redis_url, tmp_path, {"RELAY_DATABASE_TIMEOUT": "1"})
    process.start()
    code = await process.wait(20)
    logs = process.logs()
    assert code == 1, logs
    assert f"timed out after 1 s connecting to 127.0.0.1:{silent_server}" in logs
    assert PASSWORD not in logs


@pytest.mark.parametrize("command", [("migrate",), ("clients", "list")])
@pytest.mark.parametrize("wrong", ["database", "role"])
def test_a_database_or_role_that_does_not_exist_is_a_setting_error_for_every_command(
    postgres_url, tmp_path, command, wrong
):
    url = (
        with_database(postgres_url, "relay_no_such_db")
        if wrong == "database"
        else psycopg2.extensions.make_dsn(postgres_url, user="relay_no_such_role")
    )
    done = relay(*command, RELAY_DATABASE_URL=url, RELAY_STATE_DIR=str(tmp_path / "state"))
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"relay {' '.join(command)}: RELAY_DATABASE_URL: ")
    assert "does not exist" in line and "try again" not in line


# Logging


def migrate_with_a_misspelt_variable(tmp_path: Path, **settings: str) -> list[str]:
    """stderr's lines of a `relay migrate` that gets past its settings (their warning
    among its log lines) to find no database."""
    done = relay(
        "migrate",
        RELAY_DATABASE_URL="postgresql://relay@127.0.0.1:1/relay",
        RELAY_STATE_DIR=str(tmp_path / "state"),
        **{MISSPELT: "1"},
        **settings,
    )
    *log, refusal = done.stderr.strip().splitlines()
    assert refusal.startswith("relay migrate: "), done.stderr
    return log


def test_warnings_while_settings_are_read_come_out_in_the_log_format(tmp_path):
    log = migrate_with_a_misspelt_variable(tmp_path, RELAY_LOG_FORMAT="json")
    lines = [orjson.loads(line) for line in log]  # every one JSON
    assert lines[0]["level"] == "warning" and lines[0]["logger"] == "relay.config"
    assert lines[0]["msg"].endswith(f"(misspelt?): {MISSPELT}")


def test_warnings_while_settings_are_read_follow_the_log_level(tmp_path):
    assert migrate_with_a_misspelt_variable(tmp_path, RELAY_LOG_LEVEL="ERROR") == []


# The simulator


def test_relay_simulate_on_a_port_in_use_is_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = relay("simulate", "--port", str(port), timeout=30)
    assert done.returncode == 2
    assert done.stderr.startswith(f"relay simulate: cannot listen on 127.0.0.1:{port}: ")
    assert len(done.stderr.strip().splitlines()) == 1
    assert os.strerror(errno.EADDRINUSE).lower() in done.stderr.lower()
