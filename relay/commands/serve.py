"""`relay serve`: run the gateway on uvloop until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

import uvloop
from aiohttp import web

from relay.app import create_app
from relay.config import Settings

log = logging.getLogger(__name__)


async def start_sites(runner: web.AppRunner, settings: Settings) -> list[web.BaseSite]:
    sites: list[web.BaseSite] = []
    if settings.unix_socket:
        sites.append(web.UnixSite(runner, settings.unix_socket))
    else:
        sites.append(web.TCPSite(runner, settings.host, settings.port, reuse_address=True))
    for site in sites:
        await site.start()
    return sites


async def serve(settings: Settings, app: web.Application | None = None) -> None:
    app = app or create_app(settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        sites = await start_sites(runner, settings)
        log.info("relay listening", extra={"sites": [site.name for site in sites]})
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("relay stopping")
    finally:
        await runner.cleanup()


def run(settings: Settings) -> int:
    uvloop.run(serve(settings))
    return 0
