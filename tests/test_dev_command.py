"""`relay dev` brings up the appliance, prints a curl that works, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from relay.devservers import free_port
from relay.proofs.keyfile import KEY_FILE_NAME
from relay.simulator import SimulatorConfig, create_simulator_app

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 90.0


class DevRun:
    """`python -m relay dev` in a subprocess, its stdout read line by line on a thread."""

    def __init__(self, dev_dir: Path, port: int, **extra_env: str) -> None:
        env = {**without_venv_path(), "RELAY_DEV_DIR": str(dev_dir), "RELAY_PORT": str(port)}
        env.pop("RELAY_UPSTREAMS", None)
        env["RELAY_BCRYPT_ROUNDS"] = "4"
        env.update(extra_env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "dev"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.stderr: list[str] = []
        self.stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self.stderr_reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr.extend(self.proc.stderr)

    def wait_for_banner(self) -> list[str]:
        """Every stdout line up to the one that says how to stop."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.seen.append(line)
            if line.startswith("Ctrl-C"):
                return self.seen
        raise AssertionError(f"no banner: {self.seen}\n{''.join(self.stderr)[-3000:]}")

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def upstreams_at(port: int) -> str:
    """RELAY_UPSTREAMS naming a simulator on `port` (relay dev then starts none)."""
    return json.dumps(
        [
            {
                "name": "paced",
                "base_url": f"http://127.0.0.1:{port}/v1",
                "api_key": "k",
                "models": {"sim-small": "sim-small"},
            }
        ]
    )


def processes_using(path: Path) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in text:
            found.append(text)
    return found


@pytest.fixture
def dev_dir(postgres_tmp_path: Path) -> Iterator[Path]:
    path = postgres_tmp_path / "dev"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def without_venv_path() -> dict[str, str]:
    """The environment with no PATH entry holding this Python's `relay` command."""
    venv_bin = Path(sys.executable).parent
    kept = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p) != venv_bin]
    return {**os.environ, "PATH": os.pathsep.join(kept or ["/usr/bin", "/bin"])}


def shell(command: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=60, check=False, env=env
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_make_dev_prints_a_working_curl_and_stops_cleanly(dev_dir: Path):
    port = free_port()
    run = DevRun(dev_dir, port)
    try:
        banner = run.wait_for_banner()
        me_line = next(line.strip() for line in banner if line.strip().startswith("TOKEN=$("))
        chat_line = next(line.strip() for line in banner if "/v1/chat/completions" in line)
        key_line = next(line for line in banner if "demo API key:" in line)
        admin_line = next(line for line in banner if "admin token:" in line)
        api_key = key_line.split(":", 1)[1].strip()
        assert api_key.startswith("rk_")
        assert f"http://127.0.0.1:{port}/" in me_line

        me = json.loads(shell(me_line))
        assert me["name"] == "demo"
        assert me["object"] == "client"

        chat = json.loads(shell(f"{me_line} >/dev/null && {chat_line}"))
        assert chat["object"] == "chat.completion"
        assert chat["choices"][0]["message"]["content"]

        # The CLI, pointed at this instance as the banner says, reads what it made; in
        # another terminal, whose PATH lacks the virtualenv `make dev` ran relay from.
        export = next(line.strip() for line in banner if line.strip().startswith("export "))
        inspect = 'echo "$TOKEN" | relay token inspect'
        verdict = json.loads(
            shell(f"{export} && {me_line} >/dev/null && {inspect}", env=without_venv_path())
        )
        assert (verdict["accepted"], verdict["client_id"]) == (True, me["id"])

        kept = dev_dir / "demo-client.json"
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
        assert json.loads(kept.read_text()) == {"client_id": me["id"], "api_key": api_key}
        assert (
            admin_line.split(":", 1)[1].strip()
            == (dev_dir / "state/admin_token").read_text().strip()
        )

        assert run.interrupt() == 0, "".join(run.stderr)[-3000:]
    finally:
        run.kill()
    assert processes_using(dev_dir) == []

    # A second run keeps the data: the same demo client and key.
    again = DevRun(dev_dir, free_port())
    try:
        banner = again.wait_for_banner()
        assert any(api_key in line for line in banner)
        assert again.interrupt() == 0
    finally:
        again.kill()
    assert processes_using(dev_dir) == []


def test_a_kept_key_that_no_longer_works_is_replaced(dev_dir: Path):
    dev_dir.mkdir(parents=True)
    kept = dev_dir / "demo-client.json"
    stale = "rk_0123456789abcdef_" + "0" * 48
    kept.write_text(json.dumps({"client_id": "gone", "api_key": stale}))
    run = DevRun(dev_dir, free_port())
    try:
        banner = run.wait_for_banner()
        assert not any(stale in line for line in banner)
        fresh = json.loads(kept.read_text())["api_key"]
        assert fresh != stale and any(fresh in line for line in banner)
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
        assert run.interrupt() == 0
    finally:
        run.kill()
    assert processes_using(dev_dir) == []


@pytest.mark.parametrize("given_in", ["the environment", "RELAY_ENV_FILE"])
def test_given_upstreams_replace_the_simulator(dev_dir: Path, tmp_path: Path, given_in: str):
    upstreams = json.dumps(
        [
            {
                "name": "elsewhere",
                "base_url": "http://127.0.0.1:9/v1",
                "api_key": "k",
                "models": {"their-model": "their-model"},
            }
        ]
    )
    if given_in == "RELAY_ENV_FILE":  # the simulator's won over it, as a real variable
        env_file = tmp_path / "relay.env"
        env_file.write_text(f"RELAY_UPSTREAMS='{upstreams}'\n")
        run = DevRun(dev_dir, free_port(), RELAY_ENV_FILE=str(env_file))
    else:
        run = DevRun(dev_dir, free_port(), RELAY_UPSTREAMS=upstreams)
    try:
        banner = "\n".join(run.wait_for_banner())
        assert "simulator :" not in banner
        assert '"model":"their-model"' in banner
        assert run.interrupt() == 0
    finally:
        run.kill()
    assert processes_using(dev_dir) == []


def test_a_busy_port_is_reported_and_everything_stops(dev_dir: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = DevRun(dev_dir, port)
        try:
            assert run.proc.wait(timeout=START_TIMEOUT) == 1
        finally:
            run.kill()
    run.stderr_reader.join(10)
    assert f"cannot listen on 127.0.0.1:{port}" in "".join(run.stderr)
    assert processes_using(dev_dir) == []


def test_a_start_up_refusal_is_one_line_and_everything_stops(dev_dir: Path):
    # Said as `relay serve` says it (exit 2: a file to mend), not with a traceback.
    key_file = dev_dir / "state" / KEY_FILE_NAME
    key_file.parent.mkdir(parents=True, mode=0o700)
    key_file.write_bytes(b"-----BEGIN GARBAGE-----\n")
    key_file.chmod(0o600)
    run = DevRun(dev_dir, free_port())
    try:
        assert run.proc.wait(timeout=START_TIMEOUT) == 2
    finally:
        run.kill()
    run.stderr_reader.join(10)
    said = "".join(run.stderr)
    assert said.splitlines()[-1] == (
        f"relay dev: signing key file {key_file} does not hold an unencrypted Ed25519 PEM key"
    )
    assert "Traceback" not in said
    assert processes_using(dev_dir) == []


def test_a_log_format_from_the_env_file_is_kept_and_the_first_warning_keeps_it(
    dev_dir: Path, tmp_path: Path
):
    # relay dev logs text unless told otherwise, and RELAY_ENV_FILE tells it as well
    # as the environment does (a real variable of relay dev's own would win over it).
    # As under `relay serve`, a misspelt name's warning is a line of that log, not
    # bare text written before relay's log was set up. (Spelt in two parts: every
    # whole RELAY_ name in the tests is one relay reads, as tests/test_config.py checks.)
    misspelt = "RELAY_" + "MISSPELT_SETTING"
    env_file = tmp_path / "relay.env"
    env_file.write_text("RELAY_LOG_FORMAT=json\n")
    run = DevRun(dev_dir, free_port(), RELAY_ENV_FILE=str(env_file), **{misspelt: "1"})
    try:
        run.wait_for_banner()
        assert run.interrupt() == 0
    finally:
        run.kill()
    run.stderr_reader.join(10)
    logged = [line for line in run.stderr if "relay.config" in line]
    assert logged, run.stderr
    assert all(json.loads(line)["logger"] == "relay.config" for line in logged)
    naming = [json.loads(line) for line in run.stderr if misspelt in line]
    assert [(line["level"], line["logger"]) for line in naming] == [("warning", "relay.config")]
    if os.geteuid() == 0:  # postgres is let into the test's private temp dir, and says so
        granting = [line for line in run.stderr if "granting search permission" in line]
        assert granting, run.stderr
        assert {json.loads(line)["logger"] for line in granting} == {
            "relay.devservers.postgres_server"
        }
    assert processes_using(dev_dir) == []


def test_the_banner_brackets_an_ipv6_host():
    # `curl http://::1:8080/…` reaches nothing; `http://[::1]:8080/…` does.
    from relay.commands.dev import banner
    from relay.config import Settings

    settings = Settings.from_env({"RELAY_HOST": "::1", "RELAY_PORT": "8099"})
    text = banner(settings, "rk_x_y", Path("demo-client.json"), "backends")
    assert "http://[::1]:8099/auth/token" in text
    assert "http://[::1]:8099/v1/chat/completions" in text


def test_the_export_line_names_no_path_when_relay_is_already_on_it(monkeypatch):
    # A shell with the virtualenv active finds this relay itself: nothing to add.
    from relay.commands.dev import cli_path

    venv_bin = Path(sys.executable).parent
    monkeypatch.setenv("PATH", os.pathsep.join([str(venv_bin), "/usr/bin", "/bin"]))
    assert cli_path() == ""
    monkeypatch.setenv("PATH", without_venv_path()["PATH"])
    assert cli_path() == f'PATH={venv_bin}:"$PATH" '


async def test_sigterm_lets_a_stream_finish_then_stops_everything(dev_dir: Path, aiohttp_server):
    # As `relay serve` does (tests/test_graceful_stop.py): SIGTERM drains what is open,
    # then relay dev stops its servers. Before, it cut the stream a second later.
    paced = SimulatorConfig(api_key="k", tokens=40, token_delay=0.05)
    simulator = await aiohttp_server(create_simulator_app(paced))
    port = free_port()
    run = DevRun(dev_dir, port, RELAY_UPSTREAMS=upstreams_at(simulator.port))
    try:
        banner = await asyncio.to_thread(run.wait_for_banner)
        api_key = next(line for line in banner if "demo API key:" in line).split(":", 1)[1]
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{base}/auth/token", json={"api_key": api_key.strip()}
            ) as response:
                token = (await response.json())["access_token"]
            async with session.post(
                f"{base}/v1/chat/completions",
                json={
                    "model": "sim-small",
                    "stream": True,
                    "messages": [{"role": "user", "content": "x"}],
                },
                headers={"Authorization": f"Bearer {token}"},
            ) as response:
                first = await response.content.readline()
                run.proc.send_signal(signal.SIGTERM)
                rest = await response.content.read()
        events = [line for line in (first + rest).split(b"\n") if line.startswith(b"data: ")]
        assert events[-1] == b"data: [DONE]" and len(events) >= 40, (first + rest)[-500:]
        status = await asyncio.to_thread(run.proc.wait, 60)
    finally:
        run.kill()
    run.stderr_reader.join(10)
    stderr = "".join(run.stderr)
    assert status == 0, stderr[-3000:]
    assert "relay draining" in stderr, stderr[-3000:]
    assert processes_using(dev_dir) == []


FAKE_POSTGRES = """#!/usr/bin/env python3
# relay dev's postgres, for this test: it starts, and never gets ready to answer.
import time
print("fake postgres starting", flush=True)
time.sleep(60)
"""


FAKE_INITDB = """#!/usr/bin/env python3
# relay dev's initdb, for these tests: it writes a cluster's first file, as initdb does
# early, and who built it; then it finishes, or hangs as one cut short would.
import os, sys, time
data = sys.argv[sys.argv.index("-D") + 1]
with open(os.path.join(data, "PG_VERSION"), "w") as f:
    f.write("15\\n")
with open(os.path.join(data, "built-by"), "w") as f:
    f.write(str(os.getpid()))
if os.environ.get("FAKE_INITDB_HANGS"):
    time.sleep(60)
"""


def fake_server_binaries(where: Path) -> str:
    """A PATH finding FAKE_INITDB and FAKE_POSTGRES first (in `where`, which postgres,
    as whom relay dev runs them under root, must be able to reach)."""
    bindir = where / "bin"
    bindir.mkdir()
    (bindir / "initdb").write_text(FAKE_INITDB)
    (bindir / "postgres").write_text(FAKE_POSTGRES)
    for binary in bindir.iterdir():
        binary.chmod(0o755)
    return f"{bindir}{os.pathsep}{os.environ['PATH']}"


def wait_for_initdb(run: DevRun, dev_dir: Path) -> int:
    """The pid of the fake initdb once it has begun the cluster."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        for built_by in dev_dir.glob("postgres*/built-by"):
            if text := built_by.read_text():
                return int(text)
        assert time.monotonic() < deadline and run.proc.poll() is None, run.stderr
        time.sleep(0.05)


def wait_for_fake_postgres(run: DevRun, dev_dir: Path) -> None:
    """Until the fake postgres has started on the cluster."""
    log = dev_dir / "postgres.log"
    deadline = time.monotonic() + START_TIMEOUT
    while not (log.exists() and "fake postgres starting" in log.read_text()):
        assert time.monotonic() < deadline and run.proc.poll() is None, run.stderr
        time.sleep(0.05)


def test_signals_while_the_servers_start_stop_them_and_exit_cleanly(dev_dir: Path):
    # Before relay's own handlers listen (StopSignals, once its loop runs): SIGHUP was
    # relay dev's end, and SIGTERM killed it leaving what it had started (here postgres'
    # socket dir; a process with no death signal set, the process itself).
    tmp = dev_dir.parent / "tmp"
    tmp.mkdir()
    (dev_dir / "postgres").mkdir(parents=True)
    (dev_dir / "postgres" / "postmaster.opts").write_text("postgres\n")  # run on: no initdb
    run = DevRun(dev_dir, free_port(), PATH=fake_server_binaries(dev_dir.parent), TMPDIR=str(tmp))
    try:
        wait_for_fake_postgres(run, dev_dir)
        assert processes_using(dev_dir)  # postgres is starting
        run.proc.send_signal(signal.SIGHUP)
        time.sleep(0.2)
        assert run.proc.poll() is None, "SIGHUP ended relay dev"
        run.proc.send_signal(signal.SIGTERM)
        assert run.proc.wait(timeout=30) == 0
    finally:
        run.kill()
    run.stderr_reader.join(10)
    assert "SIGHUP ignored" in "".join(run.stderr)
    assert processes_using(dev_dir) == []
    assert list(tmp.iterdir()) == []  # postgres' socket dir went with it


def test_a_signal_during_the_first_initdb_leaves_no_half_built_cluster(dev_dir: Path):
    # The data dir was initdb's own: cut short, it was left with PG_VERSION, and the
    # next relay dev took it for a cluster and started postgres on it.
    path = fake_server_binaries(dev_dir.parent)
    run = DevRun(dev_dir, free_port(), PATH=path, FAKE_INITDB_HANGS="1")
    try:
        wait_for_initdb(run, dev_dir)
        run.proc.send_signal(signal.SIGTERM)
        assert run.proc.wait(timeout=30) == 0
    finally:
        run.kill()
    assert [path.name for path in dev_dir.iterdir() if path.name.startswith("postgres")] == []
    assert processes_using(dev_dir) == []


def test_a_first_initdb_cut_short_by_sigkill_is_built_again_on_the_next_run(dev_dir: Path):
    # As a power loss would: relay dev gets no chance to clean up after initdb.
    path = fake_server_binaries(dev_dir.parent)
    run = DevRun(dev_dir, free_port(), PATH=path, FAKE_INITDB_HANGS="1")
    try:
        cut_short = wait_for_initdb(run, dev_dir)
    finally:
        run.kill()
    os.kill(cut_short, signal.SIGKILL)  # and initdb with it, as a power loss would

    again = DevRun(dev_dir, free_port(), PATH=path)
    try:
        wait_for_fake_postgres(again, dev_dir)
        built_by = int((dev_dir / "postgres" / "built-by").read_text())
        assert built_by != cut_short
        again.proc.send_signal(signal.SIGTERM)
        assert again.proc.wait(timeout=30) == 0
    finally:
        again.kill()
    assert [path.name for path in dev_dir.iterdir() if "initdb" in path.name] == []
    assert processes_using(dev_dir) == []
