"""Which provider serves a public model id, and which models a client may use."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

from relay.errors import ModelNotFoundError, PermissionDeniedError
from relay.upstreams.config import Upstream

# A client holding any `model:` scope may use only the models those scopes name
# (`model:*` for all); a client without one may use every model.
MODEL_SCOPE = "model:"
# What a scope token may hold in a WWW-Authenticate challenge (RFC 6750 section 3: NQSCHAR).
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


@dataclass(frozen=True)
class Route:
    model: str  # the public id the client asked for
    upstream: Upstream
    provider_model: str


def model_allowed(scopes: Iterable[str], model: str) -> bool:
    granted = [scope[len(MODEL_SCOPE) :] for scope in scopes if scope.startswith(MODEL_SCOPE)]
    return not granted or "*" in granted or model in granted


class ModelRouter:
    def __init__(self, upstreams: Iterable[Upstream]) -> None:
        self.created = int(time.time())  # what /v1/models reports as `created`
        self.routes = {
            model: Route(model, upstream, provider_model)
            for upstream in upstreams
            for model, provider_model in upstream.models.items()
        }

    def resolve(self, model: str, scopes: Iterable[str]) -> Route:
        route = self.routes.get(model)
        if route is None:
            raise _not_found(model)
        if not model_allowed(scopes, model):
            raise PermissionDeniedError(
                f"This client may not use the model `{model}`.",
                param="model",
                code="model_not_allowed",
                headers={"WWW-Authenticate": _insufficient_scope(MODEL_SCOPE + model)},
            )
        return route

    def visible(self, model: str, scopes: Iterable[str]) -> Route:
        """The route of a model this client may use; as OpenAI does, a model it may not
        use is as unknown as one that does not exist."""
        route = self.routes.get(model)
        if route is None or not model_allowed(scopes, model):
            raise _not_found(model)
        return route

    def default_model(self, default: str, scopes: Iterable[str]) -> str:
        """The model of a request naming none: `default` (RELAY_DEFAULT_MODEL) if this
        client may use it, else the first configured model it may use (else `default`
        or the first, for resolve to refuse as such)."""
        scopes = tuple(scopes)
        if default and model_allowed(scopes, default):
            return default
        allowed = self.allowed(scopes)
        if allowed:
            return allowed[0].model
        return default or next(iter(self.routes), "")

    def allowed(self, scopes: Iterable[str]) -> list[Route]:
        scopes = tuple(scopes)
        return [route for model, route in self.routes.items() if model_allowed(scopes, model)]


def _insufficient_scope(scope: str) -> str:
    """RFC 6750's challenge for a token that lacks the scope a request needs (naming
    the scope when it can be written there)."""
    challenge = 'Bearer realm="relay", error="insufficient_scope"'
    return challenge + f', scope="{scope}"' if _SCOPE_TOKEN.fullmatch(scope) else challenge


def _not_found(model: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"The model `{model}` does not exist or you do not have access to it.", param="model"
    )
