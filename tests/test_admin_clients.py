"""The admin API for clients: authorised by the admin token, keys shown once, fields validated."""

from __future__ import annotations

import re
import uuid
from typing import Any

import bcrypt
import pytest

from relay.appkeys import CLIENTS, DATABASE
from relay.stores.database import fetch_one
from tests.api_calls import ADMIN, assert_error, bearer, create_client, exchange

KEY = re.compile(r"^rk_([0-9a-f]{16})_([0-9a-f]{48})$")

# A client id no test creates; fixed, as test ids are made of it (pytest -n collects
# the same tests in every worker).
UNKNOWN_ID = "0b9e2f44-7d1a-4b8c-a3e5-19f0c6d2b874"


async def stored_row(http, client_id: str) -> dict[str, Any] | None:
    async with http.app[DATABASE].cursor() as cur:
        return await fetch_one(cur, "SELECT * FROM clients WHERE id = %s", (client_id,))


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic " + "a" * 40}],
    ids=["missing", "wrong", "scheme"],
)
@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/admin/clients"),
        ("POST", "/admin/clients"),
        ("GET", f"/admin/clients/{UNKNOWN_ID}"),
        ("PATCH", f"/admin/clients/{UNKNOWN_ID}"),
        ("DELETE", f"/admin/clients/{UNKNOWN_ID}"),
        ("POST", f"/admin/clients/{UNKNOWN_ID}/regenerate-key"),
    ],
)
async def test_admin_token_required(http, headers, method, path):
    response = await http.request(method, path, headers=headers, json={"name": "x"})
    error = await assert_error(response, 401, "invalid_admin_token")
    assert "admin token" in error["message"]
    # RFC 6750 §3: a bearer token that was sent and is wrong is named invalid_token.
    refused = headers.get("Authorization", "").startswith("Bearer ")
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="relay", error="invalid_token"' if refused else 'Bearer realm="relay"'
    )


async def test_a_client_token_is_not_an_admin_token(http):
    client = await create_client(http)
    token = await exchange(http, client["api_key"])
    await assert_error(await http.get("/admin/clients", headers=bearer(token)), 401)


async def test_create_shows_the_key_once_and_stores_only_a_hash(http):
    response = await http.post(
        "/admin/clients",
        json={
            "name": "ios app",
            "scopes": ["chat"],
            "limits": {"requests_per_minute": 60},
            "store_history": False,
            "metadata": {"team": "mobile"},
        },
        headers=ADMIN,
    )

    assert response.status == 201
    assert response.headers["Cache-Control"] == "no-store"
    client = await response.json()
    match = KEY.match(client["api_key"])
    assert match, client["api_key"]
    key_id, secret = match.groups()
    assert client["key_id"] == key_id
    assert uuid.UUID(client["id"])
    assert client["object"] == "client"
    assert client["name"] == "ios app"
    assert client["scopes"] == ["chat"]
    assert client["status"] == "active"
    assert client["limits"] == {"requests_per_minute": 60}
    assert client["store_history"] is False
    assert client["metadata"] == {"team": "mobile"}
    assert client["key_version"] == 1

    shown = await (await http.get(f"/admin/clients/{client['id']}", headers=ADMIN)).json()
    assert "api_key" not in shown
    listed = await (await http.get("/admin/clients", headers=ADMIN)).json()
    assert all("api_key" not in item for item in listed["data"])
    assert secret not in str(shown) + str(listed)

    row = await stored_row(http, client["id"])
    assert row is not None
    assert row["key_id"] == key_id
    assert row["key_hash"].startswith("$2")
    assert secret not in str(row)
    assert bcrypt.checkpw(secret.encode(), row["key_hash"].encode())


async def test_create_defaults(http):
    client = await create_client(http, name="plain")
    assert client["scopes"] == []
    assert client["limits"] == {}
    assert client["store_history"] is True
    assert client["metadata"] == {}


@pytest.mark.parametrize(
    "body,param",
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": 5}, "name"),
        ({"name": "a\nb"}, "name"),  # control characters garble listings and logs
        ({"name": "ok\u001b[31m"}, "name"),
        ({"name": "\u200b\u200b"}, "name"),  # zero-width: names nothing
        ({"name": "ok", "scopes": "chat"}, "scopes"),
        ({"name": "ok", "scopes": ["has space"]}, "scopes"),
        ({"name": "ok", "status": "paused"}, "status"),
        ({"name": "ok", "limits": []}, "limits"),
        ({"name": "ok", "limits": {"bogus": 1}}, "limits.bogus"),
        ({"name": "ok", "limits": {"requests_per_minute": -1}}, "limits.requests_per_minute"),
        ({"name": "ok", "limits": {"requests_per_minute": True}}, "limits.requests_per_minute"),
        ({"name": "ok", "limits": {"tokens_per_minute": 10**9 + 1}}, "limits.tokens_per_minute"),
        ({"name": "ok", "scopes": ["model:gpt-4o\n"]}, "scopes"),
        # Meant as model scopes, they would have granted every model, or none.
        ({"name": "ok", "scopes": ["Model:gpt-4o"]}, "scopes"),
        ({"name": "ok", "scopes": ["models:gpt-4o"]}, "scopes"),
        ({"name": "ok", "scopes": ["model"]}, "scopes"),
        ({"name": "ok", "scopes": ["model:"]}, "scopes"),
        ({"name": "ok", "scopes": ["model:gpt-*"]}, "scopes"),
        ({"name": "ok", "store_history": "yes"}, "store_history"),
        ({"name": "ok", "metadata": ["a"]}, "metadata"),
        ({"name": "ok", "api_key": "rk_mine"}, "api_key"),
        ({"name": "ok", "key_hash": "x"}, "key_hash"),
    ],
)
async def test_create_validation(http, body, param):
    response = await http.post("/admin/clients", json=body, headers=ADMIN)
    error = await assert_error(response, 400)
    assert error["param"] == param


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "a", "name": "b"}',
        b'{"name": "a", "limits": {"requests_per_minute": 1, "requests_per_minute": 0}}',
    ],
)
async def test_a_field_named_twice_is_refused_not_guessed(http, body):
    response = await http.post(
        "/admin/clients", data=body, headers={**ADMIN, "Content-Type": "application/json"}
    )
    error = await assert_error(response, 400)
    assert "same field twice" in error["message"]


async def test_a_name_is_measured_once_stripped(http):
    client = await create_client(http, name="  " + "n" * 200 + "  ")
    assert client["name"] == "n" * 200


async def test_model_scopes_and_others_are_kept_as_given(http):
    scopes = ["model:gpt-4o", "model:org/m-1.5", "model:*", "history:read", "team:ios"]
    client = await create_client(http, name="scoped", scopes=scopes)
    assert client["scopes"] == scopes


async def test_list_pagination(http):
    created = [(await create_client(http, name=f"client {n}"))["id"] for n in range(5)]

    first = await (await http.get("/admin/clients?limit=2", headers=ADMIN)).json()
    assert first["object"] == "list"
    assert [item["id"] for item in first["data"]] == created[:2]
    assert first["has_more"] is True
    assert first["first_id"] == created[0] and first["last_id"] == created[1]

    second = await (
        await http.get(f"/admin/clients?limit=2&after={first['last_id']}", headers=ADMIN)
    ).json()
    assert [item["id"] for item in second["data"]] == created[2:4]
    assert second["has_more"] is True

    third = await (
        await http.get(f"/admin/clients?limit=2&after={second['last_id']}", headers=ADMIN)
    ).json()
    assert [item["id"] for item in third["data"]] == created[4:]
    assert third["has_more"] is False
    assert third["first_id"] == third["last_id"] == created[4]

    everything = await (await http.get("/admin/clients", headers=ADMIN)).json()
    assert [item["id"] for item in everything["data"]] == created
    assert everything["has_more"] is False


async def test_empty_list(http):
    body = await (await http.get("/admin/clients", headers=ADMIN)).json()
    assert body == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
        "next_cursor": None,
    }


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=two"])
async def test_list_bad_limit(http, query):
    error = await assert_error(await http.get(f"/admin/clients?{query}", headers=ADMIN), 400)
    assert error["param"] == "limit"


async def test_get(http):
    client = await create_client(http, name="reader", scopes=["chat"])
    response = await http.get(f"/admin/clients/{client['id']}", headers=ADMIN)
    assert response.status == 200
    shown = await response.json()
    assert {key: value for key, value in client.items() if key != "api_key"} == shown


@pytest.mark.parametrize(
    "field,value",
    [
        ("name", "renamed"),
        ("scopes", ["chat", "history"]),
        ("status", "disabled"),
        ("limits", {"tokens_per_minute": 1000, "requests_per_minute": 5}),
        ("store_history", False),
        ("metadata", {"owner": "ops", "tier": 2}),
    ],
)
async def test_patch_each_field(http, field, value):
    client = await create_client(http)
    response = await http.patch(
        f"/admin/clients/{client['id']}", json={field: value}, headers=ADMIN
    )
    assert response.status == 200, await response.text()
    assert (await response.json())[field] == value
    shown = await (await http.get(f"/admin/clients/{client['id']}", headers=ADMIN)).json()
    assert shown[field] == value
    assert shown["updated_at"] >= client["updated_at"]
    untouched = {key for key in ("name", "scopes", "status", "store_history") if key != field}
    assert all(shown[key] == client[key] for key in untouched)


async def test_patch_null_limit_drops_the_override(http):
    client = await create_client(http, limits={"requests_per_minute": 5})
    response = await http.patch(
        f"/admin/clients/{client['id']}",
        json={"limits": {"requests_per_minute": None, "tokens_per_minute": 9}},
        headers=ADMIN,
    )
    assert (await response.json())["limits"] == {"tokens_per_minute": 9}


async def test_patch_merges_limits_into_the_clients_own(http):
    # A blocked client stays blocked when the operator sets another of its limits
    # (RFC 7396): only the limits a PATCH names change.
    client = await create_client(http, limits={"requests_per_minute": 0, "tokens_per_minute": 9})
    url = f"/admin/clients/{client['id']}"
    response = await http.patch(
        url, json={"limits": {"chat_requests_per_minute": 7}}, headers=ADMIN
    )
    expected = {"requests_per_minute": 0, "tokens_per_minute": 9, "chat_requests_per_minute": 7}
    assert (await response.json())["limits"] == expected
    response = await http.patch(url, json={"limits": {"tokens_per_minute": 10}}, headers=ADMIN)
    assert (await response.json())["limits"] == {**expected, "tokens_per_minute": 10}
    response = await http.patch(url, json={"limits": {}}, headers=ADMIN)
    assert (await response.json())["limits"] == {**expected, "tokens_per_minute": 10}


async def test_a_created_client_has_its_location(http):
    response = await http.post("/admin/clients", json={"name": "located"}, headers=ADMIN)
    assert response.status == 201
    created = await response.json()
    assert response.headers["Location"] == f"/admin/clients/{created['id']}"
    assert (await http.get(response.headers["Location"], headers=ADMIN)).status == 200


async def test_a_patch_in_another_media_type_is_told_which_it_may_use(http):
    client = await create_client(http)
    response = await http.patch(
        f"/admin/clients/{client['id']}",
        data=b'{"name": "x"}',
        headers={**ADMIN, "Content-Type": "application/merge-patch+json"},
    )
    await assert_error(response, 415, "unsupported_media_type")
    assert response.headers["Accept-Patch"] == "application/json"


@pytest.mark.parametrize(
    "body,param",
    [
        ({"name": ""}, "name"),
        ({"scopes": [1]}, "scopes"),
        ({"status": "deleted"}, "status"),
        ({"limits": {"requests_per_minute": "many"}}, "limits.requests_per_minute"),
        ({"store_history": None}, "store_history"),
        ({"metadata": "x"}, "metadata"),
        ({"key_version": 7}, "key_version"),
        ({"id": str(uuid.uuid4())}, "id"),
        ({}, None),
    ],
)
async def test_patch_validation(http, body, param):
    client = await create_client(http)
    response = await http.patch(f"/admin/clients/{client['id']}", json=body, headers=ADMIN)
    error = await assert_error(response, 400)
    assert error["param"] == param
    shown = await (await http.get(f"/admin/clients/{client['id']}", headers=ADMIN)).json()
    assert shown["updated_at"] == client["updated_at"] and shown["name"] == client["name"]


@pytest.mark.parametrize("client_id", ["not-a-uuid", "1", UNKNOWN_ID])
@pytest.mark.parametrize(
    "method,suffix,body",
    [
        ("GET", "", None),
        ("PATCH", "", {"name": "x"}),
        ("DELETE", "", None),
        ("POST", "/regenerate-key", None),
    ],
)
async def test_unknown_or_invalid_id_is_404(http, client_id, method, suffix, body):
    response = await http.request(
        method, f"/admin/clients/{client_id}{suffix}", json=body, headers=ADMIN
    )
    await assert_error(response, 404)


async def test_delete(http):
    client = await create_client(http)
    response = await http.delete(f"/admin/clients/{client['id']}", headers=ADMIN)
    assert response.status == 200
    assert await response.json() == {
        "object": "client.deleted",
        "id": client["id"],
        "deleted": True,
    }

    await assert_error(await http.get(f"/admin/clients/{client['id']}", headers=ADMIN), 404)
    await assert_error(await http.delete(f"/admin/clients/{client['id']}", headers=ADMIN), 404)
    assert await stored_row(http, client["id"]) is None
    response = await http.post("/auth/token", json={"api_key": client["api_key"]})
    await assert_error(response, 401, "invalid_api_key")


def spellings(client_id: str) -> list[str]:
    """Other ways of writing the same uuid, which Python reads and PostgreSQL may not."""
    return [client_id.upper(), f"urn:uuid:{client_id}", client_id.replace("-", "")]


async def test_any_spelling_of_a_client_id_names_the_client(http):
    client = await create_client(http)
    for spelling in spellings(client["id"]):
        response = await http.get(f"/admin/clients/{spelling}", headers=ADMIN)
        assert response.status == 200 and (await response.json())["id"] == client["id"]
        response = await http.get(f"/admin/clients?after={spelling}", headers=ADMIN)
        assert response.status == 200
    token = await exchange(http, client["api_key"])
    response = await http.delete(f"/admin/clients/{client['id'].upper()}", headers=ADMIN)
    assert (await response.json())["id"] == client["id"]
    # Revoked at once on this instance, not when the database's notification arrives.
    await assert_error(await http.get("/v1/me", headers=bearer(token)), 401)


async def test_regenerate_key(http):
    client = await create_client(http)
    old_token = await exchange(http, client["api_key"])

    response = await http.post(f"/admin/clients/{client['id']}/regenerate-key", headers=ADMIN)

    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    renewed = await response.json()
    assert KEY.match(renewed["api_key"])
    assert renewed["api_key"] != client["api_key"]
    assert renewed["key_id"] != client["key_id"]
    assert renewed["key_version"] == client["key_version"] + 1
    assert renewed["id"] == client["id"]

    refused = await http.post("/auth/token", json={"api_key": client["api_key"]})
    await assert_error(refused, 401, "invalid_api_key")
    await assert_error(await http.get("/v1/me", headers=bearer(old_token)), 401, "token_revoked")

    new_token = await exchange(http, renewed["api_key"])
    me = await http.get("/v1/me", headers=bearer(new_token))
    assert me.status == 200 and (await me.json())["id"] == client["id"]

    row = await stored_row(http, client["id"])
    assert row["key_version"] == 2
    assert bcrypt.checkpw(renewed["api_key"].split("_")[2].encode(), row["key_hash"].encode())


async def test_regenerate_a_disabled_client_keeps_it_disabled(http):
    client = await create_client(http, status="disabled")
    response = await http.post(f"/admin/clients/{client['id']}/regenerate-key", headers=ADMIN)
    renewed = await response.json()
    assert renewed["status"] == "disabled"
    refused = await http.post("/auth/token", json={"api_key": renewed["api_key"]})
    await assert_error(refused, 401, "invalid_api_key")


@pytest.mark.parametrize("after", ["not-a-uuid", UNKNOWN_ID])
async def test_list_after_an_unknown_client(http, after):
    await create_client(http)
    response = await http.get(f"/admin/clients?after={after}", headers=ADMIN)
    error = await assert_error(response, 400)
    assert error["param"] == "after"


async def test_a_client_id_cursor_deleted_as_the_page_is_read_still_pages_on(http):
    # The client named by `after` (as earlier versions paged) goes just before the page
    # is read: its position, read first, still holds, so the page is neither refused
    # nor read as the end of the listing.
    created = [(await create_client(http, name=name))["id"] for name in ("a", "b", "c")]
    first = await (await http.get("/admin/clients?limit=1", headers=ADMIN)).json()
    store = http.app[CLIENTS].store
    read_page = store.list_page

    async def deleted_first(**kwargs: Any) -> Any:
        assert await store.delete(first["last_id"])
        return await read_page(**kwargs)

    store.list_page = deleted_first
    try:
        response = await http.get(f"/admin/clients?limit=1&after={first['last_id']}", headers=ADMIN)
    finally:
        del store.list_page
    assert response.status == 200
    assert [item["id"] for item in (await response.json())["data"]] == created[1:2]
