"""`relay serve` as a real subprocess, a systemd notify socket, and raw HTTP/1.1 exchanges.

The graceful-stop tests use these; a test that needs a request in flight at
SIGTERM opens one with `start_slow_upload` (or, with the chat relay, a stream)
before calling `RelayProcess.terminate`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from relay.devservers import free_port
from relay.simulator import SimulatorConfig, create_simulator_app
from tests.conftest import ADMIN_TOKEN, JWT_SECRET

REPO = Path(__file__).resolve().parents[1]


def run_relay(
    *command: str, timeout: float = 60, **settings: str
) -> subprocess.CompletedProcess[str]:
    """`relay …` run to its end, with `settings` and none of the caller's RELAY_*."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RELAY_")}
    env.update(settings)
    return subprocess.run(
        [sys.executable, "-m", "relay", *command],
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,  # `relay token inspect` reads one: never the runner's
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.address = address  # a path, or '@name' in the abstract namespace
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.received: list[str] = []

    @classmethod
    def abstract(cls) -> NotifySocket:
        return cls(f"@relay-test-{uuid.uuid4().hex}")

    async def wait_for(self, line: str, timeout: float = 30.0) -> list[str]:
        """Collect datagrams until one has `line`; return every line seen so far."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while not any(line in message.splitlines() for message in self.received):
                self.received.append((await loop.sock_recv(self.sock, 4096)).decode())
        return [each for message in self.received for each in message.splitlines()]

    def close(self) -> None:
        self.sock.close()
        if not self.address.startswith("@"):
            Path(self.address).unlink(missing_ok=True)


@dataclass
class RelayProcess:
    """`python -m relay serve` against the test databases, logging to a file."""

    database_url: str
    redis_url: str
    directory: Path
    settings: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / "relay.log"

    def environment(self) -> dict[str, str]:
        inherited = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RELAY_", "NOTIFY_SOCKET", "WATCHDOG_"))
        }
        return {
            **inherited,
            "RELAY_ENV": "development",
            "RELAY_HOST": "127.0.0.1",
            "RELAY_PORT": str(self.port),
            "RELAY_DATABASE_URL": self.database_url,
            "RELAY_REDIS_URL": self.redis_url,
            "RELAY_JWT_SECRET": JWT_SECRET,
            "RELAY_ADMIN_TOKEN": ADMIN_TOKEN,
            "RELAY_BCRYPT_ROUNDS": "4",
            "RELAY_STATE_DIR": str(self.directory / "state"),
            "RELAY_LOG_LEVEL": "INFO",
            **self.settings,
        }

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "relay", "serve"],
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return await asyncio.to_thread(self.process.wait, timeout)

    def kill(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.kill()
            self.process.wait()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return orjson.loads(self.body)


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines if line)
    }
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(int(status_line.split()[1]), headers, body)


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str, path: str
) -> Answer:
    """One request without a body on a kept-alive connection."""
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: relay\r\n\r\n".encode())
    await writer.drain()
    return await read_answer(reader)


@dataclass
class SlowUpload:
    """A POST whose body is sent in two parts, so the request stays in flight between them."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    rest: bytes

    async def finish(self) -> Answer:
        self.writer.write(self.rest)
        await self.writer.drain()
        answer = await read_answer(self.reader)
        self.writer.close()
        return answer


async def start_slow_upload(port: int, path: str, body: dict[str, object]) -> SlowUpload:
    data = orjson.dumps(body)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data[: len(data) // 2]
    )
    await writer.drain()
    return SlowUpload(reader, writer, data[len(data) // 2 :])


async def connection_refused(port: int, timeout: float = 5.0) -> bool:
    """True once new connections to `port` are refused (listeners closed)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except ConnectionRefusedError:
                return True
            except ConnectionResetError:
                # Queued on the listener just as it closed: it is going, ask again.
                await asyncio.sleep(0.01)
                continue
            writer.close()
            await asyncio.sleep(0.05)


async def serve_with_simulator(
    aiohttp_server: Any,
    database_url: str,
    redis_url: str,
    directory: Path,
    simulator: SimulatorConfig,
) -> RelayProcess:
    """`relay serve` in front of a served simulator (model `sim-small`), once it
    reports READY=1; the caller kills it. Rate limits are off: load tests load."""
    provider = await aiohttp_server(create_simulator_app(simulator))
    upstreams = [
        {
            "name": "simulator",
            "base_url": f"http://127.0.0.1:{provider.port}/v1",
            "models": {"sim-small": "sim-small"},
        }
    ]
    notify = NotifySocket.abstract()
    relay = RelayProcess(
        database_url,
        redis_url,
        directory,
        {
            "NOTIFY_SOCKET": notify.address,
            "RELAY_UPSTREAMS": orjson.dumps(upstreams).decode(),
            "RELAY_RATE_LIMITS": "false",
            "RELAY_LOG_LEVEL": "WARNING",
        },
    )
    relay.start()
    try:
        await notify.wait_for("READY=1")
    except BaseException:
        relay.kill()
        raise
    finally:
        notify.close()
    return relay


async def new_client_token(port: int, name: str) -> str:
    """Create a client through the admin API and trade its key for a JWT."""
    base = f"http://127.0.0.1:{port}"
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{base}/admin/clients", json={"name": name}, headers=admin
        ) as response:
            assert response.status == 201, await response.text()
            api_key = (await response.json())["api_key"]
        async with session.post(f"{base}/auth/token", json={"api_key": api_key}) as response:
            assert response.status == 200, await response.text()
            return str((await response.json())["access_token"])
