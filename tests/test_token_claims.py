"""A token's dates are JSON numbers of a sane size; a validly signed token breaking that
is a 401 invalid_token like any other bad token, never a 500."""

from __future__ import annotations

import time

import jwt
import pytest

from relay.config import LONGEST_JWT_TTL
from tests.api_calls import bearer
from tests.conftest import JWT_SECRET
from tests.test_bearer_refusals import assert_refused, caller, claims_for  # noqa: F401

NOW = int(time.time())


@pytest.mark.parametrize(
    "changes",
    [
        {"exp": 2**64},
        {"exp": 10**30},
        {"exp": 2**63},
        {"exp": float("inf")},
        {"exp": float("nan")},
        {"exp": str(NOW + 600)},
        {"exp": True},
        {"iat": str(NOW)},
        {"iat": False},
        {"iat": -(2**70)},
        {"nbf": str(NOW)},
        {"nbf": -(2**64)},
        # Longer-lived than any token relay issues (RELAY_JWT_TTL is at most a week).
        {"exp": NOW + LONGEST_JWT_TTL + 3600},
        {"iat": 0},
        # Past the instances' clock skew (30 s): made by no clock relay trusts.
        {"iat": NOW + 3600, "exp": NOW + 4200},
        {"nbf": NOW + 3600},
    ],
    ids=[
        "exp-past-64-bits",
        "exp-huge",
        "exp-past-63-bits",
        "exp-infinite",
        "exp-nan",
        "exp-text",
        "exp-bool",
        "iat-text",
        "iat-bool",
        "iat-huge-negative",
        "nbf-text",
        "nbf-huge-negative",
        "exp-past-the-longest-ttl",
        "iat-long-ago",
        "iat-in-the-future",
        "nbf-in-the-future",
    ],
)
async def test_a_signed_token_with_impossible_dates_is_refused(http, caller, changes):  # noqa: F811
    client, _ = caller
    token = jwt.encode(claims_for(client["id"], **changes), JWT_SECRET, algorithm="HS256")
    # PyJWT reads an exp of true as 1, long past: refused as expired before relay looks.
    await assert_refused(http, bearer(token), None if changes == {"exp": True} else "invalid_token")


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"nbf": NOW - 5},
        {"iat": NOW + 0.5, "exp": NOW + 600.25, "nbf": float(NOW)},
        {"exp": NOW + LONGEST_JWT_TTL},
    ],
    ids=["as-issued", "nbf", "fractional", "a-week"],
)
async def test_a_token_with_numeric_dates_is_accepted(http, caller, changes):  # noqa: F811
    client, _ = caller
    claims = claims_for(client["id"], **changes)  # once: a second later, exp would differ
    token = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    response = await http.get("/v1/me", headers=bearer(token))
    assert response.status == 200, await response.text()
    assert (await response.json())["token_expires_at"] == int(claims["exp"])
