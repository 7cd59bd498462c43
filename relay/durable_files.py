"""Making a file's name durable: what a crash must not undo once relay relies on it."""

from __future__ import annotations

import os
from pathlib import Path


def sync_directory(path: Path) -> None:
    """fsync the directory `path`: a name created, linked or renamed into it survives
    a crash or power loss (the file's own fsync keeps only its contents)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
