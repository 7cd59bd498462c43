"""A provider key named by api_key_env may come from the file `<NAME>_FILE` names (systemd's
LoadCredential=, a Docker secret), read by the very rules of relay's own secrets."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from relay.config import ConfigError, Settings, load_settings

KEY = "sk-proj-" + "k" * 40


UPSTREAMS = orjson.dumps(
    [{"name": "o", "base_url": "https://o.example", "api_key_env": "O_KEY", "models": {"m": "m"}}]
).decode()


def key_file(tmp_path: Path, content: str | bytes, name: str = "o_key") -> str:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    path.chmod(0o600)
    return str(path)


@pytest.mark.parametrize("line_end", ["", "\n", "\r\n", "  \r\n\n"])
def test_the_key_is_read_from_the_file_without_its_line_end(tmp_path: Path, line_end: str):
    path = key_file(tmp_path, KEY + line_end)
    state = str(tmp_path / "state")  # development secrets: not the checkout's .relay-state
    settings = load_settings(
        {"RELAY_UPSTREAMS": UPSTREAMS, "O_KEY_FILE": path, "RELAY_STATE_DIR": state}
    )
    [upstream] = settings.upstreams
    assert upstream.api_key == KEY
    assert upstream.request_headers["Authorization"] == f"Bearer {KEY}"


def test_a_key_file_is_read_as_relay_reads_its_own_secret_files(tmp_path: Path):
    # One content, two readers: the provider key and the JWT secret come out the same.
    content = f" {KEY}\r\n"
    environ = {
        "RELAY_UPSTREAMS": UPSTREAMS,
        "O_KEY_FILE": key_file(tmp_path, content),
        "RELAY_JWT_SECRET_FILE": key_file(tmp_path, content, "jwt_secret"),
    }
    settings = Settings.from_env(environ)
    assert settings.upstreams[0].api_key == settings.jwt_secret == KEY


def test_a_key_given_both_ways_is_refused_as_relay_refuses_its_own(tmp_path: Path):
    path = key_file(tmp_path, KEY + "\n")
    both = {"RELAY_UPSTREAMS": UPSTREAMS, "O_KEY": KEY, "O_KEY_FILE": path}
    with pytest.raises(ConfigError) as caught:
        load_settings(both)
    assert str(caught.value) == "RELAY_UPSTREAMS: upstream 'o': set O_KEY or O_KEY_FILE, not both"
    assert KEY not in str(caught.value)
    # The same words relay's own secrets use.
    own = {"RELAY_JWT_SECRET": KEY, "RELAY_JWT_SECRET_FILE": path}
    with pytest.raises(ConfigError, match=r"^set RELAY_JWT_SECRET or RELAY_JWT_SECRET_FILE, not"):
        load_settings(own)


def test_an_empty_file_variable_leaves_the_variable_in_charge(tmp_path: Path):
    # As for relay's own: `NAME_FILE=` (empty) is not set.
    environ = {"RELAY_UPSTREAMS": UPSTREAMS, "O_KEY": KEY, "O_KEY_FILE": ""}
    settings = load_settings({**environ, "RELAY_STATE_DIR": str(tmp_path / "state")})
    assert settings.upstreams[0].api_key == KEY


def test_an_unreadable_key_file_names_the_variable_never_the_key(tmp_path: Path):
    missing = str(tmp_path / "nope")
    with pytest.raises(ConfigError) as caught:
        load_settings({"RELAY_UPSTREAMS": UPSTREAMS, "O_KEY_FILE": missing})
    assert str(caught.value) == (
        f"RELAY_UPSTREAMS: upstream 'o': O_KEY_FILE={missing} cannot be read:"
        " No such file or directory"
    )
    binary = key_file(tmp_path, b"\xff\xfe" + KEY.encode(), "binary")
    with pytest.raises(ConfigError) as caught:
        load_settings({"RELAY_UPSTREAMS": UPSTREAMS, "O_KEY_FILE": binary})
    assert (
        str(caught.value) == f"RELAY_UPSTREAMS: upstream 'o': O_KEY_FILE={binary} is not UTF-8 text"
    )


@pytest.mark.parametrize("content", ["", "\n", " \r\n"])
def test_an_empty_key_file_is_refused_by_name(tmp_path: Path, content: str):
    path = key_file(tmp_path, content)
    with pytest.raises(ConfigError) as caught:
        load_settings({"RELAY_UPSTREAMS": UPSTREAMS, "O_KEY_FILE": path})
    assert str(caught.value) == f"RELAY_UPSTREAMS: upstream 'o': O_KEY_FILE={path} is empty"


def test_a_key_file_no_header_could_carry_is_refused_without_quoting_it(tmp_path: Path):
    path = key_file(tmp_path, f"{KEY}\r{KEY}\n")
    with pytest.raises(ConfigError, match=r"^RELAY_UPSTREAMS: upstream 'o': the provider key") as e:
        load_settings({"RELAY_UPSTREAMS": UPSTREAMS, "O_KEY_FILE": path})
    assert KEY not in str(e.value)


def test_neither_form_set_is_refused_naming_both():
    # relay serve says the same (tests/test_cli_provider_keys.py).
    with pytest.raises(ConfigError) as caught:
        load_settings({"RELAY_UPSTREAMS": UPSTREAMS})
    assert str(caught.value) == (
        "RELAY_UPSTREAMS: upstream 'o': api_key_env 'O_KEY' is not set, nor O_KEY_FILE"
    )


def test_without_provider_keys_the_key_file_is_not_read(tmp_path: Path):
    # relay clients and relay migrate: a credential only the service can read is no obstacle.
    # (That its RELAY_* name is not called unknown: test_config.py.)
    environ = {
        "RELAY_UPSTREAMS": UPSTREAMS,
        "O_KEY_FILE": str(tmp_path / "readable-only-by-the-service"),
        "RELAY_STATE_DIR": str(tmp_path / "state"),
    }
    assert load_settings(environ, provider_keys=False).upstreams == ()
