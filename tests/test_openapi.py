"""GET /openapi.json describes exactly the routes relay serves; /docs renders it without a CDN."""

from __future__ import annotations

import re

from aiohttp import web

from relay.api.spec import build_spec
from relay.app import create_app
from tests.api_calls import assert_error

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def served_routes(app: web.Application) -> dict[tuple[str, str], str | None]:
    """(method, path pattern) → route name, leaving out the HEAD that allow_head adds."""
    routes: dict[tuple[str, str], str | None] = {}
    for route in app.router.routes():
        resource = route.resource
        if resource is None:
            continue
        routes[(route.method.lower(), resource.canonical)] = route.name
    gets = {path for method, path in routes if method == "get"}
    return {
        (method, path): name
        for (method, path), name in routes.items()
        if not (method == "head" and path in gets)
    }


def described(spec: dict) -> dict[tuple[str, str], str]:
    return {
        (method, path): operation["operationId"]
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def test_spec_and_route_table_agree(settings):
    served = served_routes(create_app(settings))
    spec = described(build_spec())
    undocumented = sorted(set(served) - set(spec))
    assert not undocumented, f"add these to relay/api/spec/paths.py: {undocumented}"
    unserved = sorted(set(spec) - set(served))
    assert not unserved, f"the spec describes routes relay does not serve: {unserved}"
    for key, name in served.items():
        assert spec[key] == name, f"{key}: operationId should be the route name {name!r}"


def node_path(ref: str) -> list[str]:
    assert ref.startswith("#/"), ref
    return ref[2:].split("/")


def all_refs(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [ref for value in node.values() for ref in all_refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in all_refs(value)]
    return []


def test_every_operation_is_fully_described():
    spec = build_spec()
    for ref in all_refs(spec):
        node = spec
        for part in node_path(ref):
            assert part in node, f"dangling {ref}"
            node = node[part]
    for path, item in spec["paths"].items():
        declared_in_path = set(re.findall(r"{(\w+)}", path))
        for method, operation in item.items():
            assert operation["summary"] and operation["responses"], (method, path)
            assert "security" in operation, (method, path)
            names = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
            assert names == declared_in_path, (method, path)
            statuses = {int(status) for status in operation["responses"]}
            assert any(200 <= status < 300 for status in statuses), (method, path)
            if method in {"post", "patch", "put"} and "requestBody" in operation:
                assert {400, 413, 415} <= statuses, (method, path)
            if operation["security"] not in ([{}], [{}, {"metricsToken": []}]):
                assert 401 in statuses, (method, path)


def test_a_401_is_described_with_its_challenge():
    # RFC 9110 section 15.5.2: a 401 always sends WWW-Authenticate; relay's do.
    unauthorized = build_spec()["components"]["responses"]["Unauthorized"]
    assert "WWW-Authenticate" in unauthorized["headers"]


def test_the_errors_openai_sdks_retry_are_described_with_x_should_retry():
    responses = build_spec()["components"]["responses"]
    for name in ("BadGateway", "GatewayTimeout", "ServiceUnavailable", "TooManyRequests"):
        assert "x-should-retry" in responses[name]["headers"], name
    assert "upstream_not_streamed" in responses["BadGateway"]["description"]
    assert "x-should-retry" not in responses["BadRequest"]["headers"]


async def test_a_401_sends_the_challenge_described(http):
    response = await http.get("/v1/me")
    await assert_error(response, 401)
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="relay"'


def test_only_chats_are_described_with_token_limit_headers():
    # Token debt refuses chats alone, and only their answers carry the token headers.
    chats = {"/v1/chat/completions", "/v1/chat"}
    for path, item in build_spec()["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            headers = operation["responses"].get("200", {}).get("headers", {})
            token_headers = {name for name in headers if name.endswith("-tokens")}
            assert bool(token_headers) == (path in chats), (method, path)


async def test_openapi_json_is_served(http):
    response = await http.get("/openapi.json")
    assert response.status == 200
    spec = await response.json()
    assert spec["openapi"].startswith("3.1")
    assert spec["paths"]["/v1/me"]["get"]["operationId"] == "get_me"


async def test_docs_render_from_relay_itself(http):
    page = await http.get("/docs")
    assert page.status == 200
    assert page.content_type == "text/html"
    html = await page.text()
    assert 'src="/docs/docs.js"' in html and 'href="/docs/docs.css"' in html
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    bodies = [html]
    for asset, kind in (("docs.js", "text/javascript"), ("docs.css", "text/css")):
        response = await http.get(f"/docs/{asset}")
        assert response.status == 200
        assert response.content_type == kind
        bodies.append(await response.text())
    assert 'fetch("/openapi.json")' in bodies[1]
    for body in bodies:
        # No CDN: nothing is loaded from another host.
        assert not re.search(r"(src|href)=\"(https?:)?//", body)
        assert "https://" not in body.replace('"https://"', "")
    await assert_error(await http.get("/docs/other.js"), 404)
