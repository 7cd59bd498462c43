"""Deployment files: the env example documents every setting; systemd and compose accept theirs."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from relay.commands.serve import GRACE_SECONDS
from relay.config import Settings, read_env_file

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
EXAMPLE = DEPLOY / "relay.env.example"
UNIT = DEPLOY / "relay.service"
# Read by Settings.from_env itself rather than being a field.
NOT_FIELDS = {"RELAY_ENV_FILE"}
_ASSIGNMENT = re.compile(r"^#?(RELAY_[A-Z0-9_]+)=(.*)$")


def documented() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in EXAMPLE.read_text().splitlines():
        match = _ASSIGNMENT.match(line.strip())
        if match:
            found[match[1]] = match[2]
    return found


def unit_directives() -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            directives.setdefault(key.strip(), []).append(value.strip())
    return directives


def test_env_example_documents_every_setting():
    settings = {spec.metadata["env"] for spec in dataclasses.fields(Settings)}
    names = set(documented())
    assert not settings - names, f"document these in {EXAMPLE.name}: {sorted(settings - names)}"
    stale = names - settings - NOT_FIELDS
    assert not stale, f"{EXAMPLE.name} documents settings relay does not read: {sorted(stale)}"


def test_env_example_values_are_valid():
    # The active lines make a production configuration that starts.
    active = read_env_file(EXAMPLE)
    assert Settings.from_env(active).production
    # Each commented default or example is a value relay accepts.
    for name, value in documented().items():
        if name not in NOT_FIELDS:
            Settings.from_env({**active, name: value, "OPENAI_API_KEY": "sk-example"})


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
    assert stop > Settings().drain_timeout + GRACE_SECONDS


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is missing: `make verify-deploy` installs it (apt: systemd)")
    return path


def test_systemd_accepts_the_unit(tmp_path):
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
    # verify exits 0 on unknown keys and bad values, printing them: both must be empty.
    assert result.returncode == 0, result.stderr
    assert result.stdout == result.stderr == "", result.stdout + result.stderr


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


def test_nginx_example_streams_unbuffered():
    conf = (DEPLOY / "nginx.conf").read_text()
    for directive in (
        "proxy_buffering off;",
        "proxy_read_timeout 600s;",
        "X-Forwarded-For $proxy_add_x_forwarded_for;",
        "keepalive 64;",
        "ssl_certificate ",
        'proxy_set_header Connection "";',
    ):
        assert directive in conf, directive


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
