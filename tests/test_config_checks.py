"""Settings an operator can get wrong without noticing: empty secret files, weak or shared
secrets, limits of 0, values too large to mean anything, and what start-up says."""

from __future__ import annotations

import dataclasses
import logging
from itertools import combinations
from pathlib import Path

import pytest

from relay.config import ConfigError, Secret, Settings, load_settings
from relay.config_notes import mode_line, production_warnings
from relay.config_values import integer, parse_value, setting
from tests.test_config import PRODUCTION, names_of

SECRET_VALUE = "s3cret-" + "v" * 40
FROM_FILES = [
    spec.metadata["env"] for spec in dataclasses.fields(Settings) if spec.metadata.get("file")
]


@pytest.mark.parametrize("content", ["", "\n", " \r\n"], ids=["empty", "a newline", "blanks"])
@pytest.mark.parametrize("env", ["development", "production"])
@pytest.mark.parametrize("name", FROM_FILES)
def test_a_file_setting_that_reads_as_empty_is_refused_by_its_file_variable(
    tmp_path: Path, name: str, env: str, content: str
):
    # Read as "not set", an empty credential left /metrics open in production and had
    # development generate a JWT secret in place of the one meant.
    path = tmp_path / "credential"
    path.write_text(content)
    environ = {**PRODUCTION, "RELAY_ENV": env, "RELAY_STATE_DIR": str(tmp_path / "state")}
    environ.pop(name, None)
    with pytest.raises(ConfigError) as refused:
        load_settings({**environ, f"{name}_FILE": str(path)})
    assert str(refused.value) == f"{name}_FILE={path} is empty"
    assert not (tmp_path / "state").exists()  # nothing generated in its place


@pytest.mark.parametrize("value", ["x", "m" * 31, "change-me-" + "m" * 30])
def test_production_holds_a_given_metrics_token_to_the_rules_of_secrets(value: str):
    with pytest.raises(
        ConfigError, match=r"^RELAY_METRICS_TOKEN (is shorter|still holds)"
    ) as refused:
        Settings.from_env({**PRODUCTION, "RELAY_METRICS_TOKEN": value})
    assert value not in str(refused.value).replace("RELAY_METRICS_TOKEN", "")
    # Optional all the same, and development takes what it is given.
    assert Settings.from_env(PRODUCTION).metrics_token == ""
    assert Settings.from_env({"RELAY_METRICS_TOKEN": value}).metrics_token == value


SHARED = [
    *combinations(
        ["RELAY_JWT_SECRET", "RELAY_ADMIN_TOKEN", "RELAY_IDENTITY_HASH_KEY", "RELAY_METRICS_TOKEN"],
        2,
    ),
    ("RELAY_JWT_SECRET", "RELAY_JWT_PREVIOUS_SECRET"),
    ("RELAY_ADMIN_TOKEN", "RELAY_JWT_PREVIOUS_SECRET"),
]


@pytest.mark.parametrize(("first", "second"), SHARED)
def test_production_refuses_one_value_for_two_secrets(first: str, second: str):
    # The admin token as JWT secret lets its holder forge tokens (and the other way
    # round); a previous JWT secret equal to the current one rotates nothing.
    environ = {**PRODUCTION, first: SECRET_VALUE, second: SECRET_VALUE}
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(environ)
    message = str(refused.value)
    named, _, rest = message.partition(" hold the same value; ")
    assert named in (f"{first} and {second}", f"{second} and {first}")
    assert rest == "production needs a different random secret for each"
    assert SECRET_VALUE not in message
    assert Settings.from_env({**environ, "RELAY_ENV": "development"}).env == "development"


def test_secrets_shared_through_files_are_refused_too(tmp_path: Path):
    path = tmp_path / "one"
    path.write_text(SECRET_VALUE + "\n")
    environ = {**PRODUCTION, "RELAY_JWT_SECRET": SECRET_VALUE}
    del environ["RELAY_ADMIN_TOKEN"]
    with pytest.raises(ConfigError, match=r"^RELAY_JWT_SECRET and RELAY_ADMIN_TOKEN hold the same"):
        Settings.from_env({**environ, "RELAY_ADMIN_TOKEN_FILE": str(path)})


GLOBAL_LIMITS = [
    spec.metadata["env"]
    for spec in dataclasses.fields(Settings)
    if spec.name.startswith("rate_limit_") and spec.type == "int"
]


def test_every_global_limit_is_covered():
    assert len(GLOBAL_LIMITS) == 5


@pytest.mark.parametrize("name", GLOBAL_LIMITS)
def test_a_global_rate_limit_of_zero_is_refused_saying_how_to_turn_limits_off(name: str):
    # Read as "unlimited", 0 would have refused every client, silently.
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({name: "0"})
    assert str(refused.value) == (
        f"{name} must be at least 1 (0 would refuse every request, not lift the limit;"
        " RELAY_RATE_LIMITS=off turns limits off)"
    )
    assert getattr(Settings.from_env({name: "1"}), _field(name)) == 1


@pytest.mark.parametrize(
    ("name", "largest", "too_large"),
    [
        ("RELAY_HISTORY_RETENTION_DAYS", "36500", "100000000"),
        ("RELAY_HEALTH_TIMEOUT", "300", "300.5"),
        ("RELAY_REDIS_TIMEOUT", "300", "3600"),
        ("RELAY_DATABASE_TIMEOUT", "300", "5000"),
        ("RELAY_MAX_BODY_BYTES", str(64 * 1024 * 1024), str(64 * 1024 * 1024 + 1)),
        ("RELAY_DATABASE_POOL_SIZE", "1000", "1001"),
        ("RELAY_DRAIN_TIMEOUT", "3600", "86400"),
        ("RELAY_CHAT_CONTEXT_CHARS", "4194304", "10000000000"),
    ],
)
def test_values_too_large_to_mean_anything_are_refused(name: str, largest: str, too_large: str):
    assert getattr(Settings.from_env({name: largest}), _field(name)) == float(largest)
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({name: too_large})
    assert str(refused.value) == f"{name} must be at most {largest}"


NOT_WHOLE = ["", "  ", "ten", "1.5", "0x10"]


@pytest.mark.parametrize(
    ("name", "value"),
    [(name, value) for name in names_of("int") for value in NOT_WHOLE]
    # Empty is unset there: history kept forever.
    + [("RELAY_HISTORY_RETENTION_DAYS", value) for value in NOT_WHOLE if value.strip()],
)
def test_a_bad_whole_number_is_refused_in_relays_words(name: str, value: str):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({name: value})
    assert str(refused.value) == f"{name} must be a whole number, got {value!r}"


@pytest.mark.parametrize("value", ["", "soon", "1,5"])
@pytest.mark.parametrize("name", names_of("float"))
def test_a_bad_number_is_refused_in_relays_words(name: str, value: str):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({name: value})
    assert str(refused.value) == f"{name} must be a number, got {value!r}"


def test_a_bad_number_read_from_a_file_is_not_quoted():
    # No whole number is read from a file yet; one that was might be a secret.
    spec = setting("RELAY_JWT_TTL", 0, integer, file=True)
    with pytest.raises(ConfigError) as refused:
        parse_value(spec, SECRET_VALUE)
    assert str(refused.value) == "RELAY_JWT_TTL must be a whole number"


def test_start_up_names_the_mode_and_the_secrets_development_generated(tmp_path: Path):
    given = load_settings(
        {"RELAY_STATE_DIR": str(tmp_path / "state"), "RELAY_ADMIN_TOKEN": SECRET_VALUE}
    )
    line = mode_line(given)
    assert line == (
        f"development mode; secrets relay made and keeps in {tmp_path / 'state'}:"
        " RELAY_IDENTITY_HASH_KEY, RELAY_JWT_SECRET"
    )
    assert given.jwt_secret not in line and SECRET_VALUE not in line
    assert mode_line(Settings.from_env(PRODUCTION)) == "production mode"


def test_production_warns_of_each_protection_turned_off():
    settings = Settings.from_env(PRODUCTION)
    [no_upstreams] = production_warnings(settings)
    assert no_upstreams.startswith("RELAY_UPSTREAMS names no provider")
    off = production_warnings(settings.replace(rate_limits=False, receipts=False))
    assert [warning.split(":")[0] for warning in off] == [
        "RELAY_RATE_LIMITS is off",
        "RELAY_RECEIPTS is off",
        "RELAY_UPSTREAMS names no provider",
    ]
    development = Settings.from_env({"RELAY_RATE_LIMITS": "off", "RELAY_RECEIPTS": "off"})
    assert production_warnings(development) == []


async def test_production_start_up_logs_the_mode_and_every_warning(
    make_client, make_settings, caplog
):
    settings = make_settings(
        env="production",
        identity_hash_key=Secret("i" * 32),
        jwt_secret=Secret("j" * 32),
        rate_limits=False,
        receipts=False,
        upstreams=(),
    )
    with caplog.at_level(logging.INFO):
        http = await make_client(settings)
    messages = [record.getMessage() for record in caplog.records]
    assert "production mode" in messages
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for start in ("RELAY_RATE_LIMITS is off", "RELAY_RECEIPTS is off", "RELAY_UPSTREAMS names"):
        assert any(message.startswith(start) for message in warned), start
    # The attestation warning no longer speaks of receipts being signed: none are.
    [none] = [message for message in warned if message.startswith("RELAY_ATTESTATION=none")]
    assert "receipts are off" in none and "receipts are signed" not in none
    health = await (await http.get("/health")).json()
    assert health["attestation"]["warning"] == none


async def test_development_start_up_logs_its_mode_and_no_production_warning(
    make_client, make_settings, caplog
):
    with caplog.at_level(logging.INFO):
        await make_client(make_settings(rate_limits=False, receipts=False, upstreams=()))
    assert "development mode" in [record.getMessage() for record in caplog.records]
    assert not [
        r for r in caplog.records if r.name == "relay.config" and r.levelno >= logging.WARNING
    ]


def _field(variable: str) -> str:
    [name] = [
        spec.name for spec in dataclasses.fields(Settings) if spec.metadata["env"] == variable
    ]
    return name
