"""Verified tokens are remembered, but expiry is still checked on every request."""

import time

import pytest

from relay.errors import AuthenticationError
from relay.services.tokens import CLOCK_SKEW_SECONDS, TokenIssuer
from tests.client_rows import client_row

CLIENT = client_row()


def test_a_remembered_token_still_expires():
    issuer = TokenIssuer("s" * 40, ttl=60, issuer="relay", audience="relay-api")
    # Past its expiry by all but a second of the allowance for clocks that differ.
    issued = issuer.issue(CLIENT, now=int(time.time()) - 59 - CLOCK_SKEW_SECONDS)
    assert issuer.verify(issued.access_token).client_id == CLIENT.id  # now remembered
    time.sleep(1.1)
    with pytest.raises(AuthenticationError) as refused:
        issuer.verify(issued.access_token)
    assert refused.value.code == "token_expired"


def test_a_token_signed_with_another_secret_is_never_remembered():
    issuer = TokenIssuer("s" * 40, ttl=60, issuer="relay", audience="relay-api")
    other = TokenIssuer("t" * 40, ttl=60, issuer="relay", audience="relay-api")
    forged = other.issue(CLIENT).access_token
    for _ in range(2):
        with pytest.raises(AuthenticationError):
            issuer.verify(forged)


def test_another_instances_clock_may_run_a_little_ahead():
    # A token issued where the clock is ahead is not "issued in the future" here,
    # within the allowance; far ahead, it is refused.
    issuer = TokenIssuer("s" * 40, ttl=60, issuer="relay", audience="relay-api")
    ahead = issuer.issue(CLIENT, now=int(time.time()) + 5).access_token
    assert issuer.verify(ahead).client_id == CLIENT.id
    far_ahead = issuer.issue(CLIENT, now=int(time.time()) + 5 * CLOCK_SKEW_SECONDS).access_token
    with pytest.raises(AuthenticationError):
        issuer.verify(far_ahead)
