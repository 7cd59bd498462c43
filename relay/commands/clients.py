"""`relay clients …`: the admin API's client operations from the command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import orjson

from relay.api.client_object import client_json
from relay.commands.refusals import refused
from relay.config import Settings
from relay.errors import RelayError, operator_message
from relay.services.apikeys import KeyHasher
from relay.services.clients import ClientService
from relay.stores.clients import ClientStore
from relay.stores.database import Database, QueryError
from relay.stores.migrations import MigrationError, prepare_schema

T = TypeVar("T")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a client and print its API key once")
    create.add_argument("--name", required=True)
    create.add_argument("--scope", action="append", default=[], dest="scopes")
    create.add_argument("--no-history", action="store_true", help="do not store its conversations")
    listing = actions.add_parser("list", help="list clients, oldest first")
    listing.add_argument("--limit", type=_page_size, default=100, help="1 to 500 (default 100)")
    listing.add_argument("--after", help="the cursor the previous page printed")
    for name, text in (
        ("disable", "refuse the client's key and tokens at once"),
        ("enable", "let a disabled client back in"),
        ("regenerate-key", "issue a new key; the old key and its tokens stop working"),
        ("delete", "delete the client and everything it stored"),
    ):
        actions.add_parser(name, help=text).add_argument("client_id")


def _page_size(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a whole number") from None
    if not 1 <= value <= 500:
        raise argparse.ArgumentTypeError("must be between 1 and 500")
    return value


@asynccontextmanager
async def client_store(settings: Settings) -> AsyncIterator[ClientStore]:
    """The clients table of RELAY_DATABASE_URL, its schema brought up to date first."""
    await prepare_schema(
        settings.database_url, apply=settings.run_migrations, timeout=settings.database_timeout
    )
    database = await Database.open(settings.database_url, size=2, timeout=settings.database_timeout)
    try:
        yield ClientStore(database)
    finally:
        await database.close()


@asynccontextmanager
async def client_service(settings: Settings) -> AsyncIterator[ClientService]:
    async with client_store(settings) as store:
        # The dummy hash costs a bcrypt at RELAY_BCRYPT_ROUNDS: only what makes keys pays it.
        hasher = await asyncio.get_running_loop().run_in_executor(
            None, KeyHasher, settings.bcrypt_rounds
        )
        yield ClientService(store, hasher)


async def _run(settings: Settings, args: argparse.Namespace) -> object:
    async with client_service(settings) as clients:
        if args.action == "create":
            body = {"name": args.name, "scopes": args.scopes, "store_history": not args.no_history}
            client, key = await clients.create(body)
            return client_json(client, key)
        if args.action == "list":
            page = await clients.list_page(limit=args.limit, after=args.after)
            if page.has_more:
                print(f"more clients follow: --after {page.next_cursor}", file=sys.stderr)
            return [client_json(client) for client in page.clients]
        if args.action in ("disable", "enable"):
            status = "disabled" if args.action == "disable" else "active"
            return client_json(await clients.update(args.client_id, {"status": status}))
        if args.action == "regenerate-key":
            return client_json(*await clients.regenerate_key(args.client_id))
        return {"id": await clients.delete(args.client_id), "deleted": True}


def run(settings: Settings, args: argparse.Namespace) -> int:
    return print_outcome(f"clients {args.action}", _run(settings, args))


def print_outcome(
    label: str, work: Coroutine[Any, Any, T], *, status: Callable[[T], int] = lambda _: 0
) -> int:
    """Run `work` and print what it returns as JSON on stdout; exit with `status` of
    it. A refusal (relay's, a migration's, the database's) is one line on stderr,
    `relay <label>: …`, and exit status 1; 2 for a migration an operator must mend
    first, as `relay migrate` says it (relay.commands.refusals)."""
    try:
        result = asyncio.run(work)
    except RelayError as exc:
        print(f"relay {label}: {operator_message(exc)}", file=sys.stderr)
        return 1
    except MigrationError as exc:
        return refused(label, exc)
    except QueryError as exc:
        # Most likely a schema behind this version, with migrations turned off.
        # PostgreSQL's first line names relay's tables and columns, no client data.
        reason = str(exc).strip().splitlines()[0]
        print(f"relay {label}: {reason} (is the schema migrated? `relay migrate`)", file=sys.stderr)
        return 1
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return status(result)
