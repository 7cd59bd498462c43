"""Client fields PostgreSQL cannot store or give back as JSON are a 400 (found by schemathesis)."""

from __future__ import annotations

import pytest

from tests.api_calls import ADMIN, assert_error


def _nested(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = {"m": value}
    return value


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "nul\u0000name"},
        {"name": "ok", "metadata": {"k": "nul\u0000value"}},
        {"name": "ok", "metadata": {"nul\u0000key": 1}},
        {"name": "ok", "metadata": {"big": 1e20}},
        {"name": "ok", "metadata": {"deep": [{"big": -(2**63)}]}},
        {"name": "ok", "metadata": {"m": _nested(300)}},  # past what orjson writes
        {"name": "ok", "metadata": {"m": _nested(600)}},  # past Python's recursion limit
    ],
)
async def test_unstorable_fields_are_refused(http, fields):
    response = await http.post("/admin/clients", json=fields, headers=ADMIN)
    error = await assert_error(response, 400)
    assert error["param"] in {"name", "metadata"}


async def test_ordinary_metadata_round_trips(http):
    metadata = {"team": "mobile", "n": 2**62, "ratio": 0.5, "tags": ["a", None, True]}
    response = await http.post(
        "/admin/clients", json={"name": "ok", "metadata": metadata}, headers=ADMIN
    )
    assert response.status == 201, await response.text()
    assert (await response.json())["metadata"] == metadata
