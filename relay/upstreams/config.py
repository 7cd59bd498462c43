"""The providers relay forwards to, read from `RELAY_UPSTREAMS` (a JSON file or inline JSON)."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
import yarl
from multidict import CIMultiDict, CIMultiDictProxy

from relay.config_environment import FILE_SUFFIX, pass_over, variable_or_file
from relay.config_values import ConfigError

if TYPE_CHECKING:
    import aiohttp

KINDS = ("openai",)


class UpstreamConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Upstream:
    name: str
    base_url: str
    models: Mapping[str, str]  # public model id → the provider's model id
    api_key: str = field(default="", repr=False)
    kind: str = "openai"
    timeout_s: float = 600.0  # longest wait for the provider's headers, then between bytes
    connect_timeout_s: float = 10.0

    @functools.cached_property
    def chat_completions_url(self) -> str:
        return self.url("/chat/completions")

    @functools.cached_property
    def models_url(self) -> str:
        return self.url("/models")

    def url(self, endpoint: str) -> str:
        """base_url's path and `endpoint`; a query (api-version=…) kept after it."""
        url = yarl.URL(self.base_url, encoded=True)  # its bytes as the operator wrote them
        path = url.raw_path.rstrip("/") + endpoint
        return str(url.with_path(path, encoded=True, keep_query=True))

    @functools.cached_property
    def request_headers(self) -> CIMultiDictProxy[str]:
        """What relay sends the provider besides the body: the type, and its own key."""
        headers = CIMultiDict({"Content-Type": "application/json"})
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return CIMultiDictProxy(headers)

    @functools.cached_property
    def client_timeout(self) -> aiohttp.ClientTimeout:
        # Imported here, once per upstream: reading settings (relay clients, relay
        # migrate) needs no HTTP client.
        import aiohttp

        # No total: a stream may run for minutes. The waits for headers and then for
        # bytes (timeout_s) are bounded by relay itself (relay.upstreams.reply).
        return aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_s)


def _positive(entry: Mapping[str, Any], key: str, default: float) -> float:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise UpstreamConfigError(
            f"upstream {entry['name']!r}: {key} must be a positive number of seconds"
        )
    return float(value)


def _http_url(text: str) -> bool:
    """An http(s) URL relay can post to: a host, a port if any in 1-65535, and no
    #fragment (a query is kept). A bad port would pass start-up and fail every chat."""
    parts = urlsplit(text)
    try:
        # Both readings: urlsplit's here, yarl's as Upstream.url reads the URL.
        port, _ = parts.port, yarl.URL(text, encoded=True).port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and not parts.fragment
        and port != 0
    )


def _credentials(text: str) -> bool:
    """Whether an http(s) URL holds a user name or password (`user:password@host`), by
    either reading of it (urlsplit's, and yarl's as aiohttp reads it)."""
    parts, url = urlsplit(text), yarl.URL(text, encoded=True)
    return any(value is not None for value in (parts.username, parts.password, url.user))


def _upstream(entry: Any, environ: Mapping[str, str], resolve_keys: bool) -> Upstream:
    if not isinstance(entry, dict):
        raise UpstreamConfigError("each upstream must be an object")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise UpstreamConfigError("each upstream needs a name")
    unknown = set(entry) - {
        "name", "kind", "base_url", "api_key", "api_key_env", "models", "timeout_s",
        "connect_timeout_s",
    }  # fmt: skip
    if unknown:
        raise UpstreamConfigError(f"upstream {name!r}: unknown field {sorted(unknown)[0]!r}")
    kind = entry.get("kind", "openai")
    if kind not in KINDS:
        raise UpstreamConfigError(f"upstream {name!r}: kind must be one of {', '.join(KINDS)}")
    base_url = entry.get("base_url")
    if not isinstance(base_url, str) or not _http_url(base_url):
        raise UpstreamConfigError(
            f"upstream {name!r}: base_url must be an http(s) URL with a host, a valid port"
            " if any, and no #fragment"
        )
    if _credentials(base_url):
        # aiohttp would refuse every request that also carries the key's Authorization
        # (a 500 on each chat), and the URL shows up wherever an upstream is printed.
        # The URL is not echoed: it holds a password.
        raise UpstreamConfigError(
            f"upstream {name!r}: base_url must not hold a user name or password;"
            " give the provider's key as api_key or api_key_env"
        )
    if "api_key" in entry and "api_key_env" in entry:
        raise UpstreamConfigError(f"upstream {name!r}: give api_key or api_key_env, not both")
    api_key = entry.get("api_key", "")
    if "api_key_env" in entry:
        variable = entry["api_key_env"]
        # Named in the error only if it looks like a name: a key put there by mistake
        # must not reach the journal.
        if not isinstance(variable, str) or not _VARIABLE.fullmatch(variable):
            raise UpstreamConfigError(
                f"upstream {name!r}: api_key_env must name an environment variable"
            )
        if resolve_keys:
            api_key = _provider_key(name, variable, environ)
        else:
            # Looked up all the same, so a RELAY_* name here counts as read, not misspelt.
            pass_over(environ, variable)
    if not isinstance(api_key, str):
        raise UpstreamConfigError(f"upstream {name!r}: api_key must be a string")
    if api_key != api_key.strip() or not api_key.isprintable():
        # A line end kept in a quoted value, say: no HTTP header can carry it. (A key
        # file's own line end is dropped, as for relay's secrets.)
        raise UpstreamConfigError(
            f"upstream {name!r}: the provider key has spaces around it or characters"
            " that cannot be sent (a trailing newline?)"
        )
    models = entry.get("models")
    if (
        not isinstance(models, dict)
        or not models
        or not all(isinstance(k, str) and isinstance(v, str) and k and v for k, v in models.items())
    ):
        raise UpstreamConfigError(
            f"upstream {name!r}: models must map public model ids to provider model ids"
        )
    return Upstream(
        name=name,
        kind=kind,
        base_url=base_url,
        api_key=api_key,
        models=dict(models),
        timeout_s=_positive(entry, "timeout_s", DEFAULT_TIMEOUT_S),
        connect_timeout_s=_positive(entry, "connect_timeout_s", 10.0),
    )


def _provider_key(name: str, variable: str, environ: Mapping[str, str]) -> str:
    """The key in `variable`, or in the file `<variable>_FILE` names: by the rules of
    relay's own secrets (relay.config_environment), so systemd's LoadCredential= serves both."""
    try:
        given = variable_or_file(environ, variable)
    except ConfigError as exc:
        raise UpstreamConfigError(f"upstream {name!r}: {exc}") from None
    if given is None:
        raise UpstreamConfigError(
            f"upstream {name!r}: api_key_env {variable!r} is not set, nor {variable}{FILE_SUFFIX}"
        )
    if not given.value:
        raise UpstreamConfigError(f"upstream {name!r}: {given.origin} is empty")
    return given.value


_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# How long a provider has to answer (and, once answering, between bytes) unless its
# upstream says otherwise.
DEFAULT_TIMEOUT_S = 600.0


def parse_upstreams(
    text: str, environ: Mapping[str, str], *, resolve_keys: bool = True
) -> tuple[Upstream, ...]:
    """Inline JSON when the value starts with `[`, otherwise the path of a JSON file.

    Without `resolve_keys`, the variable an api_key_env names is neither demanded
    nor used: its upstream comes back without a key, for a caller that never forwards.
    """
    text = text.strip()
    if not text:
        return ()
    if text.startswith(("{", '"')):  # JSON, not a path: never echoed, it may hold a key
        raise UpstreamConfigError("must be a JSON list of upstreams ([{…}] for one)")
    if not text.startswith("["):
        # The path is named only if it looks like one: a key put here by mistake is not.
        named = text if "/" in text or text.endswith(".json") else "the file it names"
        try:
            text = Path(text).read_text(encoding="utf-8")
        except OSError as exc:
            raise UpstreamConfigError(f"cannot read {named}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise UpstreamConfigError(f"{named} is not UTF-8 text") from None
    try:
        entries = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise UpstreamConfigError(f"not valid JSON: {exc}") from None
    if not isinstance(entries, list):
        raise UpstreamConfigError("must be a JSON list of upstreams")
    upstreams = tuple(_upstream(entry, environ, resolve_keys) for entry in entries)
    names = [upstream.name for upstream in upstreams]
    if len(set(names)) != len(names):
        raise UpstreamConfigError("two upstreams share a name")
    public = [model for upstream in upstreams for model in upstream.models]
    if len(set(public)) != len(public):
        raise UpstreamConfigError("a public model id is served by two upstreams")
    return upstreams
