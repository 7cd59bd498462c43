"""Canonical JSON: one byte form per value, and refusal of anything ambiguous."""

from __future__ import annotations

import enum
from decimal import Decimal
from typing import Any

import pytest

from relay.proofs.canonical import canonical_json


def test_keys_are_sorted_and_there_is_no_whitespace() -> None:
    assert canonical_json({"b": 1, "a": [True, None, "x"]}) == b'{"a":[true,null,"x"],"b":1}'


def test_the_same_object_in_any_key_order_gives_the_same_bytes() -> None:
    one = {"model": "m", "stream": False, "nested": {"z": 1, "y": None}}
    two = {"nested": {"y": None, "z": 1}, "stream": False, "model": "m"}
    assert canonical_json(one) == canonical_json(two)


def test_booleans_stay_booleans_and_integers_stay_integers() -> None:
    assert canonical_json({"a": True, "b": 1, "c": 0, "d": False}) == (
        b'{"a":true,"b":1,"c":0,"d":false}'
    )


def test_unicode_is_written_as_utf8() -> None:
    assert canonical_json({"t": "é✓"}) == '{"t":"é✓"}'.encode()


class Level(enum.IntEnum):
    ONE = 1


@pytest.mark.parametrize(
    "value",
    [
        1.0,
        0.5,
        float("nan"),
        Decimal("1"),
        Level.ONE,
        b"bytes",
        (1, 2),
        {1, 2},
        2**53,
        -(2**53),
        {"nested": {"deep": [1.5]}},
    ],
    ids=repr,
)
def test_floats_and_other_ambiguous_values_are_refused(value: Any) -> None:
    with pytest.raises(ValueError):
        canonical_json({"field": value})


def test_non_string_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="keys must be str"):
        canonical_json({1: "one"})


def test_lone_surrogates_are_refused_as_value_error() -> None:
    with pytest.raises(ValueError):
        canonical_json({"t": "\ud800"})
