"""How relay's process hands the memory of large blocks back to the system."""

from __future__ import annotations

import ctypes
import os

# glibc's malloc serves a large block from its heap once a block that size was freed:
# its mmap threshold rises to it (up to 32 MB). After a burst of large request bodies
# the heap holds their memory between small blocks still in use, and keeps it for good
# (64 bodies of 3.5 MB at once: 560 MB kept after them, 160 MB with this). Fixed, the
# threshold stops rising: a block this large or larger is always mapped on its own,
# and unmapped as soon as it is freed.
LARGE_BLOCK_BYTES = 1024 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt's parameter, from glibc's malloc.h
# An operator's own choice, made in the environment, stands.
_OPERATOR_SETTING = "MALLOC_MMAP_THRESHOLD_"


def return_large_blocks() -> bool:
    """Have malloc map blocks of LARGE_BLOCK_BYTES and more on their own, so that freeing
    one returns its memory. False where malloc is not glibc's (or the environment set it)."""
    if _OPERATOR_SETTING in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES))
