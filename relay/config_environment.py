"""Where settings come from: the environment, an optional KEY=VALUE file, and
which `RELAY_*` names in them relay does not read (misspellings, most likely)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from relay.config_values import ConfigError
from relay.env_file import EnvFileError, parse_env_file

log = logging.getLogger("relay.config")

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


def gather(environ: Mapping[str, str] | None = None) -> Lookups:
    """`environ` (default: the process environment) over the file `RELAY_ENV_FILE`
    names, if any: real environment variables win over the file."""
    source = dict(os.environ if environ is None else environ)
    env_file = source.get("RELAY_ENV_FILE")
    if env_file:
        source = {**read_env_file(Path(env_file)), **source}
    return Lookups(source)


class Lookups(Mapping[str, str]):
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


FILE_SUFFIX = "_FILE"


@dataclass(frozen=True)
class Given:
    """A value, and the variable it came from: `NAME`, or `NAME_FILE=<path>` for a file's."""

    value: str
    origin: str


def variable_or_file(source: Mapping[str, str], name: str) -> Given | None:
    """`name`'s value, or the text of the file `<name>_FILE` names (a systemd credential,
    a Docker secret) without the whitespace around it, so its line end (CRLF too) is not
    part of it; None when neither is set. Giving both, or a file that holds nothing but
    whitespace, is refused."""
    path = source.get(name + FILE_SUFFIX)
    if not path:
        value = source.get(name)
        return None if value is None else Given(value, name)
    origin = f"{name}{FILE_SUFFIX}={path}"
    if name in source:
        raise ConfigError(f"set {name} or {name}{FILE_SUFFIX}, not both")
    try:
        # Never quoted in an error: the file holds a secret.
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{origin} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{origin} is not UTF-8 text") from None
    if not value:
        # Not "unset": a credential that did not arrive must not leave /metrics open,
        # nor let development generate a secret in its place.
        raise ConfigError(f"{origin} is empty")
    return Given(value, origin)


def pass_over(source: Mapping[str, str], name: str) -> None:
    """Look `name` and `<name>_FILE` up without reading either, for a command that does
    not use them: neither is called unknown, and the file (which perhaps only the
    service may read) is not opened."""
    source.get(name)
    source.get(name + FILE_SUFFIX)


def raw_setting(source: Lookups, name: str, from_file: bool) -> str | None:
    """The raw value of `name`: its variable, or for a setting read from files, the text
    of the file `<name>_FILE` names; None when neither is set."""
    if not from_file:
        return source.get(name)
    given = variable_or_file(source, name)
    return None if given is None else given.value


def warn_unknown(source: Lookups, settings: Iterable[str]) -> None:
    """Name, in one warning, the RELAY_* variables nothing reads. An upstream's
    api_key_env may name a RELAY_* variable: looked up, it counts as read."""
    known = set(settings) | READ_ELSEWHERE
    unknown = sorted(
        name
        for name in source
        if name.startswith("RELAY_") and name not in known and name not in source.names
    )
    if unknown:
        # Names only: a misspelt secret's value must not reach the log.
        log.warning("ignoring variables relay does not read (misspelt?): %s", ", ".join(unknown))


def read_env_file(path: Path) -> dict[str, str]:
    """The settings in a systemd EnvironmentFile, read by systemd's rules (relay.env_file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"RELAY_ENV_FILE={path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"RELAY_ENV_FILE={path} is not UTF-8 text") from None
    try:
        return parse_env_file(text)
    except EnvFileError as exc:
        raise ConfigError(f"RELAY_ENV_FILE={path}:{exc.line} {exc}") from None
