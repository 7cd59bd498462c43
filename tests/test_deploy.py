"""Deployment files: the env example documents every setting; systemd and compose accept theirs."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from relay.commands.serve import GRACE_SECONDS, SHUTDOWN_SECONDS
from relay.config import ConfigError, Settings, read_env_file
from relay.upstreams.config import DEFAULT_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
EXAMPLE = DEPLOY / "relay.env.example"
UNIT = DEPLOY / "relay.service"
# Read by Settings.from_env itself rather than being a field.
NOT_FIELDS = {"RELAY_ENV_FILE"}
SECRETS = ("RELAY_JWT_SECRET", "RELAY_ADMIN_TOKEN", "RELAY_IDENTITY_HASH_KEY")
# "#NAME=value" shows the default; "...: NAME=value" or "# NAME=value" in a
# comment's prose is an example or advice.
_DEFAULT = re.compile(r"^#(RELAY_[A-Z0-9_]+)=(.*)$")
_EXAMPLE = re.compile(r"^#(?:.*?:)?\s+(RELAY_[A-Z0-9_]+)=(.*)$")


def commented(pattern: re.Pattern[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in EXAMPLE.read_text().splitlines():
        if match := pattern.match(line.strip()):
            found[match[1]] = match[2]
    return found


def filled() -> dict[str, str]:
    """The example's active lines with its placeholder secrets replaced, as an operator would."""
    active = read_env_file(EXAMPLE)
    return {**active, **{name: f"{name.lower()}-{'r' * 40}" for name in SECRETS}}


def stop_budget(drain_timeout: float) -> float:
    """The longest a stop may take: drain, final events, runner shutdown, last history commit."""
    return drain_timeout + GRACE_SECONDS + SHUTDOWN_SECONDS + Settings().database_timeout


def unit_directives() -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            directives.setdefault(key.strip(), []).append(value.strip())
    return directives


def test_env_example_documents_every_setting():
    settings = {spec.metadata["env"] for spec in dataclasses.fields(Settings)}
    # Each setting is an active line or a commented default, not only an example.
    names = set(read_env_file(EXAMPLE)) | set(commented(_DEFAULT))
    assert not settings - names, f"document these in {EXAMPLE.name}: {sorted(settings - names)}"
    stale = (names | set(commented(_EXAMPLE))) - settings - NOT_FIELDS
    assert not stale, f"{EXAMPLE.name} documents settings relay does not read: {sorted(stale)}"


def test_readme_names_every_setting_in_its_table():
    settings = {spec.metadata["env"] for spec in dataclasses.fields(Settings)}
    section = (ROOT / "README.md").read_text().split("\n## Configuration\n", 1)[1]
    table = section.split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `RELAY_")]
    named = {
        name for row in rows for name in re.findall(r"`(RELAY_[A-Z0-9_]+)`", row.split("|")[1])
    }
    assert not settings - named, f"the README's table leaves out {sorted(settings - named)}"
    assert not named - settings, f"the README's table names {sorted(named - settings)}"


def test_env_example_is_refused_until_its_secrets_are_replaced():
    active = read_env_file(EXAMPLE)
    for name in SECRETS:
        assert "change-me" in active[name]
        left = {**filled(), name: active[name]}
        with pytest.raises(ConfigError, match=f"^{name} still holds the example's"):
            Settings.from_env(left)
    settings = Settings.from_env(filled())
    assert settings.production


def test_env_example_comments_show_the_true_defaults():
    base = Settings.from_env(filled())
    fields = {spec.metadata["env"]: spec.name for spec in dataclasses.fields(Settings)}
    wrong = {}
    for name, value in commented(_DEFAULT).items():
        shown = getattr(Settings.from_env({**filled(), name: value}), fields[name])
        if shown != getattr(base, fields[name]):
            wrong[name] = value
    assert not wrong, f"{EXAMPLE.name}: these commented lines are not the defaults: {wrong}"


def test_env_example_examples_are_valid():
    examples = commented(_EXAMPLE)
    assert {"RELAY_TRUSTED_PROXIES", "RELAY_UPSTREAMS", "RELAY_ATTESTATION"} <= set(examples)
    # Each with the example upstreams, which the model names of the others are of.
    context = {**filled(), "RELAY_UPSTREAMS": examples["RELAY_UPSTREAMS"]}
    for name, value in examples.items():
        if name not in NOT_FIELDS:
            Settings.from_env({**context, name: value, "OPENAI_API_KEY": "sk-example"})


def test_unit_has_the_promised_shape():
    directives = unit_directives()
    for key, value in {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "User": "relay",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "StateDirectory": "relay",
        "EnvironmentFile": "/etc/relay/relay.env",
        "ExecStart": "/opt/relay/venv/bin/relay serve",
    }.items():
        assert directives.get(key) == [value], key
    assert int(directives["WatchdogSec"][0]) > 0
    stop = int(directives["TimeoutStopSec"][0].removesuffix("s"))
    assert stop > stop_budget(Settings().drain_timeout)
    # ProcSubset=pid would hide /proc/stat and with it the process_* metrics.
    assert directives["ProtectProc"] == ["invisible"]
    assert "ProcSubset" not in directives


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is missing: `make verify-deploy` installs it (apt: systemd)")
    return path


def systemd_verify(tmp_path: Path, drop_in: str = "") -> None:
    """`systemd-analyze verify` the unit (with `drop_in` as relay.service.d/drop-in.conf)
    and require it silent: verify exits 0 on unknown keys and bad values, printing them."""
    # verify checks that ExecStart exists, so build a root holding the unit,
    # a stand-in for the venv's relay and systemd's own units.
    root = tmp_path / "root"
    relay = root / "opt/relay/venv/bin/relay"
    relay.parent.mkdir(parents=True)
    relay.write_text("#!/bin/sh\n")
    relay.chmod(0o755)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    shutil.copy(UNIT, units / "relay.service")
    if drop_in:
        (units / "relay.service.d").mkdir()
        (units / "relay.service.d" / "drop-in.conf").write_text(drop_in)
    system_units = next(
        p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()
    )
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    result = subprocess.run(
        [systemd_analyze(), "verify", f"--root={root}", "relay.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == result.stderr == "", result.stdout + result.stderr


def test_systemd_accepts_the_unit(tmp_path):
    systemd_verify(tmp_path)


def test_systemd_accepts_the_credentials_drop_in_the_guide_shows(tmp_path):
    guide = (DEPLOY / "README.md").read_text()
    [drop_in] = re.findall(r"```ini\n(.*?)```", guide, re.DOTALL)
    assert "LoadCredential=jwt_secret:" in drop_in and "RELAY_JWT_SECRET_FILE=%d/" in drop_in
    systemd_verify(tmp_path, drop_in)


def compose_command() -> list[str]:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is None:
        pytest.fail("neither `docker compose` nor docker-compose: `make verify-deploy` installs it")
    return [legacy]


def test_compose_accepts_the_compose_file():
    result = subprocess.run(
        [*compose_command(), "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr


def test_image_defaults_to_production_and_keeps_its_state():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ENV .*\bRELAY_ENV=production\b", dockerfile, re.M)
    state_dir = re.search(r"^ENV .*\bRELAY_STATE_DIR=(\S+)", dockerfile, re.M)
    assert state_dir, "the image names its RELAY_STATE_DIR"
    assert re.search(rf"^VOLUME {re.escape(state_dir[1])}$", dockerfile, re.M)

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    relay = compose["services"]["relay"]
    # Development only because compose says so, with its example secrets.
    assert relay["environment"]["RELAY_ENV"] == "development"
    assert relay["restart"] == "unless-stopped"
    mounts = [mount.partition(":") for mount in relay["volumes"]]
    assert any(
        source in compose["volumes"] and target == state_dir[1] for source, _, target in mounts
    ), "the state dir is a named volume"
    grace = int(relay["stop_grace_period"].removesuffix("s"))
    assert grace > stop_budget(float(relay["environment"]["RELAY_DRAIN_TIMEOUT"]))


def test_nginx_example_streams_unbuffered():
    conf = (DEPLOY / "nginx.conf").read_text()
    # relay's own 504 (in OpenAI's error shape) must come before nginx gives up.
    read_timeout = re.search(r"proxy_read_timeout (\d+)s;", conf)
    assert read_timeout and int(read_timeout.group(1)) > DEFAULT_TIMEOUT_S
    # A whole answer sends nothing until it is whole, for up to RELAY_MAX_ANSWER_SECONDS.
    assert int(read_timeout.group(1)) > Settings().max_answer_seconds
    for directive in (
        "proxy_buffering off;",
        "X-Forwarded-For $proxy_add_x_forwarded_for;",
        # Neither log may quote a query string (search words): the access log's
        # format leaves it out, the error log keeps only critical lines.
        "relay.access.log relay_private;",
        "relay.error.log crit;",
        "keepalive 64;",
        "ssl_certificate ",
        'proxy_set_header Connection "";',
    ):
        assert directive in conf, directive


def test_nginx_fails_over_only_when_an_instance_cannot_be_reached():
    # relay's own 502/503 (a provider or PostgreSQL down, for every instance alike)
    # must not count as the instance failing: after a short database outage nginx
    # would mark every instance down and answer all requests itself for fail_timeout.
    conf = (DEPLOY / "nginx.conf").read_text()
    retried = re.findall(r"^\s*proxy_next_upstream ([^;]*);", conf, re.MULTILINE)
    assert retried and all(set(each.split()) <= {"error", "timeout"} for each in retried)


def test_nginx_accepts_the_example(tmp_path):
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if nginx is None:
        pytest.fail("nginx is missing: `make verify-deploy` installs it (apt: nginx-light)")
    # A throwaway certificate stands in for the operator's.
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=relay.example.com"),
        ],
        check=True,
        capture_output=True,
    )
    live = "/etc/letsencrypt/live/relay.example.com/"
    conf = (DEPLOY / "nginx.conf").read_text()
    conf = conf.replace(live + "fullchain.pem", str(cert)).replace(live + "privkey.pem", str(key))
    (tmp_path / "relay.conf").write_text(conf)
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
        f"http {{\n    include {tmp_path}/relay.conf;\n}}\n"
    )
    result = subprocess.run(
        [nginx, "-t", "-q", "-c", str(main), "-p", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
