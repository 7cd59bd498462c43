"""Canonical JSON: the one byte form of a receipt that signatures and hashes cover."""

from __future__ import annotations

from typing import Any

import orjson

# Integers beyond 2**53 lose precision in JavaScript verifiers, which would then
# re-serialise a different number and reject a valid signature.
MAX_SAFE_INTEGER = 2**53 - 1


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace; only str, int, bool, None, lists and str-keyed dicts."""
    _check(obj, "$")
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:  # e.g. lone surrogates in a str
        raise ValueError(f"not canonical JSON: {exc}") from None


_LEAVES = (str, bool, type(None))


def _check(value: Any, where: str) -> None:
    # Exact type checks: a float, Decimal, IntEnum or str subclass could encode in
    # more than one way across languages, and canonical means exactly one.
    kind = type(value)
    if kind in _LEAVES:
        return
    if kind is int:
        if abs(value) > MAX_SAFE_INTEGER:
            raise ValueError(f"{where}: integer outside ±2**53 is not canonical")
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise ValueError(f"{where}: object keys must be str, not {type(key).__name__}")
            # Leaves pass without building their path: a receipt is all leaves.
            if type(item) not in _LEAVES:
                _check(item, f"{where}.{key}")
        return
    if kind is list:
        for index, item in enumerate(value):
            if type(item) not in _LEAVES:
                _check(item, f"{where}[{index}]")
        return
    raise ValueError(f"{where}: {kind.__name__} is not allowed in canonical JSON")
