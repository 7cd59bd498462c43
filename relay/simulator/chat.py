"""`POST /v1/chat/completions`: the answer, streamed or not, and the failure modes."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from relay.simulator.auth import authorize
from relay.simulator.chunks import DONE, ChunkEncoder
from relay.simulator.completion import completion_body
from relay.simulator.config import SimulatorConfig
from relay.simulator.errors import OpenAIError, out_of_quota, simulated_error
from relay.simulator.ids import completion_id
from relay.simulator.keys import SIMULATOR_CONFIG, SIMULATOR_STATE, SPENT_TOKENS
from relay.simulator.request import ChatRequest, parse_chat_request
from relay.simulator.state import ReceivedRequest, SimulatorState, StreamEnd
from relay.simulator.tokens import completion_text, usage


async def create_chat_completion(request: web.Request) -> web.StreamResponse:
    config = request.app[SIMULATOR_CONFIG]
    state = request.app[SIMULATOR_STATE]
    body = await request.read()
    # Recorded before any check, so a test sees exactly what was forwarded even if rejected.
    if config.record_requests:
        state.record(ReceivedRequest(body, request.headers))
    try:
        authorize(request, config.api_key)
        if config.first_byte_delay > 0:
            try:
                await asyncio.sleep(config.first_byte_delay)
            except asyncio.CancelledError:
                state.request_abandoned()
                raise
        if config.out_of_quota:
            raise out_of_quota()
        if config.error_status is not None:
            raise simulated_error(config.error_status, config)
        chat = parse_chat_request(body, config.models)
    except OpenAIError as exc:
        return exc.response()
    tokens, finish_reason = _length(config, chat)
    request[SPENT_TOKENS] = chat.prompt_tokens + tokens * chat.choices
    if chat.stream:
        return await _stream(request, config, state, chat, tokens, finish_reason)
    if config.cut_after is not None:
        _cut(request)
        return web.Response()
    content = completion_body(
        completion_id=completion_id(),
        created=int(time.time()),
        model=chat.model,
        contents=[completion_text(tokens, choice) for choice in range(chat.choices)],
        finish_reason=finish_reason,
        usage=usage(chat.prompt_tokens, tokens * chat.choices),
    )
    return web.Response(body=content, headers={"Content-Type": "application/json"})


def _length(config: SimulatorConfig, chat: ChatRequest) -> tuple[int, str]:
    if chat.max_tokens is not None and chat.max_tokens < config.tokens:
        return chat.max_tokens, "length"
    return max(config.tokens, 0), "stop"


async def _stream(
    request: web.Request,
    config: SimulatorConfig,
    state: SimulatorState,
    chat: ChatRequest,
    tokens: int,
    finish_reason: str,
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    encoder = ChunkEncoder(
        completion_id(),
        int(time.time()),
        chat.model,
        include_usage=chat.include_usage,
        include_obfuscation=chat.include_obfuscation,
    )
    cut_after = config.cut_after
    emitted = tokens if cut_after is None else max(min(cut_after, tokens), 0)
    delay = config.token_delay
    state.stream_opened()
    end: StreamEnd = "disconnected"
    try:
        writer = await response.prepare(request)
        assert writer is not None
        # One write and one drain per event, so the pacing a client sees is real. With
        # `n` > 1 the choices' events interleave, one of each per token, as OpenAI's do.
        choices = range(chat.choices)
        for choice in choices:
            await writer.write(encoder.role(choice))
            await writer.drain()
        for index in range(emitted):
            if index and delay > 0:
                await asyncio.sleep(delay)
            for choice in choices:
                await writer.write(encoder.token(index, choice))
                await writer.drain()
        if cut_after is not None:
            _cut(request)
            end = "cut"
            return response
        for choice in choices:
            await writer.write(encoder.finish(finish_reason, choice))
            await writer.drain()
        if chat.include_usage:
            await writer.write(encoder.usage(usage(chat.prompt_tokens, tokens * chat.choices)))
            await writer.drain()
        # [DONE] and the terminating zero-length chunk go out in one write.
        await response.write_eof(DONE)
        end = "completed"
    except ConnectionResetError:
        # The client left: aiohttp notices only when a write fails (or, with handler
        # cancellation on, by cancelling us, which leaves `end` at "disconnected" too).
        pass
    finally:
        state.stream_closed(end)
    return response


def _cut(request: web.Request) -> None:
    """Drop the connection: what was written is flushed, then the client sees EOF
    in the middle of the chunked body (or before any response at all)."""
    transport = request.transport
    if transport is not None:
        transport.close()
