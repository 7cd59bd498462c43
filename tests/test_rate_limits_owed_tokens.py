"""What Redis is owed while it is away stays bounded, letting go of what matters least."""

from relay.services.owed_tokens import OwedTokens
from tests.client_rows import client_row

A, B, C = client_row(1), client_row(2), client_row(3)


def owing(owed: OwedTokens) -> dict[str, int]:
    return {client.id: cost for client, cost in owed.take()}


def test_past_its_bound_a_credit_is_dropped_before_a_debt_is_forgiven():
    owed = OwedTokens(max_owing=2)
    owed.add(A, 2_500)  # a debt, the least recently charged
    owed.add(B, -400)  # a credit: a reservation Redis took, given back
    owed.add(C, 300)
    assert owing(owed) == {A.id: 2_500, C.id: 300}


def test_past_its_bound_the_least_recently_charged_debt_is_forgiven():
    owed = OwedTokens(max_owing=2)
    owed.add(A, 100)
    owed.add(B, 50)
    owed.add(A, -300)  # now a credit of 200
    owed.add(A, 500)  # a debt of 300 again, charged most recently
    owed.add(C, 10)
    assert owing(owed) == {A.id: 300, C.id: 10}
    assert len(owed) == 0
