"""The dstack guest agent, reached through dstack-sdk's AsyncDstackClient."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

import httpx
from dstack_sdk import AsyncDstackClient, GetKeyResponse, GetQuoteResponse

from relay.errors import AttestationUnavailableError

# The SDK's 3 s default is too short for a quote on a busy host.
AGENT_TIMEOUT = 10.0
ENDPOINT_SETTING = "RELAY_DSTACK_ENDPOINT"

__all__ = ["AGENT_TIMEOUT", "AttestationUnavailableError", "DstackAgent", "normalise_endpoint"]


class DstackAgent:
    """One AsyncDstackClient for the process; failures become AttestationUnavailableError.

    Use as `async with DstackAgent(endpoint) as agent:` so the SDK's HTTP client is
    closed. Build it only when attestation is on: the SDK refuses a missing socket.
    """

    def __init__(self, endpoint: str | None = None, *, timeout: float = AGENT_TIMEOUT) -> None:
        self.endpoint = normalise_endpoint(endpoint)
        self._info: dict[str, Any] | None = None
        try:
            self.client = AsyncDstackClient(self.endpoint, timeout=timeout)
        except (OSError, ValueError) as exc:
            raise self._unavailable(exc) from None

    async def __aenter__(self) -> Self:
        await self.client.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.client.__aexit__(exc_type, exc, tb)

    async def get_key(self, path: str, purpose: str) -> GetKeyResponse:
        try:
            return await self.client.get_key(path, purpose)
        except (httpx.HTTPError, OSError, ValueError, TypeError) as exc:
            raise self._unavailable(exc) from None

    async def get_quote(self, report_data: bytes) -> GetQuoteResponse:
        try:
            return await self.client.get_quote(report_data)
        except (httpx.HTTPError, OSError, ValueError, TypeError) as exc:
            raise self._unavailable(exc) from None

    async def info(self) -> dict[str, Any]:
        """The agent's Info as plain JSON data; fixed for the instance's life, so kept."""
        if self._info is None:
            try:
                response = await self.client.info()
            except (httpx.HTTPError, OSError, ValueError, TypeError) as exc:
                raise self._unavailable(exc) from None
            # serialize_as_any: tcb_info is a TcbInfo subclass whose extra fields must survive.
            self._info = response.model_dump(mode="json", serialize_as_any=True)
        return self._info

    def _unavailable(self, exc: BaseException) -> AttestationUnavailableError:
        where = self.endpoint or "the dstack SDK's default socket"
        reason = str(exc) or type(exc).__name__
        return AttestationUnavailableError(
            f"dstack guest agent at {where} is unavailable ({reason}); "
            f"check {ENDPOINT_SETTING} or set RELAY_ATTESTATION=none"
        )


def normalise_endpoint(endpoint: str | None) -> str | None:
    """The SDK takes a plain socket path or an http(s) URL; also accept unix:/path."""
    if not endpoint:
        return None  # let the SDK pick DSTACK_SIMULATOR_ENDPOINT or /var/run/dstack.sock
    if endpoint.startswith("unix://"):
        return endpoint.removeprefix("unix://")
    if endpoint.startswith("unix:"):
        return endpoint.removeprefix("unix:")
    return endpoint
