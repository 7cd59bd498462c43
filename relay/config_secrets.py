"""Which secrets relay reads, and development's: a missing JWT secret, admin token
or identity key is generated once and kept in the state dir (mode 0600)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from relay.config_values import MIN_SECRET_BYTES, ConfigError, Secret

if TYPE_CHECKING:
    from relay.config import Settings

# The settings holding secrets, by field name. A command reads only those it uses:
# the others may be readable by the service alone (LoadCredential=).
SECRETS = ("jwt_secret", "jwt_previous_secret", "admin_token", "identity_hash_key", "metrics_token")
# Those `relay serve` cannot run without: production demands each (32+ bytes, no
# placeholder) when read; development generates a missing one.
REQUIRED_SECRETS = ("jwt_secret", "admin_token", "identity_hash_key")
# Optional, but held to the same rules in production when given.
CHECKED_WHEN_GIVEN = ("jwt_previous_secret",)


def with_development_secrets(
    settings: Settings, needed: Collection[str] = REQUIRED_SECRETS
) -> Settings:
    """In development, fill each missing required secret that is `needed` from the state dir.

    Each is generated once and kept (mode 0600) so restarting relay does not
    invalidate tokens, change the admin token or forget rate-limit buckets (a new
    identity key would orphan every bucket in Redis).
    """
    if settings.production:
        return settings
    changes = {
        name: Secret(kept_secret(settings.state_path / name))
        for name in REQUIRED_SECRETS
        if name in needed and not getattr(settings, name)
    }
    return settings.replace(**changes) if changes else settings


def kept_secret(path: Path) -> str:
    """Read the secret stored at `path`, creating it (mode 0600) on first use."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            value = path.read_text().strip()
            if len(value.encode()) < MIN_SECRET_BYTES:
                raise ConfigError(
                    f"{path} holds a secret shorter than 32 bytes; delete it"
                ) from None
            return value
        value = secrets.token_urlsafe(48)
        with os.fdopen(fd, "w") as handle:
            handle.write(value + "\n")
        return value
    except OSError as exc:  # a state dir that is a file, read-only, not ours
        raise ConfigError(
            f"RELAY_STATE_DIR: cannot keep {path.name} in {path.parent}: {exc.strerror}"
        ) from None
