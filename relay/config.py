"""The one frozen `Settings` object, read once from `RELAY_*` variables.

Parsing a value is relay.config_values; where values come from (an env file,
`<NAME>_FILE`, unknown names), relay.config_environment; which secrets there are,
production's rules for them and development's kept ones, relay.config_secrets; what
start-up says about the settings, relay.config_notes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay.config_environment import (
    READ_ELSEWHERE,
    gather,
    pass_over,
    raw_setting,
    read_env_file,
    warn_unknown,
)
from relay.config_secrets import (
    REQUIRED_SECRETS,
    SECRETS,
    check_production_secrets,
    with_development_secrets,
)
from relay.config_values import (
    ConfigError,
    Secret,
    address,
    flag,
    integer,
    networks,
    not_empty,
    number,
    origins,
    parse_value,
    positive_or_none,
    readable_postgres_url,
    readable_redis_url,
    setting,
)
from relay.upstreams.config import Upstream, UpstreamConfigError, parse_upstreams

__all__ = [
    "READ_ELSEWHERE",
    "REQUIRED_SECRETS",
    "SECRETS",
    "ConfigError",
    "Secret",
    "Settings",
    "load_settings",
    "read_env_file",
    "with_development_secrets",
]

# Operators read a limit of 0 as "unlimited"; for a default it would refuse everyone.
# (A client's own `limits` of 0 blocks that client: relay.services.clients.)
NOT_ZERO = (
    "0 would refuse every request, not lift the limit; RELAY_RATE_LIMITS=off turns limits off"
)
# Longer than five minutes, a wait serves no one: the client, nginx (60 s by default)
# and systemd's stop budget (TimeoutStopSec, which adds the database timeout) have
# given up long before. A mistyped unit (ms for s) fails loudly instead.
MAX_WAIT_SECONDS = 300
# Bodies are read into memory whole, each up to this size: 64 MiB is far past any chat
# request (a 1M-token context is a few MiB of text) and a larger limit only lets a
# few clients exhaust memory.
MAX_BODY_BYTES = 64 * 1024 * 1024
# Each connection is a PostgreSQL server process: past 1000 per instance the server
# (max_connections is 100 by default) refuses them long before relay could use them.
MAX_POOL_SIZE = 1000
# A century, beyond what any record keeping asks for, and far from the ~739,000 days
# that put the purge's cutoff before year 1 (an OverflowError on every hourly run).
# Keeping history forever is leaving the setting unset.
MAX_RETENTION_DAYS = 36500


def per_minute(env: str, default: int) -> Any:
    return setting(env, default, integer, minimum=1, below=NOT_ZERO)


# The longest a token relay issues may live: tokens.py refuses one claiming longer.
LONGEST_JWT_TTL = 7 * 86400


@dataclass(frozen=True)
class Settings:
    env: str = setting("RELAY_ENV", "development", choices=("development", "production"))
    host: str = setting("RELAY_HOST", "127.0.0.1", address)
    port: int = setting("RELAY_PORT", 8080, integer, minimum=0, maximum=65535)
    unix_socket: str = setting("RELAY_UNIX_SOCKET", "")
    # `file=True`: may instead be read from the file RELAY_…_FILE names (a systemd
    # credential, a Docker secret), so the value need not sit in the environment.
    database_url: str = setting(
        "RELAY_DATABASE_URL",
        "postgresql://postgres@127.0.0.1:5432/relay",
        readable_postgres_url,
        file=True,
    )
    database_pool_size: int = setting(
        "RELAY_DATABASE_POOL_SIZE", 20, integer, minimum=1, maximum=MAX_POOL_SIZE
    )
    database_timeout: float = setting(
        "RELAY_DATABASE_TIMEOUT", 5.0, number, minimum=0.1, maximum=MAX_WAIT_SECONDS
    )
    redis_url: str = setting(
        "RELAY_REDIS_URL", "redis://127.0.0.1:6379/0", readable_redis_url, file=True
    )
    redis_timeout: float = setting(
        "RELAY_REDIS_TIMEOUT", 0.25, number, minimum=0.01, maximum=MAX_WAIT_SECONDS
    )
    # Rate limits (relay.services.ratelimit): per-minute defaults a client's
    # `limits` may override; "off" only for measuring what limiting costs.
    rate_limits: bool = setting("RELAY_RATE_LIMITS", True, flag)
    rate_limit_requests_per_minute: int = per_minute("RELAY_RATE_LIMIT_REQUESTS_PER_MINUTE", 100)
    rate_limit_chat_per_minute: int = per_minute("RELAY_RATE_LIMIT_CHAT_PER_MINUTE", 10)
    rate_limit_tokens_per_minute: int = per_minute("RELAY_RATE_LIMIT_TOKENS_PER_MINUTE", 100_000)
    rate_limit_token_exchanges_per_minute: int = per_minute(
        "RELAY_RATE_LIMIT_TOKEN_EXCHANGES_PER_MINUTE", 10
    )
    # Each report asks the TEE for a fresh quote: unauthenticated, so per address.
    rate_limit_attestation_reports_per_minute: int = per_minute(
        "RELAY_RATE_LIMIT_ATTESTATION_REPORTS_PER_MINUTE", 30
    )
    # Proxies whose X-Forwarded-For is believed: CIDRs, and "unix" for a unix-socket peer.
    trusted_proxies: tuple[str, ...] = setting("RELAY_TRUSTED_PROXIES", (), networks)
    # Keys client ids into Redis key names (HMAC); every instance must share it.
    identity_hash_key: Secret = setting("RELAY_IDENTITY_HASH_KEY", Secret(""), Secret, file=True)
    jwt_secret: Secret = setting("RELAY_JWT_SECRET", Secret(""), Secret, file=True)
    # Tokens it signed are accepted, none is signed with it: for rotating the JWT secret.
    jwt_previous_secret: Secret = setting(
        "RELAY_JWT_PREVIOUS_SECRET", Secret(""), Secret, file=True
    )
    jwt_ttl: int = setting("RELAY_JWT_TTL", 3600, integer, minimum=60, maximum=LONGEST_JWT_TTL)
    # Never empty: PyJWT takes an empty `aud` for none, so every token relay issued
    # would come back refused (401); an empty issuer names no one.
    jwt_issuer: str = setting("RELAY_JWT_ISSUER", "relay", not_empty("relay"))
    jwt_audience: str = setting("RELAY_JWT_AUDIENCE", "relay-api", not_empty("relay-api"))
    admin_token: Secret = setting("RELAY_ADMIN_TOKEN", Secret(""), Secret, file=True)
    bcrypt_rounds: int = setting("RELAY_BCRYPT_ROUNDS", 12, integer, minimum=4, maximum=16)
    state_dir: str = setting("RELAY_STATE_DIR", ".relay-state")
    max_body_bytes: int = setting(
        "RELAY_MAX_BODY_BYTES", 4 * 1024 * 1024, integer, minimum=1024, maximum=MAX_BODY_BYTES
    )
    log_level: str = setting(
        "RELAY_LOG_LEVEL", "INFO", str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    log_format: str = setting("RELAY_LOG_FORMAT", "json", str.lower, choices=("json", "text"))
    health_timeout: float = setting(
        "RELAY_HEALTH_TIMEOUT", 2.0, number, minimum=0.05, maximum=MAX_WAIT_SECONDS
    )
    force_https: bool = setting("RELAY_FORCE_HTTPS", False, flag)
    cors_origins: tuple[str, ...] = setting("RELAY_CORS_ORIGINS", (), origins)
    metrics_token: Secret = setting("RELAY_METRICS_TOKEN", Secret(""), Secret, file=True)
    drain_timeout: float = setting("RELAY_DRAIN_TIMEOUT", 30.0, number, minimum=0, maximum=3600)
    # The longest relay reads one provider answer (relay.upstreams.reply).
    max_answer_seconds: float = setting(
        "RELAY_MAX_ANSWER_SECONDS", 3600.0, number, minimum=1, maximum=7 * 86400
    )
    run_migrations: bool = setting("RELAY_RUN_MIGRATIONS", True, flag)
    # Receipts and attestation (relay.proofs): dstack derives the signing key in
    # the TEE; none keeps it in the state dir. Receipts "off" exists only so the
    # benchmark can show what they cost.
    attestation: str = setting("RELAY_ATTESTATION", "none", str.lower, choices=("none", "dstack"))
    dstack_endpoint: str = setting("RELAY_DSTACK_ENDPOINT", "")
    receipts: bool = setting("RELAY_RECEIPTS", True, flag)
    # History (relay.services.recorder, retention): unset keeps messages forever.
    history_retention_days: int | None = setting(
        "RELAY_HISTORY_RETENTION_DAYS", None, positive_or_none, maximum=MAX_RETENTION_DAYS
    )
    # POST /v1/chat: the model when none is named ("" = the first configured),
    # and how many characters of stored conversation go to the provider.
    default_model: str = setting("RELAY_DEFAULT_MODEL", "")
    # Up to about a million tokens: past any model's context window.
    chat_context_chars: int = setting(
        "RELAY_CHAT_CONTEXT_CHARS", 24_000, integer, minimum=0, maximum=4_194_304
    )
    # Parsed in from_env (it may name variables holding provider keys): see relay.upstreams.config.
    # Empty in settings loaded without provider keys, whatever RELAY_UPSTREAMS says.
    upstreams: tuple[Upstream, ...] = setting("RELAY_UPSTREAMS", (), None)

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        provider_keys: bool = True,
        secrets: Collection[str] = SECRETS,
    ) -> Settings:
        """Read settings from `environ` (default: the process environment) and the
        file `RELAY_ENV_FILE` names, if any (real environment variables win).

        `provider_keys=False` is for commands that never forward (relay clients,
        relay migrate): an operator's shell need not hold the provider keys the
        service's own environment keeps. RELAY_UPSTREAMS is still checked as
        strictly, but the variables its api_key_env fields name are neither
        demanded nor used, and the settings hold no upstreams, so nothing built
        from them can forward without its key.

        `secrets` names the secret settings (relay.config_secrets.SECRETS) a command
        uses; the others, like provider keys, are neither demanded nor read (their
        files may be the service's alone) and the settings hold them empty.
        """
        source = gather(environ)
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            name = spec.metadata["env"]
            if spec.name in SECRETS and spec.name not in secrets:
                pass_over(source, name)
                continue
            raw = raw_setting(source, name, spec.metadata.get("file", False))
            if raw is not None and spec.metadata["parse"] is not None:
                values[spec.name] = parse_value(spec, raw)
        upstreams: tuple[Upstream, ...] = ()
        if source.get("RELAY_UPSTREAMS"):
            try:
                upstreams = parse_upstreams(
                    source["RELAY_UPSTREAMS"], source, resolve_keys=provider_keys
                )
            except UpstreamConfigError as exc:
                raise ConfigError(f"RELAY_UPSTREAMS: {exc}") from None
            if provider_keys:
                values["upstreams"] = upstreams
        default_model = values.get("default_model", "")
        if default_model and not any(default_model in up.models for up in upstreams):
            raise ConfigError(
                "RELAY_DEFAULT_MODEL names no model of RELAY_UPSTREAMS"
                " (a public id, a key of some upstream's models)"
                + ("" if upstreams else ", which configures none")
            )
        warn_unknown(source, (spec.metadata["env"] for spec in dataclasses.fields(cls)))
        if not source.get("RELAY_STATE_DIR"):
            values["state_dir"] = source.get("STATE_DIRECTORY", "").split(":")[0] or (
                "/var/lib/relay" if values.get("env") == "production" else ".relay-state"
            )
        settings = cls(**values)
        settings.check(secrets)
        return settings

    def check(self, secrets: Collection[str] = SECRETS) -> None:
        """In production, refuse a weak, placeholder or shared secret among `secrets`
        (relay.config_secrets.check_production_secrets)."""
        if self.production:
            check_production_secrets(self, secrets)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    provider_keys: bool = True,
    secrets: Collection[str] = SECRETS,
    generate: bool = True,
) -> Settings:
    """Settings.from_env; in development, the required secrets among `secrets` that are
    missing come from (or, if `generate`, are generated in) the state dir."""
    settings = Settings.from_env(environ, provider_keys=provider_keys, secrets=secrets)
    return with_development_secrets(settings, secrets, generate=generate)
