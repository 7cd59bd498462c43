"""The `none`-mode signing key: an Ed25519 key generated once and kept in the state dir."""

from __future__ import annotations

import asyncio
import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from relay.durable_files import sync_directory
from relay.proofs.identity import SigningIdentity

KEY_FILE_NAME = "receipt_signing_key.pem"
_MAX_KEY_FILE = 16 * 1024

NONE_CUSTODY = {
    "provider": "none",
    "algorithm": "ed25519",
    "storage": "file in relay's state dir, mode 0600",
    "note": "generated on the host; no TEE vouches for this key",
}


class KeyFileError(RuntimeError):
    """The key file exists but cannot be trusted or read; relay must not start."""


class FileKeyProvider:
    def __init__(self, state_dir: Path | str) -> None:
        self.path = Path(state_dir) / KEY_FILE_NAME

    async def load(self) -> SigningIdentity:
        key = await asyncio.to_thread(load_or_create_key, self.path)
        return SigningIdentity.of(key, dict(NONE_CUSTODY), "none")


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The key at path; generated and stored first if there is none yet."""
    try:
        return read_key(path)
    except FileNotFoundError:
        pass
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    if _create_exclusively(path, pem):
        return key
    # Another instance sharing the state dir created it first: use theirs.
    return read_key(path)


def read_key(path: Path) -> Ed25519PrivateKey:
    try:
        # O_NOFOLLOW: a symlink planted in the state dir must not redirect us.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise KeyFileError(
            f"cannot open signing key file {path} (RELAY_STATE_DIR): {exc.strerror}"
        ) from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"signing key file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise KeyFileError(
                f"signing key file {path} has mode {stat.S_IMODE(info.st_mode):04o}; "
                "it must be 0600 (chmod 600 it, or delete it to generate a new key)"
            )
        if info.st_uid != os.geteuid():
            raise KeyFileError(f"signing key file {path} is owned by another user")
        data = file.read(_MAX_KEY_FILE + 1)
    try:
        key = load_pem_private_key(data, password=None) if len(data) <= _MAX_KEY_FILE else None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        # Never echo the content: it may be someone's secret.
        raise KeyFileError(f"signing key file {path} does not hold an unencrypted Ed25519 PEM key")
    return key


def _create_exclusively(path: Path, data: bytes) -> bool:
    """Write data to path atomically, never replacing an existing file; False if one exists."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:  # a state dir that is a file, read-only, not ours
        raise KeyFileError(
            f"cannot create signing key file {path} (RELAY_STATE_DIR): {exc.strerror}"
        ) from None
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), 0o600)  # whatever the umask did
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        try:
            # link() is atomic and fails if the name exists, unlike rename().
            os.link(temp, path)
        except FileExistsError:
            return False
    finally:
        temp.unlink(missing_ok=True)
    sync_directory(path.parent)
    return True
