"""How RELAY_UPSTREAMS entries are refused at start-up: credentials unshown, the upstream named."""

from __future__ import annotations

import orjson
import pytest

from relay.config import ConfigError, Settings

PASSWORD = "hunter2-Zq9"


@pytest.mark.parametrize(
    "base_url",
    [
        f"https://relay:{PASSWORD}@provider.example/v1",
        f"https://:{PASSWORD}@provider.example/v1",
        "https://relay@provider.example/v1",
    ],
)
@pytest.mark.parametrize("key", [{"api_key": "sk-test"}, {}], ids=["with-key", "without-key"])
def test_a_base_url_holding_credentials_is_refused_without_showing_it(base_url, key):
    upstream = {"name": "o", "base_url": base_url, "models": {"m": "m"}, **key}
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"RELAY_UPSTREAMS": orjson.dumps([upstream]).decode()})
    message = str(refused.value)
    assert message.startswith("RELAY_UPSTREAMS: upstream 'o': base_url must not hold")
    assert PASSWORD not in message and "provider.example" not in message


def test_an_at_sign_in_the_path_or_query_is_no_credential():
    upstream = {"name": "o", "base_url": "https://p.example/v1/a@b?x=y@z", "models": {"m": "m"}}
    settings = Settings.from_env({"RELAY_UPSTREAMS": orjson.dumps([upstream]).decode()})
    assert settings.upstreams[0].chat_completions_url.startswith("https://p.example/v1/a@b")


@pytest.mark.parametrize("field", ["timeout_s", "connect_timeout_s"])
def test_a_bad_timeout_names_its_upstream(field):
    # Among several upstreams, the operator must see which one to mend.
    upstreams = [
        {"name": "first", "base_url": "https://a.example/v1", "models": {"a": "a"}},
        {"name": "second", "base_url": "https://b.example/v1", "models": {"b": "b"}, field: "60"},
    ]
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"RELAY_UPSTREAMS": orjson.dumps(upstreams).decode()})
    assert str(refused.value) == (
        f"RELAY_UPSTREAMS: upstream 'second': {field} must be a positive number of seconds"
    )
