"""`relay simulate`: serve the simulator on a port until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import sys

import uvloop
from aiohttp import web

from relay.simulator.app import create_simulator_app
from relay.simulator.config import SimulatorConfig

_DEFAULT = SimulatorConfig()


def _error_status(text: str) -> int:
    """An HTTP error status a provider could answer with: an error body under a
    success or a redirect status (or no status at all) is no provider's answer."""
    try:
        status = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a status number") from None
    if not 400 <= status <= 599:
        raise argparse.ArgumentTypeError(f"{status} is not an error status (400-599)")
    return status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument(
        "--tokens", type=int, default=_DEFAULT.tokens, help="completion tokens per answer"
    )
    parser.add_argument(
        "--token-delay-ms", type=float, default=0.0, help="pause between streamed tokens"
    )
    parser.add_argument(
        "--first-byte-delay-ms",
        type=float,
        default=0.0,
        help="pause before answering each chat request",
    )
    parser.add_argument(
        "--error-status",
        type=_error_status,
        help="answer every chat request with this error status (400-599), in OpenAI's shape",
    )
    parser.add_argument(
        "--cut-after",
        type=int,
        help="drop the connection after this many tokens of each streamed answer"
        " (a non-streamed request gets no answer at all)",
    )
    parser.add_argument("--api-key", help="require `Authorization: Bearer <key>`")
    parser.add_argument(
        "--models",
        default=",".join(_DEFAULT.models),
        help="comma-separated model ids to serve (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    config = SimulatorConfig(
        tokens=args.tokens,
        token_delay=args.token_delay_ms / 1000,
        first_byte_delay=args.first_byte_delay_ms / 1000,
        error_status=args.error_status,
        cut_after=args.cut_after,
        api_key=args.api_key,
        models=tuple(model for model in args.models.split(",") if model),
        record_requests=False,
    )
    try:
        web.run_app(
            create_simulator_app(config),
            host=args.host,
            port=args.port,
            # No access log: at 1,000 streams the benchmark would measure the logging.
            access_log=None,
            # 1,000 clients connecting at once overflow the default backlog of 128.
            backlog=4096,
            shutdown_timeout=5.0,
            print=lambda _: print(
                f"relay simulator on http://{args.host}:{args.port}/v1", flush=True
            ),
            loop=uvloop.new_event_loop(),
        )
    except OSError as exc:  # the port taken, a host that is no name: --host and --port
        print(
            f"relay simulate: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
    return 0
