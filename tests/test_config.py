"""Settings come from an injected environment, are checked strictly and never show secrets."""

from __future__ import annotations

import dataclasses
import logging
import re
import stat
from pathlib import Path

import orjson
import pytest

from relay.config import READ_ELSEWHERE, ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]

STRONG = "p" * 32
PRODUCTION = {
    "RELAY_ENV": "production",
    "RELAY_JWT_SECRET": "j" * 40,
    "RELAY_ADMIN_TOKEN": "a" * 40,
    "RELAY_IDENTITY_HASH_KEY": "i" * 40,
    "RELAY_STATE_DIR": "/nonexistent/relay-state",
}


def test_defaults():
    settings = Settings.from_env({})
    assert settings.env == "development"
    assert settings.production is False
    assert settings.host == "127.0.0.1"
    assert settings.port == 8080
    assert settings.jwt_ttl == 3600
    assert settings.max_body_bytes == 4 * 1024 * 1024
    assert settings.log_level == "INFO"
    assert settings.database_url.startswith("postgresql://")
    assert settings.redis_url.startswith("redis://")
    assert settings.state_dir == ".relay-state"
    assert settings.jwt_secret == "" and settings.admin_token == ""


def test_values_are_read_and_parsed():
    settings = Settings.from_env(
        {
            "RELAY_HOST": "0.0.0.0",
            "RELAY_PORT": " 9000 ",
            "RELAY_DATABASE_URL": "postgresql://u@db/relay",
            "RELAY_REDIS_URL": "redis://cache:6379/1",
            "RELAY_JWT_TTL": "600",
            "RELAY_MAX_BODY_BYTES": "65536",
            "RELAY_LOG_LEVEL": "debug",
            "RELAY_STATE_DIR": "/tmp/somewhere",
            "RELAY_RUN_MIGRATIONS": "no",
            "UNRELATED": "ignored",
        }
    )
    assert (settings.host, settings.port) == ("0.0.0.0", 9000)
    assert settings.database_url == "postgresql://u@db/relay"
    assert settings.redis_url == "redis://cache:6379/1"
    assert settings.jwt_ttl == 600
    assert settings.max_body_bytes == 65536
    assert settings.log_level == "DEBUG"
    assert settings.state_dir == "/tmp/somewhere"
    assert settings.run_migrations is False


def test_settings_are_frozen():
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]


def test_production_with_strong_secrets_loads():
    settings = Settings.from_env(PRODUCTION)
    assert settings.production
    assert settings.state_dir == "/nonexistent/relay-state"


def test_production_state_dir_defaults_to_var_lib():
    env = {key: value for key, value in PRODUCTION.items() if key != "RELAY_STATE_DIR"}
    assert Settings.from_env(env).state_dir == "/var/lib/relay"
    systemd = {**env, "STATE_DIRECTORY": "/var/lib/relay-a:/var/lib/other"}
    assert Settings.from_env(systemd).state_dir == "/var/lib/relay-a"


@pytest.mark.parametrize("name", ["RELAY_JWT_SECRET", "RELAY_ADMIN_TOKEN"])
@pytest.mark.parametrize("value", [None, "", "tiny-s3cr3t", "x" * 31])
def test_production_refuses_weak_secrets(name, value):
    env = dict(PRODUCTION)
    if value is None:
        del env[name]
    else:
        env[name] = value
    with pytest.raises(ConfigError) as raised:
        load_settings(env)
    message = str(raised.value)
    assert name in message
    assert "missing" in message if not value else "shorter than 32 bytes" in message
    if value:
        assert value not in message.replace(name, "")


@pytest.mark.parametrize(
    "name", ["RELAY_JWT_SECRET", "RELAY_ADMIN_TOKEN", "RELAY_IDENTITY_HASH_KEY"]
)
@pytest.mark.parametrize(
    "value", ["change-me-to-a-random-secret-of-32-bytes", "x" * 32 + "CHANGE-ME"]
)
def test_production_refuses_placeholder_secrets(name, value):
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({**PRODUCTION, name: value})
    message = str(raised.value)
    assert message.startswith(f"{name} still holds the example's 'change-me' placeholder")
    assert value not in message
    # Development keeps accepting whatever it is given.
    assert Settings.from_env({name: value}).env == "development"


def names_of(kind: str) -> list[str]:
    return [spec.metadata["env"] for spec in dataclasses.fields(Settings) if spec.type == kind]


@pytest.mark.parametrize("name", names_of("bool"))
@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_flag_is_refused_not_read_as_false(name, value):
    with pytest.raises(ConfigError, match=f"^{name}=.* is invalid: expected true or false"):
        Settings.from_env({name: value})


@pytest.mark.parametrize("name", names_of("float"))
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity"])
def test_non_finite_numbers_are_refused(name, value):
    with pytest.raises(ConfigError, match=f"^{name}=.* is invalid: expected a finite number"):
        Settings.from_env({name: value})


@pytest.mark.parametrize(
    ("name", "default"), [("RELAY_JWT_AUDIENCE", "relay-api"), ("RELAY_JWT_ISSUER", "relay")]
)
@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_token_audience_or_issuer_is_refused(name, default, value):
    # An empty audience passed start-up, then every token relay issued was refused (401).
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({name: value})
    assert str(refused.value) == (
        f"{name}={value!r} is invalid: must not be empty (remove the line to keep {default})"
    )


@pytest.mark.parametrize(
    "word",
    [
        "a.example",  # passed start-up, then matched no Origin: CORS off without a word
        "localhost:3000",
        "https://app.example.com/app",
        "https://*.example.com",
        "https://user@app.example.com",
        "https://app.example.com?x",
        "https://app.example.com:80a",
        "null",
    ],
)
def test_a_cors_origin_that_is_no_origin_is_refused_by_name(word):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"RELAY_CORS_ORIGINS": f"https://ok.example {word}"})
    assert str(refused.value) == (
        f"RELAY_CORS_ORIGINS='https://ok.example {word}' is invalid: {word!r} is not an"
        " origin: scheme://host[:port], such as https://app.example.com, or * for any"
    )


def test_cors_origins_are_origins_or_a_star():
    given = (
        "https://App.Example.com, http://127.0.0.1:5173 http://[::1]:8080/ capacitor://localhost *"
    )
    assert Settings.from_env({"RELAY_CORS_ORIGINS": given}).cors_origins == (
        "https://App.Example.com",
        "http://127.0.0.1:5173",
        "http://[::1]:8080/",
        "capacitor://localhost",
        "*",
    )


def test_unknown_relay_names_are_warned_about_by_name_only(caplog, tmp_path: Path):
    env_file = tmp_path / "relay.env"
    env_file.write_text("RELAY_RECIEPTS=false\n")
    upstreams = (
        '[{"name": "p", "base_url": "https://p.example/v1", "api_key_env": "RELAY_P_KEY",'
        ' "models": {"m": "m"}}]'
    )
    with caplog.at_level(logging.WARNING, logger="relay.config"):
        Settings.from_env(
            {
                "RELAY_ENV_FILE": str(env_file),
                "RELAY_DRAIN_TIMOUT": "secret-looking-value",
                "RELAY_UPSTREAMS": upstreams,
                "RELAY_P_KEY": "sk-provider",
                "RELAY_DEV_DIR": ".dev",
                "OTHER_TOOL_SETTING": "1",
            }
        )
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage().endswith(": RELAY_DRAIN_TIMOUT, RELAY_RECIEPTS")
    assert "secret-looking-value" not in caplog.text and "sk-provider" not in caplog.text


def test_known_names_raise_no_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="relay.config"):
        Settings.from_env(
            {"RELAY_PORT": "9000", **dict.fromkeys(READ_ELSEWHERE - {"RELAY_ENV_FILE"}, "x")}
        )
    assert caplog.records == []


def test_names_read_elsewhere_are_the_ones_relay_and_its_tooling_read():
    # Any RELAY_* name in relay's code, tests or Makefile is a setting or listed as read
    # elsewhere, so the start-up warning never names one of relay's own variables;
    # and each listed name is still used. (This file and config.py only name them.)
    settings = {spec.metadata["env"] for spec in dataclasses.fields(Settings)}
    settings |= {
        spec.metadata["env"] + "_FILE"
        for spec in dataclasses.fields(Settings)
        if spec.metadata.get("file")
    }
    files = {ROOT / "Makefile", *ROOT.glob("relay/**/*.py"), *ROOT.glob("bench/**/*.py")}
    files |= set(ROOT.glob("tests/*.py"))
    files -= {ROOT / "relay" / "config.py", Path(__file__).resolve()}
    used = {name for path in files for name in re.findall(r"RELAY_[A-Z0-9_]+", path.read_text())}
    assert used - settings == READ_ELSEWHERE


@pytest.mark.parametrize(
    "name,value",
    [
        ("RELAY_PORT", "eighty"),
        ("RELAY_PORT", "70000"),
        ("RELAY_PORT", "-1"),
        ("RELAY_JWT_TTL", "1.5"),
        ("RELAY_JWT_TTL", "10"),
        ("RELAY_MAX_BODY_BYTES", "lots"),
        ("RELAY_HEALTH_TIMEOUT", "soon"),
        ("RELAY_MAX_ANSWER_SECONDS", "forever"),
        ("RELAY_MAX_ANSWER_SECONDS", "0.5"),
        ("RELAY_MAX_ANSWER_SECONDS", "999999999999"),  # past year 9999 as a tombstone's end
        ("RELAY_RUN_MIGRATIONS", "maybe"),
        ("RELAY_ENV", "staging"),
        ("RELAY_LOG_LEVEL", "LOUD"),
        ("RELAY_HOST", ""),  # aiohttp would listen on every interface
    ],
)
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


MISPLACED = "sk-MISPLACED-KEY-123"


@pytest.mark.parametrize(
    "env",
    [
        {
            "RELAY_UPSTREAMS": '{"name": "o", "base_url": "https://o.example/v1",'
            f' "api_key": "{MISPLACED}", "models": {{"m": "m"}}}}'
        },
        {"RELAY_UPSTREAMS": MISPLACED},
        {
            "RELAY_UPSTREAMS": '[{"name": "o", "base_url": "https://o.example/v1",'
            f' "api_key_env": "{MISPLACED}", "models": {{"m": "m"}}}}]'
        },
        {"RELAY_DATABASE_URL": f"postgresql://relay:{MISPLACED}%ZZ@127.0.0.1/relay"},
        # libpq reads this without complaint, and only fails to connect: it would pass
        # for a database that is down (exit 1, restarted for ever) instead of exit 2.
        {"RELAY_DATABASE_URL": f"postgresql://relay:{MISPLACED}@127.0.0.1:notaport/relay"},
        {"RELAY_DATABASE_URL": f"host=db port=99999 password={MISPLACED}"},
        {"RELAY_REDIS_URL": f"http://:{MISPLACED}@127.0.0.1:6379/0"},
        # Read from a file with its newline: no HTTP header can carry it (every
        # request was a 500).
        {
            "RELAY_UPSTREAMS": '[{"name": "o", "base_url": "https://o.example/v1",'
            ' "api_key_env": "O_KEY", "models": {"m": "m"}}]',
            "O_KEY": MISPLACED + "\n",
        },
    ],
    ids=[
        "one upstream, not a list",
        "a key for a path",
        "a key for a name",
        "a bad database url",
        "a database url with a bad port",
        "a connection string with a port out of range",
        "a bad redis url",
        "a provider key with its newline",
    ],
)
def test_a_setting_holding_a_secret_is_refused_without_showing_it(env):
    # Start-up errors reach the journal: a provider key or a password must not.
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(env)
    assert next(iter(env)) in str(refused.value)
    assert MISPLACED not in str(refused.value)


@pytest.mark.parametrize(
    "base_url",
    [
        "http:nohost",
        "https://o.example/v1#part",
        "ftp://o.example/v1",
        # A port that passed start-up, then made every chat a 500 (yarl refused it).
        "http://127.0.0.1:99999/v1",
        "http://o.example:80a/v1",
        "http://o.example:0/v1",
    ],
)
def test_an_upstream_base_url_relay_cannot_post_to_is_refused(base_url):
    upstreams = [{"name": "o", "base_url": base_url, "models": {"m": "m"}}]
    with pytest.raises(ConfigError, match="RELAY_UPSTREAMS: upstream 'o': base_url"):
        Settings.from_env({"RELAY_UPSTREAMS": orjson.dumps(upstreams).decode()})


@pytest.mark.parametrize(
    ("base_url", "url"),
    [
        ("https://o.example/v1/", "https://o.example/v1/chat/completions"),
        # A query (Azure's api-version, say) stays a query: it was glued to the path.
        (
            "https://o.example/openai/v1?api-version=1",
            "https://o.example/openai/v1/chat/completions?api-version=1",
        ),
        ("http://o.example/a%2Fb/v1", "http://o.example/a%2Fb/v1/chat/completions"),
    ],
)
def test_the_chat_completions_url_is_joined_to_the_base_urls_path(base_url, url):
    upstreams = [{"name": "o", "base_url": base_url, "models": {"m": "m"}}]
    settings = Settings.from_env({"RELAY_UPSTREAMS": orjson.dumps(upstreams).decode()})
    assert settings.upstreams[0].chat_completions_url == url


def test_files_that_are_not_utf8_are_refused_by_name(tmp_path: Path):
    latin1 = tmp_path / "latin1"
    latin1.write_bytes(b"RELAY_PORT=9000 # caf\xe9\n")
    with pytest.raises(ConfigError, match=r"RELAY_ENV_FILE=.* is not UTF-8"):
        Settings.from_env({"RELAY_ENV_FILE": str(latin1)})
    upstreams = tmp_path / "upstreams.json"
    upstreams.write_bytes(b"[\xff]")
    with pytest.raises(ConfigError, match=r"RELAY_UPSTREAMS: .*upstreams\.json is not UTF-8"):
        Settings.from_env({"RELAY_UPSTREAMS": str(upstreams)})


def test_env_file_is_read_and_real_environment_wins(tmp_path: Path):
    env_file = tmp_path / "relay.env"
    env_file.write_text(
        "# relay settings\n"
        "\n"
        "RELAY_PORT=9100\n"
        'RELAY_HOST="10.0.0.1"\n'
        "RELAY_JWT_TTL='900'\n"
        "RELAY_LOG_LEVEL=WARNING\n"
    )
    settings = Settings.from_env({"RELAY_ENV_FILE": str(env_file), "RELAY_LOG_LEVEL": "ERROR"})
    assert settings.port == 9100
    assert settings.host == "10.0.0.1"
    assert settings.jwt_ttl == 900
    assert settings.log_level == "ERROR"


def test_env_file_problems_name_the_variable(tmp_path: Path):
    with pytest.raises(ConfigError, match="RELAY_ENV_FILE"):
        Settings.from_env({"RELAY_ENV_FILE": str(tmp_path / "missing.env")})
    broken = tmp_path / "broken.env"
    broken.write_text("RELAY_PORT=1\nnot a setting\n")
    with pytest.raises(ConfigError, match=r"RELAY_ENV_FILE=.*broken.env:2"):
        Settings.from_env({"RELAY_ENV_FILE": str(broken)})


def test_development_secrets_are_generated_once_and_kept(tmp_path: Path):
    state = tmp_path / "state"
    env = {"RELAY_STATE_DIR": str(state)}

    first = load_settings(env)
    second = load_settings(env)

    assert len(first.jwt_secret) >= 32 and len(first.admin_token) >= 32
    assert first.jwt_secret != first.admin_token
    assert second.jwt_secret == first.jwt_secret
    assert second.admin_token == first.admin_token
    for name in ("jwt_secret", "admin_token"):
        path = state / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text().strip() == getattr(first, name)


def test_a_state_dir_relay_cannot_use_is_a_setting_error_not_a_traceback(tmp_path: Path):
    taken = tmp_path / "a-file"
    taken.write_text("not a directory")
    for state in (taken, taken / "below"):
        with pytest.raises(ConfigError, match=r"^RELAY_STATE_DIR: cannot keep jwt_secret in"):
            load_settings({"RELAY_STATE_DIR": str(state)})


def test_given_development_secrets_are_used_as_is(tmp_path: Path):
    env = {
        "RELAY_STATE_DIR": str(tmp_path / "state"),
        "RELAY_JWT_SECRET": STRONG,
        "RELAY_ADMIN_TOKEN": "short-is-fine-in-development",
    }
    settings = load_settings(env)
    assert settings.jwt_secret == STRONG
    assert settings.admin_token == "short-is-fine-in-development"
    assert not (tmp_path / "state" / "jwt_secret").exists()


def test_production_never_generates_secrets(tmp_path: Path):
    env = {**PRODUCTION, "RELAY_STATE_DIR": str(tmp_path / "state")}
    del env["RELAY_JWT_SECRET"]
    with pytest.raises(ConfigError, match="RELAY_JWT_SECRET"):
        load_settings(env)
    assert not (tmp_path / "state" / "jwt_secret").exists()


def test_repr_shows_no_secret(tmp_path: Path):
    settings = load_settings(
        {
            "RELAY_STATE_DIR": str(tmp_path / "state"),
            "RELAY_JWT_SECRET": "jwt-" + STRONG,
            "RELAY_ADMIN_TOKEN": "admin-" + STRONG,
        }
    )
    text = repr(settings) + str(settings)
    assert STRONG not in text
    assert "**********" in text
    generated = load_settings({"RELAY_STATE_DIR": str(tmp_path / "other")})
    assert generated.jwt_secret not in repr(generated)
    assert generated.admin_token not in repr(generated)


def _secret_files(tmp_path: Path, **values: str) -> dict[str, str]:
    """Each value written to its own file (as systemd's LoadCredential or a Docker secret
    leaves it: one line), named by the setting's _FILE variable."""
    variables = {}
    for name, value in values.items():
        path = tmp_path / name.lower()
        path.write_text(value + "\n")
        path.chmod(0o600)
        variables[f"{name}_FILE"] = str(path)
    return variables


def test_secrets_and_urls_can_be_read_from_files(tmp_path: Path, caplog):
    files = _secret_files(
        tmp_path,
        RELAY_JWT_SECRET="f" * 40,
        RELAY_ADMIN_TOKEN="g" * 40,
        RELAY_IDENTITY_HASH_KEY="h" * 40,
        RELAY_METRICS_TOKEN="m" * 40,
        RELAY_DATABASE_URL="postgresql://relay:pw@db:5432/relay",
        RELAY_REDIS_URL="redis://:pw@cache:6379/0",
    )
    with caplog.at_level(logging.WARNING, logger="relay.config"):
        settings = Settings.from_env({"RELAY_ENV": "production", **files})
    assert caplog.records == []  # the _FILE names are read, not unknown
    assert settings.jwt_secret == "f" * 40  # the file's newline is not part of it
    assert (settings.admin_token, settings.identity_hash_key) == ("g" * 40, "h" * 40)
    assert settings.metrics_token == "m" * 40
    assert settings.database_url == "postgresql://relay:pw@db:5432/relay"
    assert settings.redis_url == "redis://:pw@cache:6379/0"


def test_a_setting_given_both_ways_is_refused(tmp_path: Path):
    files = _secret_files(tmp_path, RELAY_JWT_SECRET="f" * 40)
    with pytest.raises(ConfigError, match=r"^set RELAY_JWT_SECRET or RELAY_JWT_SECRET_FILE, not"):
        Settings.from_env({**PRODUCTION, **files})


def test_an_unreadable_secret_file_names_the_variable_never_the_content(tmp_path: Path):
    base = {key: value for key, value in PRODUCTION.items() if key != "RELAY_ADMIN_TOKEN"}
    missing = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"^RELAY_ADMIN_TOKEN_FILE=.*nope cannot be read"):
        Settings.from_env({**base, "RELAY_ADMIN_TOKEN_FILE": missing})
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfesecret-bytes")
    with pytest.raises(ConfigError, match="is not UTF-8 text") as caught:
        Settings.from_env({**base, "RELAY_ADMIN_TOKEN_FILE": str(binary)})
    assert "secret-bytes" not in str(caught.value)
    short = _secret_files(tmp_path, RELAY_ADMIN_TOKEN="short-secret")
    with pytest.raises(ConfigError, match=r"^RELAY_ADMIN_TOKEN is shorter") as caught:
        Settings.from_env({**base, **short})
    assert "short-secret" not in str(caught.value)


def test_only_secrets_and_urls_are_read_from_files(tmp_path: Path, caplog):
    port = tmp_path / "port"
    port.write_text("9000\n")
    with caplog.at_level(logging.WARNING, logger="relay.config"):
        settings = Settings.from_env({"RELAY_PORT_FILE": str(port)})
    assert settings.port == 8080
    [record] = caplog.records
    assert record.getMessage().endswith(": RELAY_PORT_FILE")


KEYED_UPSTREAMS = orjson.dumps(
    [
        {
            "name": "o",
            "base_url": "https://o.example/v1",
            "api_key_env": "O_KEY",
            "models": {"m": "m"},
        }
    ]
).decode()


def test_a_missing_provider_key_variable_is_refused_by_name(tmp_path: Path):
    # relay serve and relay dev forward: they refuse to start without the key.
    env = {"RELAY_UPSTREAMS": KEYED_UPSTREAMS, "RELAY_STATE_DIR": str(tmp_path)}
    with pytest.raises(ConfigError, match=r"^RELAY_UPSTREAMS: upstream 'o': api_key_env 'O_KEY'"):
        load_settings(env)
    settings = load_settings({**env, "O_KEY": "sk-o"})
    assert settings.upstreams[0].api_key == "sk-o"


def test_settings_without_provider_keys_need_no_key_variable(tmp_path: Path):
    # relay clients and relay migrate never forward: a shell without the key runs them.
    env = {"RELAY_UPSTREAMS": KEYED_UPSTREAMS, "RELAY_STATE_DIR": str(tmp_path)}
    settings = load_settings(env, provider_keys=False)
    # No upstreams at all, rather than one without its key: nothing built from
    # these settings can forward.
    assert settings.upstreams == ()
    # Given or not, the key is not read: one no header could carry is no reason to refuse.
    assert load_settings({**env, "O_KEY": "sk-o\n"}, provider_keys=False).upstreams == ()


@pytest.mark.parametrize(
    "upstreams",
    [
        "[{",
        '[{"name": "o", "base_url": "ftp://o.example", "api_key_env": "O_KEY",'
        ' "models": {"m": "m"}}]',
        '[{"name": "o", "base_url": "https://o.example/v1", "api_key_env": "not a name",'
        ' "models": {"m": "m"}}]',
    ],
    ids=["not JSON", "a bad base_url", "a bad variable name"],
)
def test_settings_without_provider_keys_still_check_the_upstreams(upstreams):
    # The same file serves relay serve: relay migrate, the documented check of the
    # settings, keeps catching a mistake in it before systemd does.
    with pytest.raises(ConfigError, match=r"^RELAY_UPSTREAMS: "):
        Settings.from_env({"RELAY_UPSTREAMS": upstreams}, provider_keys=False)


@pytest.mark.parametrize("form", ["RELAY_O_KEY", "RELAY_O_KEY_FILE"])
@pytest.mark.parametrize("provider_keys", [False, True])
def test_an_unread_provider_key_variable_is_not_called_unknown(
    caplog, tmp_path: Path, form: str, provider_keys: bool
):
    upstreams = KEYED_UPSTREAMS.replace('"O_KEY"', '"RELAY_O_KEY"')
    key = tmp_path / "key"
    key.write_text("sk-o\n")
    value = str(key) if form.endswith("_FILE") else "sk-o"
    with caplog.at_level(logging.WARNING, logger="relay.config"):
        Settings.from_env({"RELAY_UPSTREAMS": upstreams, form: value}, provider_keys=provider_keys)
    assert caplog.records == []
