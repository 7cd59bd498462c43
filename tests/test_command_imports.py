"""Each `relay` command imports what it uses: `relay --help`, `relay verify` and
`relay simulate` start without the database drivers or Redis, `relay clients`,
`relay migrate` and `relay token` without aiohttp, and no command loads
the dstack SDK (httpx, pydantic, eth_keys) unless RELAY_ATTESTATION=dstack asks for it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.relay_process import REPO

SERVING = ("aiohttp", "uvloop")
STORAGE = ("aiopg", "psycopg2", "redis", "jwt")
DSTACK = ("dstack_sdk", "httpx", "pydantic", "eth_utils", "eth_keys")


def loaded_after(code: str, watched: tuple[str, ...]) -> list[str]:
    """Which of `watched` a fresh interpreter has imported once `code` ran."""
    script = f"import sys\n{code}\nprint(' '.join(m for m in {watched!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


# What relay.cli imports to run a command that reads settings (relay.cli._run_configured).
_CONFIGURED = "import relay.commands.refusals, relay.config, relay.logs"


def parsed(*argv: str) -> str:
    return f"from relay.cli import build_parser\nbuild_parser().parse_args({list(argv)!r})"


@pytest.mark.parametrize(
    ("code", "unused"),
    [
        pytest.param(
            "from relay.cli import build_parser\nbuild_parser().format_help()",
            SERVING + STORAGE + DSTACK,
            id="relay-help",
        ),
        pytest.param(
            parsed("verify", "--report", "r.json", "--receipt", "x.json"),
            SERVING + STORAGE + DSTACK,
            id="verify",
        ),
        pytest.param(parsed("simulate", "--port", "0"), STORAGE + DSTACK, id="simulate"),
        # Commands that read settings and reach the database serve nothing over HTTP.
        pytest.param(
            parsed("clients", "list") + f"\n{_CONFIGURED}", SERVING + DSTACK, id="clients"
        ),
        pytest.param(parsed("migrate") + f"\n{_CONFIGURED}", SERVING + DSTACK, id="migrate"),
        pytest.param(
            parsed("token", "issue", "x") + f"\n{_CONFIGURED}", SERVING + DSTACK, id="token"
        ),
        # Without dstack, serve signs with a key file: the SDK is imported only for dstack.
        pytest.param(parsed("serve"), DSTACK, id="serve"),
    ],
)
def test_a_command_starts_without_what_it_does_not_use(code, unused):
    assert loaded_after(code, unused) == []
