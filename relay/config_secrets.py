"""Development's secrets: a missing JWT secret, admin token or identity key is
generated once and kept in the state dir (mode 0600)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from relay.config_values import MIN_SECRET_BYTES, ConfigError, Secret

if TYPE_CHECKING:
    from relay.config import Settings


def with_development_secrets(settings: Settings) -> Settings:
    """In development, fill a missing JWT secret, admin token or identity key from the state dir.

    Each is generated once and kept (mode 0600) so restarting relay does not
    invalidate tokens, change the admin token or forget rate-limit buckets.
    """
    if settings.production:
        return settings
    changes: dict[str, Secret] = {}
    if not settings.jwt_secret:
        changes["jwt_secret"] = Secret(kept_secret(settings.state_path / "jwt_secret"))
    if not settings.admin_token:
        changes["admin_token"] = Secret(kept_secret(settings.state_path / "admin_token"))
    if not settings.identity_hash_key:
        # Kept too: a new key would orphan every rate-limit bucket in Redis.
        path = settings.state_path / "identity_hash_key"
        changes["identity_hash_key"] = Secret(kept_secret(path))
    return settings.replace(**changes) if changes else settings


def kept_secret(path: Path) -> str:
    """Read the secret stored at `path`, creating it (mode 0600) on first use."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        value = path.read_text().strip()
        if len(value.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(f"{path} holds a secret shorter than 32 bytes; delete it") from None
        return value
    value = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value
