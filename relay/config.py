"""The one frozen `Settings` object, read once from `RELAY_*` variables."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import math
import os
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.upstreams.config import Upstream, UpstreamConfigError, parse_upstreams

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the variable."""


class Secret(str):
    """A string whose repr never shows its value, so settings can be logged safely."""

    def __repr__(self) -> str:
        return "Secret('**********')" if self else "Secret('')"


MIN_SECRET_BYTES = 32
# deploy/relay.env.example ships its secrets as "change-me-…" lines; production
# refuses them so a forgotten edit cannot mean running with published secrets.
PLACEHOLDER = "change-me"
# RELAY_* names read outside the settings: by from_env itself, by `relay dev`
# and by the test suite. Any other RELAY_* name that is no setting is likely misspelt.
READ_ELSEWHERE = frozenset(
    {
        "RELAY_ENV_FILE",
        "RELAY_DEV_DIR",
        "RELAY_TEST_DATABASE_URL",
        "RELAY_TEST_REDIS_URL",
        "RELAY_SCHEMATHESIS_EXAMPLES",
        "RELAY_SCHEMATHESIS_PHASES",
        "RELAY_SCHEMATHESIS_JWT",
        "RELAY_SCHEMATHESIS_ADMIN",
    }
)


def _text(raw: str) -> str:
    return raw


def _integer(raw: str) -> int:
    return int(raw)


def _number(raw: str) -> float:
    value = float(raw)
    # float() accepts "nan" and "inf", which pass every minimum check.
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return value


def _flag(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    # Empty is refused, not read as false: `RELAY_RECEIPTS=` would otherwise turn
    # receipts off silently, and the operator may have meant the default.
    raise ValueError("expected true or false (remove the line to keep the default)")


def _positive_or_none(raw: str) -> int | None:
    if not raw.strip():
        return None
    value = int(raw)
    if value < 1:
        raise ValueError("must be at least 1 (leave it unset to keep history forever)")
    return value


def _words(raw: str) -> tuple[str, ...]:
    return tuple(part for part in raw.replace(",", " ").split() if part)


def _networks(raw: str) -> tuple[str, ...]:
    networks = []
    for word in _words(raw):
        if word == "unix":
            networks.append(word)
            continue
        try:
            networks.append(str(ipaddress.ip_network(word, strict=False)))
        except ValueError:
            raise ValueError(f"{word!r} is not a CIDR (like 10.0.0.0/8) or 'unix'") from None
    return tuple(networks)


def setting(
    env: str, default: Any, parse: Callable[[str], Any] | None = _text, **kwargs: Any
) -> Any:
    """Declare a field read from the environment variable `env`."""
    return field(default=default, metadata={"env": env, "parse": parse, **kwargs})


@dataclass(frozen=True)
class Settings:
    env: str = setting("RELAY_ENV", "development", choices=("development", "production"))
    host: str = setting("RELAY_HOST", "127.0.0.1")
    port: int = setting("RELAY_PORT", 8080, _integer, minimum=0, maximum=65535)
    unix_socket: str = setting("RELAY_UNIX_SOCKET", "")
    database_url: str = setting("RELAY_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/relay")
    database_pool_size: int = setting("RELAY_DATABASE_POOL_SIZE", 20, _integer, minimum=1)
    database_timeout: float = setting("RELAY_DATABASE_TIMEOUT", 5.0, _number, minimum=0.1)
    redis_url: str = setting("RELAY_REDIS_URL", "redis://127.0.0.1:6379/0")
    redis_timeout: float = setting("RELAY_REDIS_TIMEOUT", 0.25, _number, minimum=0.01)
    # Rate limits (relay.services.ratelimit): per-minute defaults a client's
    # `limits` may override; "off" only for measuring what limiting costs.
    rate_limits: bool = setting("RELAY_RATE_LIMITS", True, _flag)
    rate_limit_requests_per_minute: int = setting(
        "RELAY_RATE_LIMIT_REQUESTS_PER_MINUTE", 100, _integer, minimum=0
    )
    rate_limit_chat_per_minute: int = setting(
        "RELAY_RATE_LIMIT_CHAT_PER_MINUTE", 10, _integer, minimum=0
    )
    rate_limit_tokens_per_minute: int = setting(
        "RELAY_RATE_LIMIT_TOKENS_PER_MINUTE", 100_000, _integer, minimum=0
    )
    rate_limit_token_exchanges_per_minute: int = setting(
        "RELAY_RATE_LIMIT_TOKEN_EXCHANGES_PER_MINUTE", 10, _integer, minimum=0
    )
    # Each report asks the TEE for a fresh quote: unauthenticated, so per address.
    rate_limit_attestation_reports_per_minute: int = setting(
        "RELAY_RATE_LIMIT_ATTESTATION_REPORTS_PER_MINUTE", 30, _integer, minimum=0
    )
    # Proxies whose X-Forwarded-For is believed: CIDRs, and "unix" for a unix-socket peer.
    trusted_proxies: tuple[str, ...] = setting("RELAY_TRUSTED_PROXIES", (), _networks)
    # Keys client ids into Redis key names (HMAC); every instance must share it.
    identity_hash_key: Secret = setting("RELAY_IDENTITY_HASH_KEY", Secret(""), Secret)
    jwt_secret: Secret = setting("RELAY_JWT_SECRET", Secret(""), Secret)
    jwt_ttl: int = setting("RELAY_JWT_TTL", 3600, _integer, minimum=60, maximum=86400 * 7)
    jwt_issuer: str = setting("RELAY_JWT_ISSUER", "relay")
    jwt_audience: str = setting("RELAY_JWT_AUDIENCE", "relay-api")
    admin_token: Secret = setting("RELAY_ADMIN_TOKEN", Secret(""), Secret)
    bcrypt_rounds: int = setting("RELAY_BCRYPT_ROUNDS", 12, _integer, minimum=4, maximum=16)
    state_dir: str = setting("RELAY_STATE_DIR", ".relay-state")
    max_body_bytes: int = setting("RELAY_MAX_BODY_BYTES", 4 * 1024 * 1024, _integer, minimum=1024)
    log_level: str = setting(
        "RELAY_LOG_LEVEL", "INFO", str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    log_format: str = setting("RELAY_LOG_FORMAT", "json", str.lower, choices=("json", "text"))
    health_timeout: float = setting("RELAY_HEALTH_TIMEOUT", 2.0, _number, minimum=0.05)
    force_https: bool = setting("RELAY_FORCE_HTTPS", False, _flag)
    cors_origins: tuple[str, ...] = setting("RELAY_CORS_ORIGINS", (), _words)
    metrics_token: Secret = setting("RELAY_METRICS_TOKEN", Secret(""), Secret)
    drain_timeout: float = setting("RELAY_DRAIN_TIMEOUT", 30.0, _number, minimum=0)
    run_migrations: bool = setting("RELAY_RUN_MIGRATIONS", True, _flag)
    # Receipts and attestation (relay.proofs): dstack derives the signing key in
    # the TEE; none keeps it in the state dir. Receipts "off" exists only so the
    # benchmark can show what they cost.
    attestation: str = setting("RELAY_ATTESTATION", "none", str.lower, choices=("none", "dstack"))
    dstack_endpoint: str = setting("RELAY_DSTACK_ENDPOINT", "")
    receipts: bool = setting("RELAY_RECEIPTS", True, _flag)
    # History (relay.services.recorder, retention): unset keeps messages forever.
    history_retention_days: int | None = setting(
        "RELAY_HISTORY_RETENTION_DAYS", None, _positive_or_none
    )
    # POST /v1/chat: the model when none is named ("" = the first configured),
    # and how many characters of stored conversation go to the provider.
    default_model: str = setting("RELAY_DEFAULT_MODEL", "")
    chat_context_chars: int = setting("RELAY_CHAT_CONTEXT_CHARS", 24_000, _integer, minimum=0)
    # Parsed in from_env (it may name variables holding provider keys): see relay.upstreams.config.
    upstreams: tuple[Upstream, ...] = setting("RELAY_UPSTREAMS", (), None)

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read settings from `environ` (default: the process environment).

        `RELAY_ENV_FILE` names an optional KEY=VALUE file; real environment
        variables win over it.
        """
        source = dict(os.environ if environ is None else environ)
        env_file = source.get("RELAY_ENV_FILE")
        if env_file:
            source = {**read_env_file(Path(env_file)), **source}
        lookups = _Lookups(source)
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            name = spec.metadata["env"]
            if name in source and spec.metadata["parse"] is not None:
                values[spec.name] = _parse(spec, source[name])
        if source.get("RELAY_UPSTREAMS"):
            try:
                values["upstreams"] = parse_upstreams(source["RELAY_UPSTREAMS"], lookups)
            except UpstreamConfigError as exc:
                raise ConfigError(f"RELAY_UPSTREAMS: {exc}") from None
        known = {spec.metadata["env"] for spec in dataclasses.fields(cls)} | READ_ELSEWHERE
        # An upstream's api_key_env may name a RELAY_* variable: it is read too.
        unknown = sorted(
            name
            for name in source
            if name.startswith("RELAY_") and name not in known and name not in lookups.names
        )
        if unknown:
            # Names only: a misspelt secret's value must not reach the log.
            log.warning(
                "ignoring variables relay does not read (misspelt?): %s", ", ".join(unknown)
            )
        if not source.get("RELAY_STATE_DIR"):
            values["state_dir"] = source.get("STATE_DIRECTORY", "").split(":")[0] or (
                "/var/lib/relay" if values.get("env") == "production" else ".relay-state"
            )
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if not self.production:
            return
        for name, value in (
            ("RELAY_JWT_SECRET", self.jwt_secret),
            ("RELAY_ADMIN_TOKEN", self.admin_token),
            ("RELAY_IDENTITY_HASH_KEY", self.identity_hash_key),
        ):
            if len(value.encode()) < MIN_SECRET_BYTES:
                state = "is missing" if not value else "is shorter than 32 bytes"
                raise ConfigError(f"{name} {state}; production needs a random secret of 32+ bytes")
            if PLACEHOLDER in value.lower():
                raise ConfigError(
                    f"{name} still holds the example's {PLACEHOLDER!r} placeholder; "
                    "production needs a random secret (openssl rand -base64 48)"
                )

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


class _Lookups(Mapping[str, str]):
    """The environment, remembering which names were looked up in it."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = values
        self.names: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.names.add(name)
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def _parse(spec: dataclasses.Field[Any], raw: str) -> Any:
    name = spec.metadata["env"]
    try:
        value = spec.metadata["parse"](raw.strip())
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is invalid: {exc}") from None
    choices = spec.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {raw!r}")
    if "minimum" in spec.metadata and value < spec.metadata["minimum"]:
        raise ConfigError(f"{name} must be at least {spec.metadata['minimum']}")
    if "maximum" in spec.metadata and value > spec.metadata["maximum"]:
        raise ConfigError(f"{name} must be at most {spec.metadata['maximum']}")
    return value


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a systemd-style EnvironmentFile: KEY=VALUE lines, # comments, optional quotes."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"RELAY_ENV_FILE={path} cannot be read: {exc.strerror}") from None
    values: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep:
            raise ConfigError(f"RELAY_ENV_FILE={path}:{number} is not KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


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


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    return with_development_secrets(Settings.from_env(environ))
