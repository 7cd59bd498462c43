"""`relay simulate` as the benchmark runs it: the same app and wire format, minus the
request log kept for tests.

The simulator's state keeps every request it receives so tests can assert on them.
Over a benchmark that is hundreds of thousands of requests: the process grows by
hundreds of MB and Python's cyclic GC, walking that list, stalls it for 100 ms and
more, which showed up as p99 latency and token gaps on every path, direct included.

    python -m bench.simulator --port 9090 --tokens 64 --token-delay-ms 20
"""

from __future__ import annotations

import argparse
from typing import SupportsIndex

import uvloop
from aiohttp import web

from relay.simulator import ReceivedRequest, SimulatorConfig, SimulatorState, create_simulator_app
from relay.simulator.command import add_arguments
from relay.simulator.keys import SIMULATOR_STATE


class _Forgetful(list[ReceivedRequest]):
    """A request log that keeps nothing."""

    def append(self, item: ReceivedRequest) -> None:
        pass

    def insert(self, index: SupportsIndex, item: ReceivedRequest) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args()
    config = SimulatorConfig(
        tokens=args.tokens,
        token_delay=args.token_delay_ms / 1000,
        first_byte_delay=args.first_byte_delay_ms / 1000,
        error_status=args.error_status,
        cut_after=args.cut_after,
        api_key=args.api_key,
        models=args.models,
    )
    app = create_simulator_app(config)
    app[SIMULATOR_STATE] = SimulatorState(requests=_Forgetful())
    # As `relay simulate` serves it: no access log, a backlog for 1,000 clients at once.
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        access_log=None,
        backlog=4096,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
