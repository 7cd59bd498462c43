"""Identifiers in OpenAI's formats."""

from __future__ import annotations

import random
import string

_ALPHABET = string.ascii_letters + string.digits

# One fixed build of the simulated model, as OpenAI reports one per deployment.
SYSTEM_FINGERPRINT = "fp_73696d2d31"


# These ids need uniqueness, not secrecy: `random` is several times cheaper than `secrets`.
def completion_id() -> str:
    return "chatcmpl-" + "".join(random.choices(_ALPHABET, k=29))


def request_id() -> str:
    return f"req_{random.getrandbits(128):032x}"
