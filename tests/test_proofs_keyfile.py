"""The none-mode key: generated once into the state dir, 0600, reused, and refused when unsafe."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from relay.proofs.keyfile import KEY_FILE_NAME, FileKeyProvider, KeyFileError


async def test_the_key_is_created_with_mode_0600_and_reused_on_restart(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    first = await FileKeyProvider(state_dir).load()
    key_file = state_dir / KEY_FILE_NAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    second = await FileKeyProvider(state_dir).load()
    assert second.public_key_hex == first.public_key_hex
    assert first.tee_type == "none"
    assert first.key_custody["provider"] == "none"
    assert not [p for p in state_dir.iterdir() if p.name != KEY_FILE_NAME]  # no temp files left


async def test_the_key_is_created_even_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        await FileKeyProvider(tmp_path).load()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / KEY_FILE_NAME).stat().st_mode) == 0o600


async def test_instances_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    identities = await asyncio.gather(*(FileKeyProvider(tmp_path).load() for _ in range(8)))
    assert len({identity.public_key_hex for identity in identities}) == 1


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
async def test_a_key_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    await FileKeyProvider(tmp_path).load()
    (tmp_path / KEY_FILE_NAME).chmod(mode)
    with pytest.raises(KeyFileError, match="must be 0600"):
        await FileKeyProvider(tmp_path).load()


async def test_a_key_file_with_garbage_is_refused_without_echoing_it(tmp_path: Path) -> None:
    key_file = tmp_path / KEY_FILE_NAME
    key_file.write_text("sk-LEAKME-0123")
    key_file.chmod(0o600)
    with pytest.raises(KeyFileError, match="Ed25519") as caught:
        await FileKeyProvider(tmp_path).load()
    assert "LEAKME" not in str(caught.value)


async def test_a_key_file_with_another_key_type_is_refused(tmp_path: Path) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp_path / KEY_FILE_NAME
    key_file.write_bytes(other.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    key_file.chmod(0o600)
    with pytest.raises(KeyFileError, match="Ed25519"):
        await FileKeyProvider(tmp_path).load()


async def test_a_symlinked_key_file_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    await FileKeyProvider(elsewhere).load()
    (tmp_path / KEY_FILE_NAME).symlink_to(elsewhere / KEY_FILE_NAME)
    with pytest.raises(KeyFileError):
        await FileKeyProvider(tmp_path).load()


async def test_repr_of_the_identity_shows_no_key_material(tmp_path: Path) -> None:
    identity = await FileKeyProvider(tmp_path).load()
    assert "private_key" not in repr(identity)


@pytest.mark.parametrize("where", ["a file", "under a file", "cannot be made"])
async def test_a_state_dir_relay_cannot_use_is_refused_with_the_setting_named(
    tmp_path: Path, where: str
) -> None:
    taken = tmp_path / "a-file"
    taken.write_text("not a directory")
    # /proc takes no new directories, even from root (the tests may run as root).
    state = {"a file": taken, "under a file": taken / "below"}.get(where, Path("/proc/relay-no"))
    with pytest.raises(KeyFileError, match=r"signing key file .* \(RELAY_STATE_DIR\): "):
        await FileKeyProvider(state).load()
