"""schemathesis against a live `relay serve`, its spec and a simulated provider: no 5xx anywhere.

`make schemathesis` runs it longer (RELAY_SCHEMATHESIS_EXAMPLES, RELAY_SCHEMATHESIS_PHASES).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

from relay.simulator.config import SimulatorConfig
from tests.conftest import ADMIN_TOKEN
from tests.relay_process import new_client_token, serve_with_simulator

CONFIG = """\
[auth.openapi.bearerToken]
bearer = "${RELAY_SCHEMATHESIS_JWT}"

[auth.openapi.adminToken]
bearer = "${RELAY_SCHEMATHESIS_ADMIN}"
"""


def schemathesis_command() -> str:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert found, "schemathesis is a test extra: `make test` installs it"
    return found


async def test_no_server_errors_anywhere(aiohttp_server, database_url, redis_url, tmp_path):
    relay = await serve_with_simulator(
        aiohttp_server, database_url, redis_url, tmp_path, SimulatorConfig(tokens=4)
    )
    try:
        token = await new_client_token(relay.port, "schemathesis")
        config = tmp_path / "schemathesis.toml"
        config.write_text(CONFIG)
        process = await asyncio.create_subprocess_exec(
            schemathesis_command(),
            "--config-file",
            str(config),
            "run",
            f"http://127.0.0.1:{relay.port}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--phases",
            os.environ.get("RELAY_SCHEMATHESIS_PHASES", "examples,coverage,fuzzing"),
            "--max-examples",
            os.environ.get("RELAY_SCHEMATHESIS_EXAMPLES", "25"),
            "--seed",
            "7",
            "--workers",
            "2",
            "--request-timeout",
            "10",
            env={
                **os.environ,
                "RELAY_SCHEMATHESIS_JWT": token,
                "RELAY_SCHEMATHESIS_ADMIN": ADMIN_TOKEN,
                "SCHEMATHESIS_HOOKS": "",
            },
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), timeout=540)
        report = output.decode(errors="replace")
        assert process.returncode == 0, (
            report[-6000:] + "\n--- relay log ---\n" + relay.logs()[-4000:]
        )
        assert "unhandled error" not in relay.logs()
    finally:
        relay.kill()
