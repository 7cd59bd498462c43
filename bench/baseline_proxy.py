"""The baseline: the least a Python aiohttp proxy can do, so relay is measured against a floor.

No auth, no routing, nothing observed or recorded: the request body goes to the
upstream as received and the answer's bytes come back as they arrive. It runs on
uvloop, pinned to relay's core, so relay/baseline is what relay's work costs.

    python -m bench.baseline_proxy --port 8100 --upstream http://127.0.0.1:9090
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web

UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)
# Request headers worth forwarding; the rest (host, length, hop-by-hop) are the client's own.
_FORWARDED = ("Content-Type", "Authorization", "Accept")


async def session_context(app: web.Application) -> AsyncIterator[None]:
    # limit=0: a pool cap would queue the 1,000-stream phase, which measures nothing useful.
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
    ) as session:
        app[SESSION] = session
        yield


async def forward(request: web.Request) -> web.StreamResponse:
    headers = {name: request.headers[name] for name in _FORWARDED if name in request.headers}
    async with request.app[SESSION].request(
        request.method,
        request.app[UPSTREAM] + request.rel_url.raw_path_qs,
        data=await request.read(),
        headers=headers,
        allow_redirects=False,
    ) as upstream:
        response = web.StreamResponse(status=upstream.status)
        response.content_type = upstream.content_type
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


def create_baseline_app(upstream: str) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(session_context)
    app.router.add_route("*", "/{path:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:9090")
    args = parser.parse_args()
    web.run_app(
        create_baseline_app(args.upstream),
        host=args.host,
        port=args.port,
        access_log=None,
        backlog=4096,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
