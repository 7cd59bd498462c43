"""What relay says about its settings at start-up: the mode, the secrets development
generated, and the choices production should not run with unawares."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from relay.config_secrets import generated_secrets

if TYPE_CHECKING:
    from relay.config import Settings

log = logging.getLogger("relay.config")


def mode_line(settings: Settings) -> str:
    """The mode and, in development, the secrets relay keeps itself (names only): made
    on first use, read again on every start after."""
    generated = generated_secrets(settings)
    if settings.production or not generated:
        return f"{settings.env} mode"
    return (
        f"development mode; secrets relay made and keeps in {settings.state_dir}:"
        f" {', '.join(generated)}"
    )


def production_warnings(settings: Settings) -> list[str]:
    """Settings that leave production without a protection, or without a provider."""
    if not settings.production:
        return []
    warnings = []
    if not settings.rate_limits:
        warnings.append(
            "RELAY_RATE_LIMITS is off: no client and no address is rate limited"
            " (meant only for measuring what limiting costs)"
        )
    if not settings.receipts:
        warnings.append(
            "RELAY_RECEIPTS is off: answers get no signed receipt"
            " (meant only for measuring what receipts cost)"
        )
    if not settings.upstreams:
        warnings.append(
            "RELAY_UPSTREAMS names no provider: every chat request is refused (model_not_found)"
        )
    return warnings


def log_start_up(settings: Settings) -> None:
    log.info(mode_line(settings), extra={"mode": settings.env})
    for warning in production_warnings(settings):
        log.warning(warning)
