"""`relay migrate`: apply pending database migrations and exit."""

from __future__ import annotations

import asyncio

from relay.commands.refusals import refused
from relay.config import ConfigError, Settings
from relay.errors import RelayError
from relay.stores.migrations import MigrationError, migrate


def run(settings: Settings) -> int:
    try:
        applied = asyncio.run(migrate(settings.database_url, timeout=settings.database_timeout))
    except (MigrationError, RelayError, ConfigError) as exc:
        return refused("migrate", exc)
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    return 0
