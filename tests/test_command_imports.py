"""Each `relay` command imports what it uses: no command loads the dstack SDK
(httpx, pydantic, eth_keys) unless RELAY_ATTESTATION=dstack asks for it."""

from __future__ import annotations

import subprocess
import sys

from tests.relay_process import REPO

DSTACK = ("dstack_sdk", "httpx", "pydantic", "eth_utils", "eth_keys")


def loaded_after(code: str, watched: tuple[str, ...]) -> list[str]:
    """Which of `watched` a fresh interpreter has imported once `code` ran."""
    script = f"import sys\n{code}\nprint(' '.join(m for m in {watched!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_serve_without_dstack_loads_no_dstack_sdk():
    # Without dstack, serve signs with a key file: the SDK is imported only for dstack.
    assert loaded_after("import relay.commands.serve", DSTACK) == []
