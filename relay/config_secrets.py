"""Which secrets relay reads; production's rules for them (long, not the example's,
each its own); development's: a missing JWT secret, admin token or identity key is
generated once and kept in the state dir (mode 0600)."""

from __future__ import annotations

import dataclasses
import itertools
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
# Optional, but held to the same rules in production when given: a 1-byte metrics
# token is a lock anyone opens.
CHECKED_WHEN_GIVEN = ("jwt_previous_secret", "metrics_token")

# deploy/relay.env.example ships its secrets as "change-me-…" lines; production
# refuses them so a forgotten edit cannot mean running with published secrets.
PLACEHOLDER = "change-me"


class GeneratedSecret(Secret):
    """A secret development generated and keeps in the state dir, not one it was given."""


def check_production_secrets(settings: Settings, secrets: Collection[str]) -> None:
    """Refuse, among the secrets in `secrets`, one that is required and missing, or
    (required or given) short or still the example's placeholder; and any two that
    are the same. Errors name the settings, never a value."""
    variables = {spec.name: spec.metadata["env"] for spec in dataclasses.fields(settings)}
    checked = [
        name
        for name in SECRETS
        if name in secrets
        and (name in REQUIRED_SECRETS or (name in CHECKED_WHEN_GIVEN and getattr(settings, name)))
    ]
    for field_name in checked:
        name, value = variables[field_name], getattr(settings, field_name)
        if len(value.encode()) < MIN_SECRET_BYTES:
            state = "is missing" if not value else "is shorter than 32 bytes"
            raise ConfigError(f"{name} {state}; production needs a random secret of 32+ bytes")
        if PLACEHOLDER in value.lower():
            raise ConfigError(
                f"{name} still holds the example's {PLACEHOLDER!r} placeholder; "
                "production needs a random secret (openssl rand -base64 48)"
            )
    # One value in two roles: the admin token would sign JWTs (or a JWT secret open the
    # admin API), a previous JWT secret equal to the current one would rotate nothing.
    for first, second in itertools.combinations(checked, 2):
        if getattr(settings, first) == getattr(settings, second):
            raise ConfigError(
                f"{variables[first]} and {variables[second]} hold the same value; "
                "production needs a different random secret for each"
            )


def generated_secrets(settings: Settings) -> list[str]:
    """The variables of the secrets development generated (and keeps), by name."""
    return [
        spec.metadata["env"]
        for spec in dataclasses.fields(settings)
        if isinstance(getattr(settings, spec.name), GeneratedSecret)
    ]


def with_development_secrets(
    settings: Settings, needed: Collection[str] = REQUIRED_SECRETS, *, generate: bool = True
) -> Settings:
    """In development, fill each missing required secret that is `needed` from the state dir.

    Each is generated once and kept (mode 0600) so restarting relay does not
    invalidate tokens, change the admin token or forget rate-limit buckets (a new
    identity key would orphan every bucket in Redis). With `generate` false (a
    command that checks what a relay made, `relay token`), only one a relay kept is
    read: a new one would match nothing, so its absence is a ConfigError.
    """
    if settings.production:
        return settings
    variables = {spec.name: spec.metadata["env"] for spec in dataclasses.fields(settings)}
    changes = {}
    for name in REQUIRED_SECRETS:
        if name in needed and not getattr(settings, name):
            path = settings.state_path / name
            if not generate and not path.exists():
                raise ConfigError(
                    f"{variables[name]} is not set, and {path} holds none a development"
                    " relay kept; set it to the secret the relay you mean uses"
                )
            changes[name] = GeneratedSecret(kept_secret(path))
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
