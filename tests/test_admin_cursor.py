"""GET /admin/clients pages by an opaque cursor that holds its own position, so a
listing goes on past a client deleted between pages, skipping and repeating none."""

from __future__ import annotations

import asyncio
import base64
import datetime
import uuid
from typing import Any

import orjson
import pytest

from relay.appkeys import DATABASE
from relay.stores.database_batch import Batch
from tests.api_calls import ADMIN, assert_error, create_client
from tests.test_cli_clients import cli_runner, output


async def page(http, after: str | None = None, limit: int = 2) -> dict[str, Any]:
    query = f"limit={limit}" + (f"&after={after}" if after is not None else "")
    response = await http.get(f"/admin/clients?{query}", headers=ADMIN)
    assert response.status == 200, await response.text()
    return await response.json()


def ids(body: dict[str, Any]) -> list[str]:
    return [item["id"] for item in body["data"]]


async def delete(http, client_id: str) -> None:
    response = await http.delete(f"/admin/clients/{client_id}", headers=ADMIN)
    assert response.status == 200, await response.text()


async def test_paging_goes_on_past_the_client_the_cursor_came_from(http):
    created = [(await create_client(http, name=f"c{n}"))["id"] for n in range(5)]
    first = await page(http)
    assert ids(first) == created[:2] and first["has_more"] is True
    assert first["next_cursor"] not in created  # opaque: not the id itself

    await delete(http, created[1])  # the last client of the page the cursor came from
    second = await page(http, first["next_cursor"])
    assert ids(second) == created[2:4] and second["has_more"] is True

    await delete(http, created[3])
    await delete(http, created[4])  # nothing left after the cursor
    third = await page(http, second["next_cursor"])
    assert ids(third) == [] and third["has_more"] is False


async def test_a_listing_sees_every_surviving_client_once_while_others_come_and_go(http):
    created = [(await create_client(http, name=f"c{n}"))["id"] for n in range(7)]
    deleted = {created[3]}
    await delete(http, created[3])  # before the listing: never seen
    seen: list[str] = []
    body = await page(http, limit=1)
    while True:
        seen += ids(body)
        if seen and seen[-1] not in deleted:
            # Each page's client goes before the next page is asked for.
            await delete(http, seen[-1])
            deleted.add(seen[-1])
        if len(seen) == 2:
            created.append((await create_client(http, name="late"))["id"])
        if not body["has_more"]:
            break
        body = await page(http, body["next_cursor"], limit=1)
    assert seen == [client_id for client_id in created if client_id != created[3]]


async def test_clients_created_in_the_same_microsecond_are_each_listed_once(http):
    created = [(await create_client(http, name=f"c{n}"))["id"] for n in range(5)]
    async with http.app[DATABASE].cursor() as cur:
        await cur.execute("UPDATE clients SET created_at = '2026-01-02 03:04:05.678901+00'")
    in_order = sorted(created, key=uuid.UUID)  # ties are broken by id
    seen: list[str] = []
    body = await page(http, limit=2)
    while True:
        seen += ids(body)
        await delete(http, seen[-1])
        if not body["has_more"]:
            break
        body = await page(http, body["next_cursor"], limit=2)
    assert seen == in_order


async def test_the_last_pages_cursor_picks_up_clients_created_later(http):
    first = (await create_client(http))["id"]
    body = await page(http)
    assert ids(body) == [first] and body["has_more"] is False
    later = (await create_client(http))["id"]
    again = await page(http, body["next_cursor"])
    assert ids(again) == [later]
    # An empty page keeps the position it was asked from.
    empty = await page(http, again["next_cursor"])
    assert ids(empty) == [] and empty["next_cursor"] == again["next_cursor"]


async def test_an_empty_listing_has_no_cursor(http):
    body = await page(http)
    assert body["data"] == [] and body["next_cursor"] is None


async def test_a_client_id_as_older_versions_gave_out_is_still_read(http):
    created = [(await create_client(http, name=f"c{n}"))["id"] for n in range(3)]
    first = await page(http, limit=1)
    assert first["last_id"] == created[0]
    assert ids(await page(http, first["last_id"])) == created[1:]
    # Such a cursor names a client, not a position: once that client is gone it is
    # refused plainly, never read as the end of the listing.
    await delete(http, created[0])
    response = await http.get(f"/admin/clients?after={created[0]}", headers=ADMIN)
    error = await assert_error(response, 400)
    assert error["param"] == "after" and "from the start" in error["message"]


def encoded(value: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).rstrip(b"=").decode()


# Fixed, not drawn at import: test ids are made of them, and every worker of a
# parallel run (pytest -n) must collect the same tests.
GOOD_ID = "6f1c1b1e-3a59-4c5e-9d0a-2b7e8f4a6c11"
NOW = 1_796_135_879_950_058  # 2026-12-01, in microseconds since the epoch


@pytest.mark.parametrize(
    "after",
    [
        "not-a-cursor",
        "e30",  # {}
        encoded([NOW, GOOD_ID]),
        encoded({"t": NOW}),
        encoded({"id": GOOD_ID}),
        encoded({"t": str(NOW), "id": GOOD_ID}),
        encoded({"t": True, "id": GOOD_ID}),
        encoded({"t": 1.5, "id": GOOD_ID}),
        encoded({"t": 10**18, "id": GOOD_ID}),  # past the year 9999
        encoded({"t": -(10**18), "id": GOOD_ID}),
        encoded({"t": NOW, "id": "not-a-uuid"}),
        encoded({"t": NOW, "id": 5}),
        encoded({"t": NOW, "id": None}),
        encoded({"s": 5}),  # a history cursor
        encoded({"t": NOW, "id": GOOD_ID})[:-3],  # cut short
        encoded({"t": NOW, "id": GOOD_ID}) + "!!",
        base64.urlsafe_b64encode(b"\xff\xfe not json").decode(),
        "A" * 5000,
        "%00",
    ],
)
async def test_a_malformed_cursor_is_400_in_openais_shape(http, after):
    await create_client(http)
    response = await http.get("/admin/clients", params={"after": after}, headers=ADMIN)
    error = await assert_error(response, 400)
    assert error["param"] == "after"
    assert error["type"] == "invalid_request_error"


async def test_a_well_formed_cursor_reads_from_its_position(http):
    created = [(await create_client(http, name=f"c{n}"))["id"] for n in range(2)]
    assert ids(await page(http, encoded({"t": 0, "id": GOOD_ID}))) == created
    later = int(datetime.datetime.now(datetime.UTC).timestamp() * 1_000_000) + 10**12
    assert ids(await page(http, encoded({"t": later, "id": GOOD_ID}))) == []


def test_relay_clients_list_pages_on_past_a_deleted_client(relay_cli):
    created = [output(relay_cli("create", "--name", f"c{n}"))["id"] for n in range(4)]
    first = relay_cli("list", "--limit", "2")
    assert [client["id"] for client in output(first)] == created[:2]
    hint = first.stderr.strip().splitlines()[-1]
    assert hint.startswith("more clients follow: --after ")
    cursor = hint.removeprefix("more clients follow: --after ")
    relay_cli("delete", created[1])
    rest = relay_cli("list", "--limit", "2", "--after", cursor)
    assert [client["id"] for client in output(rest)] == created[2:]
    assert rest.stderr == ""
    refused = relay_cli("list", "--after", "not-a-cursor", ok=False)
    assert refused.returncode == 1 and "after" in refused.stderr


@pytest.fixture
def relay_cli(database_url, tmp_path):
    return cli_runner(database_url, tmp_path / "cli-state")


async def test_a_creation_that_commits_after_a_later_one_is_not_skipped(http, monkeypatch):
    # A creation that began first (its created_at earlier) but commits after another:
    # a page read in between must not put its cursor past where the first will sort.
    first = (await create_client(http, name="first"))["id"]
    committing, release = asyncio.Event(), asyncio.Event()
    held = [True]
    commit = Batch.commit

    async def held_commit(self: Batch) -> None:
        if held and held.pop():
            committing.set()
            await release.wait()
        await commit(self)

    monkeypatch.setattr(Batch, "commit", held_commit)
    slow = asyncio.ensure_future(create_client(http, name="slow"))
    await committing.wait()
    fast = asyncio.ensure_future(create_client(http, name="fast"))
    await asyncio.sleep(0.2)
    listing = asyncio.ensure_future(page(http, limit=10))
    await asyncio.sleep(0.2)
    release.set()
    created = [first, (await slow)["id"], (await fast)["id"]]

    body = await listing
    seen = ids(body)
    while True:
        body = await page(http, body["next_cursor"], limit=10)
        seen += ids(body)
        if not body["has_more"]:
            break
    assert sorted(seen) == sorted(created)
