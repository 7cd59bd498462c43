"""Which models a client's scopes let it use, and how a refusal says so."""

from __future__ import annotations

import pytest

from relay.errors import PermissionDeniedError
from relay.upstreams.config import Upstream
from relay.upstreams.routing import ModelRouter

_UPSTREAM = Upstream(
    "provider",
    "http://provider.invalid/v1",
    {"gpt-sim": "gpt-sim", 'odd "model"': "odd", "org/model-1": "org/model-1"},
)


@pytest.mark.parametrize(
    ("model", "challenge"),
    [
        ("gpt-sim", 'Bearer realm="relay", error="insufficient_scope", scope="model:gpt-sim"'),
        (
            "org/model-1",
            'Bearer realm="relay", error="insufficient_scope", scope="model:org/model-1"',
        ),
        # A quote (or a space) cannot be written in RFC 6750's scope: the scope is left out.
        ('odd "model"', 'Bearer realm="relay", error="insufficient_scope"'),
    ],
)
def test_a_model_outside_the_scopes_is_refused_with_rfc_6750s_challenge(model, challenge):
    with pytest.raises(PermissionDeniedError) as refused:
        ModelRouter([_UPSTREAM]).resolve(model, ["model:other"])
    assert refused.value.status == 403 and refused.value.code == "model_not_allowed"
    assert refused.value.headers["WWW-Authenticate"] == challenge


def test_scopes_that_name_no_model_allow_every_model():
    router = ModelRouter([_UPSTREAM])
    assert router.resolve("gpt-sim", ["chat"]).provider_model == "gpt-sim"
    assert router.resolve("gpt-sim", ["model:*"]).provider_model == "gpt-sim"
