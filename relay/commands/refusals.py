"""How a command refuses to start: one line, and exit 2 when an operator must mend something."""

from __future__ import annotations

import sys

from relay.config import ConfigError


def start_refusals() -> tuple[type[BaseException], ...]:
    """What relay's start-up refuses with (dstack agent unreachable, unusable key file,
    database down, a migration refused, the port taken, a setting found wrong only now:
    a port relay may not bind, a password Redis refuses): said in one line by
    `refused`, not a traceback."""
    from relay.errors import RelayError
    from relay.proofs.keyfile import KeyFileError
    from relay.stores.migrations import MigrationError

    return (RelayError, KeyFileError, MigrationError, ConfigError, OSError)


def refused(command: str, error: BaseException) -> int:
    """Say why `command` could not start, in one line; exit 2 if a setting or a file
    must change first (systemd's RestartPreventExitStatus=2 then stops retrying), else 1."""
    from relay.errors import operator_message
    from relay.proofs.keyfile import KeyFileError
    from relay.stores.database_failures import misconfigured
    from relay.stores.migrations import MigrationError

    # A ConfigError's message names the setting; a KeyFileError's, the signing key file
    # (its mode, owner or content) an operator must mend: no restart reads it otherwise;
    # so must a MigrationError's that says so (an applied migration edited, say).
    if isinstance(error, ConfigError | KeyFileError) or (
        isinstance(error, MigrationError) and error.must_mend
    ):
        print(f"relay {command}: {error}", file=sys.stderr)
        return 2
    if misconfigured(error):
        reason = getattr(error, "reason", "")
        print(f"relay {command}: RELAY_DATABASE_URL: {reason}", file=sys.stderr)
        return 2
    print(f"relay {command}: {operator_message(error)}", file=sys.stderr)
    return 1
