"""Everything the benchmark measures against: PostgreSQL, Redis, the simulator, the
baseline proxy and relay, each on its core, plus a relay client and its JWT."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import orjson

from bench.children import Child, child_environment
from bench.options import BenchOptions
from relay.config import Settings
from relay.devservers import PostgresServer, RedisServer, free_port
from relay.stores.database_admin import create_database, with_database

HOST = "127.0.0.1"
CHAT_PATH = "/v1/chat/completions"
MODEL = "sim-small"  # the same public and provider id: relay forwards the client's bytes
SIMULATOR_KEY = "sk-bench-" + "0" * 24
SIMULATOR_AUTH = {"Authorization": "Bearer " + SIMULATOR_KEY}
# Limits far above anything the benchmark can reach: "limits on" measures their cost, not refusals.
_UNREACHABLE_LIMITS = {
    "RELAY_RATE_LIMIT_REQUESTS_PER_MINUTE": str(10**9),
    "RELAY_RATE_LIMIT_CHAT_PER_MINUTE": str(10**9),
    "RELAY_RATE_LIMIT_TOKENS_PER_MINUTE": str(10**12),
    "RELAY_RATE_LIMIT_TOKEN_EXCHANGES_PER_MINUTE": str(10**6),
}


@dataclass(frozen=True)
class Target:
    """One way to reach the simulator: its address, request headers and serving process."""

    name: str
    port: int
    headers: dict[str, str]
    server_pid: int
    on_server_core: bool = True  # the simulator ("direct") runs on the load core
    path: str = CHAT_PATH
    host: str = HOST


def relay_setting_exists(variable: str) -> bool:
    """Whether relay's Settings reads `variable` (features land while the bench is written)."""
    return any(spec.metadata.get("env") == variable for spec in dataclasses.fields(Settings))


class Stack:
    """Started in order by `start()`, stopped in reverse by `close()`."""

    def __init__(self, workdir: Path, options: BenchOptions) -> None:
        self.workdir = workdir
        self.options = options
        self._exit = ExitStack()
        self.postgres = PostgresServer(workdir / "postgres", fast=options.pg_fast)
        self.redis = RedisServer(workdir / "redis")
        self.database_url = ""
        self.simulator = Child.python(
            "simulator", self._simulator_args(free_port()), workdir / "simulator.log",
            server_core=False,
        )  # fmt: skip
        self.baseline_port = free_port()
        self.baseline = self._baseline_child("baseline", self.baseline_port)
        self.relay: Child | None = None
        self.relay_port = 0
        self._variants: dict[int, Child] = {}  # port → relay started with overrides
        self._variants_started = 0
        self.token = ""
        self._secrets = {
            "RELAY_JWT_SECRET": secrets.token_urlsafe(48),
            "RELAY_ADMIN_TOKEN": secrets.token_urlsafe(48),
            "RELAY_IDENTITY_HASH_KEY": secrets.token_urlsafe(48),
        }

    def _simulator_args(self, port: int) -> list[str]:
        self.simulator_port = port
        return [
            "bench.simulator", "--port", str(port), "--api-key", SIMULATOR_KEY,
            "--tokens", str(self.options.tokens),
            "--token-delay-ms", str(self.options.token_delay_ms),
        ]  # fmt: skip

    @property
    def simulator_url(self) -> str:
        return f"http://{HOST}:{self.simulator_port}"

    def start(self) -> None:
        self._exit.enter_context(self.postgres)
        self._exit.enter_context(self.redis)
        name = "relay_bench"
        asyncio.run(create_database(self.postgres.url, name))
        self.database_url = with_database(self.postgres.url, name)
        self.simulator.start(child_environment())
        self._exit.callback(self.simulator.stop)
        self.simulator.wait_ready(self.simulator_url + "/v1/models", SIMULATOR_AUTH)
        self._start_baseline(self.baseline, self.baseline_port)
        self._exit.callback(self.baseline.stop)
        self._exit.callback(self.stop_relay)
        self.start_relay()

    def close(self) -> None:
        self._exit.close()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def relay_environment(self, port: int, overrides: dict[str, str]) -> dict[str, str]:
        upstream = {
            "name": "simulator",
            "base_url": self.simulator_url + "/v1",
            "api_key": SIMULATOR_KEY,
            "models": {MODEL: MODEL},
        }
        return child_environment(
            RELAY_ENV="development",
            RELAY_HOST=HOST,
            RELAY_PORT=str(port),
            RELAY_DATABASE_URL=self.database_url,
            RELAY_REDIS_URL=self.redis.url,
            RELAY_STATE_DIR=str(self.workdir / f"relay-state-{port}"),
            RELAY_UPSTREAMS=orjson.dumps([upstream]).decode(),
            # Only the token exchange hashes keys; the default 12 rounds just slows start-up.
            RELAY_BCRYPT_ROUNDS="4",
            **_UNREACHABLE_LIMITS,
            **self._secrets,
            **overrides,
        )

    def _spawn_relay(
        self, overrides: dict[str, str], name: str = "relay", wrapper: Sequence[str] = ()
    ) -> tuple[Child, int]:
        port = free_port()
        name += "".join(f"-{key}={value}" for key, value in overrides.items())
        child = Child.python(
            name, ["relay", "serve"], self.workdir / f"{name}.log", server_core=True,
            wrapper=wrapper,
        )  # fmt: skip
        child.start(self.relay_environment(port, overrides))
        child.wait_ready(f"http://{HOST}:{port}/health", seconds=_ready_seconds(wrapper))
        return child, port

    def start_relay(self) -> None:
        """relay as configured by default, then a client and the JWT every relay accepts."""
        self.relay, self.relay_port = self._spawn_relay({})
        base = f"http://{HOST}:{self.relay_port}"
        created = _post_json(
            base + "/admin/clients",
            {"name": "bench"},
            {"Authorization": "Bearer " + self._secrets["RELAY_ADMIN_TOKEN"]},
        )
        issued = _post_json(base + "/auth/token", {"api_key": created["api_key"]}, {})
        self.token = issued["access_token"]

    def stop_relay(self) -> None:
        for child in [self.relay, *self._variants.values()]:
            if child is not None:
                child.stop()
        self.relay, self._variants = None, {}

    def start_variant(self, overrides: dict[str, str], wrapper: Sequence[str] = ()) -> Target:
        """A fresh relay beside the first (same core, database, Redis and client), with
        `overrides`: comparisons alternate between such relays without restarts. A
        `wrapper` (valgrind, say) runs it."""
        self._variants_started += 1
        child, port = self._spawn_relay(
            overrides, name=f"relay-{self._variants_started}", wrapper=wrapper
        )
        self._variants[port] = child
        return self._relay_target(port, child)

    def start_baseline_variant(self, wrapper: Sequence[str]) -> Target:
        """Another baseline proxy, run by `wrapper`; stopped with `stop_variant`."""
        port = free_port()
        child = self._baseline_child(f"baseline-{port}", port, wrapper)
        self._start_baseline(child, port, wrapper)
        self._variants[port] = child
        return Target(child.name, port, SIMULATOR_AUTH, child.pid)

    def _baseline_child(self, name: str, port: int, wrapper: Sequence[str] = ()) -> Child:
        return Child.python(
            name,
            ["bench.baseline_proxy", "--port", str(port), "--upstream", self.simulator_url],
            self.workdir / f"{name}.log",
            server_core=True,
            wrapper=wrapper,
        )

    @staticmethod
    def _start_baseline(child: Child, port: int, wrapper: Sequence[str] = ()) -> None:
        child.start(child_environment())
        # The baseline passes the client's key on: the simulator's own answers it.
        child.wait_ready(
            f"http://{HOST}:{port}/v1/models", SIMULATOR_AUTH, seconds=_ready_seconds(wrapper)
        )

    def variant_log(self, target: Target) -> Path:
        return self._variants[target.port].log_path

    def stop_variant(self, target: Target) -> None:
        child = self._variants.pop(target.port, None)
        if child is not None:
            child.stop()

    def targets(self) -> dict[str, Target]:
        assert self.relay is not None and self.simulator.process is not None
        return {
            "direct": Target(
                "direct",
                self.simulator_port,
                SIMULATOR_AUTH,
                self.simulator.pid,
                on_server_core=False,
            ),
            "baseline": Target("baseline", self.baseline_port, SIMULATOR_AUTH, self.baseline.pid),
            "relay": self.relay_target(),
        }

    def relay_target(self) -> Target:
        assert self.relay is not None
        return self._relay_target(self.relay_port, self.relay)

    def _relay_target(self, port: int, child: Child) -> Target:
        return Target(child.name, port, {"Authorization": "Bearer " + self.token}, child.pid)


def _ready_seconds(wrapper: Sequence[str]) -> float:
    # Under valgrind a server starts many times slower.
    return 300.0 if wrapper else 60.0


def _post_json(url: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=orjson.dumps(body),
        headers={"Content-Type": "application/json", **headers},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        data: dict[str, Any] = orjson.loads(answer.read())
        return data
