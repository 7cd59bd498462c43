"""`relay simulate`: serve the simulator on a port until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TypeVar

import uvloop
from aiohttp import web

from relay.simulator.app import create_simulator_app
from relay.simulator.config import SimulatorConfig

_DEFAULT = SimulatorConfig()
_N = TypeVar("_N", int, float)


def _ranged(convert: Callable[[str], _N], low: _N, high: _N, what: str) -> Callable[[str], _N]:
    """An argument type: a number `convert` reads, from `low` to `high` (NaN is none)."""

    def read(text: str) -> _N:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value

    return read


# An error body under a success or a redirect status (or no status at all) is no
# provider's answer.
_error_status = _ranged(int, 400, 599, "an error status (400-599)")
_count = _ranged(int, 0, sys.maxsize, "a whole number, 0 or more")
_port = _ranged(int, 0, 65535, "a port (0-65535)")
_milliseconds = _ranged(float, 0.0, sys.float_info.max, "a pause (0 ms or more)")


def _models(text: str) -> tuple[str, ...]:
    models = tuple(model for model in text.split(",") if model)
    if not models:
        raise argparse.ArgumentTypeError("name at least one model id")
    return models


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulator's options; a value that makes no sense (a negative count or pause,
    no model) stops the command with a usage error rather than serving nonsense."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_port, default=9090)
    parser.add_argument(
        "--tokens", type=_count, default=_DEFAULT.tokens, help="completion tokens per answer"
    )
    parser.add_argument(
        "--token-delay-ms", type=_milliseconds, default=0.0, help="pause between streamed tokens"
    )
    parser.add_argument(
        "--first-byte-delay-ms",
        type=_milliseconds,
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
        type=_count,
        help="drop the connection after this many tokens of each streamed answer"
        " (a non-streamed request gets no answer at all)",
    )
    parser.add_argument("--api-key", help="require `Authorization: Bearer <key>`")
    parser.add_argument(
        "--models",
        type=_models,
        default=_DEFAULT.models,
        help=f"comma-separated model ids to serve (default: {','.join(_DEFAULT.models)})",
    )


def run(args: argparse.Namespace) -> int:
    config = SimulatorConfig(
        tokens=args.tokens,
        token_delay=args.token_delay_ms / 1000,
        first_byte_delay=args.first_byte_delay_ms / 1000,
        error_status=args.error_status,
        cut_after=args.cut_after,
        api_key=args.api_key,
        models=args.models,
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
