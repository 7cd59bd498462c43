"""`relay dev`: the whole appliance on one machine, with a demo client ready to try.

Private PostgreSQL and Redis keep their data under `RELAY_DEV_DIR` (default
`.dev`), the upstream simulator answers unless `RELAY_UPSTREAMS` names real
providers, and a demo client's key is kept in `.dev/demo-client.json` so every
run prints the same ready-to-paste `curl`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import orjson
import uvloop
from aiohttp import web

from relay.app import create_app
from relay.appkeys import CLIENTS, IN_FLIGHT
from relay.commands.refusals import refused, start_refusals
from relay.commands.serve import StopSignals, drain, on_hangup, relay_runner, start_sites
from relay.config import ConfigError, Settings, load_settings
from relay.config_environment import gather
from relay.devservers import DevServerError, PostgresServer, RedisServer, free_port
from relay.logs import HeldLogs
from relay.memory import return_large_blocks
from relay.services.clients import ClientService
from relay.stores.database_admin import ensure_database

DATABASE = "relay"
SIMULATOR_KEY = "sim"
SIMULATOR_MODELS = ("sim-small", "sim-large")
DEMO_FILE = "demo-client.json"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def simulator_upstreams(port: int) -> str:
    return orjson.dumps(
        [
            {
                "name": "simulator",
                "kind": "openai",
                "base_url": f"http://127.0.0.1:{port}/v1",
                "api_key": SIMULATOR_KEY,
                "models": {model: model for model in SIMULATOR_MODELS},
            }
        ]
    ).decode()


@contextlib.asynccontextmanager
async def simulator(port: int) -> AsyncIterator[bool]:
    """Serve relay's OpenAI-compatible simulator on `port`; yields False if it is not installed."""
    try:
        from relay.simulator import SimulatorConfig, create_simulator_app
    except ImportError:
        yield False
        return
    runner = web.AppRunner(
        create_simulator_app(SimulatorConfig(api_key=SIMULATOR_KEY, record_requests=False))
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield True
    finally:
        await runner.cleanup()


def write_private(path: Path, data: Mapping[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")


async def demo_key(clients: ClientService, path: Path) -> str:
    """The demo client's API key: the kept one while it still works, else a new client's."""
    try:
        kept = orjson.loads(await asyncio.to_thread(path.read_bytes))
        api_key = str(kept["api_key"])
    except (OSError, ValueError, KeyError, TypeError):
        api_key = ""
    if api_key and await clients.authenticate_key(api_key) is not None:
        return api_key
    client, key = await clients.create({"name": "demo", "metadata": {"created_by": "relay dev"}})
    await asyncio.to_thread(write_private, path, {"client_id": client.id, "api_key": str(key)})
    return str(key)


def first_model(settings: Settings) -> str:
    for upstream in getattr(settings, "upstreams", ()):
        for model in upstream.models:
            return str(model)
    return SIMULATOR_MODELS[0]


def cli_path() -> str:
    """`PATH=<bin>:"$PATH" ` when the `relay` command beside this Python is not the one
    PATH finds: `make dev` runs .venv/bin/relay, and another terminal knows no venv."""
    venv_bin = Path(sys.executable).parent
    command = venv_bin / "relay"
    found = shutil.which("relay")
    if not command.is_file() or (found is not None and Path(found).samefile(command)):
        return ""
    return f'PATH={shlex.quote(str(venv_bin))}:"$PATH" '


def cli_settings(settings: Settings) -> str:
    """The settings that point `relay clients` and `relay token` at this instance: its
    database (on a port of this run's) and the state dir keeping its JWT secret, and
    where the `relay` command is when PATH does not say."""
    database, state = settings.database_url, str(settings.state_path.resolve())
    return (
        f"{cli_path()}RELAY_DATABASE_URL={shlex.quote(database)}"
        f" RELAY_STATE_DIR={shlex.quote(state)}"
    )


def banner(settings: Settings, api_key: str, key_file: Path, backends: str) -> str:
    host = "127.0.0.1" if settings.host in ("", "0.0.0.0", "::") else settings.host
    if ":" in host:  # an IPv6 address goes in brackets in a URL
        host = f"[{host}]"
    base = f"http://{host}:{settings.port}"
    body = shlex.quote(orjson.dumps({"api_key": api_key}).decode())
    extract = shlex.quote('import json,sys;print(json.load(sys.stdin)["access_token"])')
    me = (
        f"TOKEN=$(curl -s -X POST {base}/auth/token -H 'Content-Type: application/json'"
        f" -d {body} | python3 -c {extract})"
        f' && curl -s {base}/v1/me -H "Authorization: Bearer $TOKEN"'
    )
    chat = orjson.dumps(
        {"model": first_model(settings), "messages": [{"role": "user", "content": "Hello!"}]}
    ).decode()
    completions = (
        f'curl -s {base}/v1/chat/completions -H "Authorization: Bearer $TOKEN"'
        f" -H 'Content-Type: application/json' -d {shlex.quote(chat)}"
    )
    return "\n".join(
        [
            "",
            f"relay is running at {base}  ({backends})",
            "",
            f"  admin token:  {settings.admin_token}",
            f"  demo API key: {api_key}",
            f"                (kept in {key_file})",
            "",
            "Trade the demo key for a token and ask relay who you are:",
            "",
            f"  {me}",
            "",
            "Then chat (in the same shell, so $TOKEN is set):",
            "",
            f"  {completions}",
            "",
            "The relay CLI (relay clients …, relay token …) reaches this instance with:",
            "",
            f"  export {cli_settings(settings)}",
            "",
            "Ctrl-C stops relay, the simulator, PostgreSQL and Redis.",
            "",
        ]
    )


async def serve(
    env: dict[str, str], admin_url: str, dev_dir: Path, backends: str, held: HeldLogs
) -> int:
    """Serve until a signal; `held`: what was logged before relay's log is set up."""
    # As under `relay serve`: the first signal drains, another ends open streams at once.
    stopping = StopSignals()

    async with contextlib.AsyncExitStack() as stack:
        # What reading the settings logs (an unknown RELAY_* name) waits for the log
        # format they give, as under `relay serve`.
        try:
            with held.before_logging():
                # Upstreams and a log format given in RELAY_ENV_FILE count too: read as
                # `relay serve` reads them.
                given = gather(env)
                if not given.get("RELAY_LOG_FORMAT"):
                    env["RELAY_LOG_FORMAT"] = "text"
                if not given.get("RELAY_UPSTREAMS"):
                    sim_port = free_port()
                    if await stack.enter_async_context(simulator(sim_port)):
                        env["RELAY_UPSTREAMS"] = simulator_upstreams(sim_port)
                        backends += f", simulator :{sim_port}"
                    else:
                        backends += ", no upstream (relay.simulator is missing)"
                settings = load_settings(env)
        except ConfigError as exc:
            print(f"relay dev: {exc}", file=sys.stderr)
            return 2
        held.start_logging(settings.log_level, settings.log_format)
        await ensure_database(admin_url, DATABASE)

        app = create_app(settings)
        stopping.in_flight = app[IN_FLIGHT]
        runner = relay_runner(app)
        await runner.setup()
        # Run after the drain, before the simulator stops: what is pending is committed.
        stack.push_async_callback(runner.cleanup)
        try:
            sites = await start_sites(runner, settings)
        except OSError as exc:  # start_sites names where it could not listen
            print(f"relay dev: {exc.strerror}; try RELAY_PORT=…", file=sys.stderr)
            return 1
        key_file = dev_dir / DEMO_FILE
        api_key = await demo_key(app[CLIENTS], key_file)
        if not stopping.requested.is_set():  # not "running" when it is about to stop
            print(banner(settings, api_key, key_file, backends), flush=True)
        await stopping.requested.wait()
        await drain(app[IN_FLIGHT], sites, settings.drain_timeout)
    return 0


def dev_environment(dev_dir: Path, pg: PostgresServer, redis: RedisServer) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "RELAY_ENV": "development",
            "RELAY_DATABASE_URL": pg.url_for(DATABASE),
            "RELAY_REDIS_URL": redis.url,
            "RELAY_STATE_DIR": str(dev_dir / "state"),
        }
    )
    return env


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    _hold_stop_signals()  # another would cut short the stop of what was started
    raise KeyboardInterrupt


def _hold_stop_signals() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _listen_before_the_loop() -> None:
    """Until StopSignals listens (once the loop runs: PostgreSQL and Redis start before):
    SIGTERM interrupts as SIGINT does, so that what was started is stopped (by default it
    killed relay dev and left them running), and SIGHUP is logged and ignored, as later."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _interrupt)
    signal.signal(signal.SIGHUP, lambda signum, frame: on_hangup())


def run() -> int:
    dev_dir = Path(os.environ.get("RELAY_DEV_DIR") or ".dev").absolute()
    dev_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    pg = PostgresServer(dev_dir / "postgres")
    redis = RedisServer(dev_dir / "redis")
    # What starting them logs (a directory made searchable for postgres) goes out in
    # relay's log format, once the settings give it.
    held = HeldLogs()
    try:
        _listen_before_the_loop()
        print(f"starting PostgreSQL and Redis under {dev_dir} …", flush=True)
        with held.before_logging():
            pg.start()
            redis.start()
        backends = f"PostgreSQL :{pg.port}, Redis :{redis.port}"
        env = dev_environment(dev_dir, pg, redis)
        return_large_blocks()  # as `relay serve` does, before the first request body is read
        return uvloop.run(serve(env, pg.url, dev_dir, backends, held))
    except DevServerError as exc:
        print(f"relay dev: {exc}", file=sys.stderr)
        return 1
    except start_refusals() as exc:  # as `relay serve` says them
        return refused("dev", exc)
    except KeyboardInterrupt:
        # A stop asked for (Ctrl-C, SIGTERM) before relay served: done once what was
        # started has stopped, so exit 0, as for a stop asked for later and as
        # `relay serve` stopped during start-up. Not 130: nothing failed.
        print("relay dev: stopped during start-up", flush=True)
        return 0
    finally:
        _hold_stop_signals()  # what was started stops whole
        redis.stop()
        pg.stop()
