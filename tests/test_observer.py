"""The stream observer and completion summaries: SSE split anywhere, answers read the same."""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import replace
from typing import Any

import orjson
import pytest

from relay.upstreams.deltas import DeltaObserver
from relay.upstreams.observer import CompletionSummary, StreamObserver, summarize_completion
from relay.upstreams.sse import MAX_EVENT_BYTES, SSEDecoder

USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 5,
    "total_tokens": 17,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}
PIECES = ["Héllo", ", wörld", " — 日本", " 🙂", "!"]


def chunk(choices: Any, **extra: Any) -> dict[str, Any]:
    """One `chat.completion.chunk` object with the fields OpenAI sends, in its order."""
    return {
        "id": "chatcmpl-AbC123",
        "object": "chat.completion.chunk",
        "created": 1731000000,
        "model": "gpt-4o-mini-2024-07-18",
        "service_tier": "default",
        "system_fingerprint": "fp_0ba0d124f1",
        "choices": choices,
        "usage": None,
        **extra,
    }


def delta(content: dict[str, Any], finish_reason: str | None = None, index: int = 0) -> dict:
    return {"index": index, "delta": content, "logprobs": None, "finish_reason": finish_reason}


def event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def openai_stream(pieces: list[str] = PIECES, usage: bool = True) -> bytes:
    """A stream as OpenAI writes it: role chunk, content, finish, usage chunk, [DONE]."""
    events = [event(chunk([delta({"role": "assistant", "content": "", "refusal": None})]))]
    events += [event(chunk([delta({"content": piece})])) for piece in pieces]
    events.append(event(chunk([delta({}, "stop")])))
    if usage:
        events.append(event(chunk([], usage=USAGE)))
    events.append(b"data: [DONE]\n\n")
    return b"".join(events)


def observe(*chunks: bytes) -> StreamObserver:
    observer = StreamObserver()
    for piece in chunks:
        observer.feed(piece)
    observer.close()
    return observer


def state(observer: StreamObserver) -> tuple[Any, ...]:
    """Everything the observer learned except timing."""
    return (
        observer.summary(),
        observer.sha256,
        observer.byte_count,
        observer.done,
        observer.event_count,
        observer.malformed_events,
    )


STREAM = openai_stream()
WHOLE = observe(STREAM)


def test_a_whole_openai_stream_is_read_in_full() -> None:
    assert WHOLE.text == "".join(PIECES)
    assert WHOLE.finish_reason == "stop"
    assert WHOLE.usage == USAGE
    assert WHOLE.model == "gpt-4o-mini-2024-07-18"
    assert WHOLE.response_id == "chatcmpl-AbC123"
    assert WHOLE.done is True
    assert WHOLE.error is None
    assert WHOLE.tool_calls == []
    assert WHOLE.refusal == ""
    assert WHOLE.event_count == len(PIECES) + 4
    assert WHOLE.malformed_events == 0
    assert WHOLE.first_content_at is not None


def test_the_hash_and_count_cover_the_exact_bytes_fed() -> None:
    assert WHOLE.sha256 == hashlib.sha256(STREAM).hexdigest()
    assert WHOLE.byte_count == len(STREAM)
    assert StreamObserver().sha256 == hashlib.sha256(b"").hexdigest()


def test_a_split_at_every_byte_position_changes_nothing() -> None:
    expected = state(WHOLE)
    for cut in range(len(STREAM) + 1):
        assert state(observe(STREAM[:cut], STREAM[cut:])) == expected, cut


def test_one_event_per_chunk_changes_nothing() -> None:
    events = [part + b"\n\n" for part in STREAM.split(b"\n\n")[:-1]]
    assert b"".join(events) == STREAM
    assert state(observe(*events)) == state(WHOLE)
    assert state(observe(events[0][:9], events[0][9:], *events[1:])) == state(WHOLE)


def test_one_byte_at_a_time_changes_nothing() -> None:
    bytewise = [STREAM[i : i + 1] for i in range(len(STREAM))]
    assert state(observe(*bytewise)) == state(WHOLE)


def test_random_splits_change_nothing() -> None:
    rng = random.Random(20261123)
    expected = state(WHOLE)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 40)))
        bounds = [0, *cuts, len(STREAM)]
        pieces = [STREAM[a:b] for a, b in itertools.pairwise(bounds)]
        if rng.random() < 0.2:
            pieces.insert(rng.randrange(len(pieces)), b"")
        assert state(observe(*pieces)) == expected, cuts


@pytest.mark.parametrize("ending", [b"\r\n", b"\r"], ids=["crlf", "cr"])
def test_crlf_and_cr_line_endings_read_like_lf(ending: bytes) -> None:
    stream = STREAM.replace(b"\n", ending)
    for pieces in ([stream], [stream[i : i + 1] for i in range(len(stream))]):
        observer = observe(*pieces)
        assert observer.summary() == WHOLE.summary()
        assert (observer.done, observer.event_count) == (True, WHOLE.event_count)
        assert observer.sha256 == hashlib.sha256(stream).hexdigest()


def test_a_crlf_split_between_chunks_is_one_line_ending() -> None:
    first = b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\r'
    observer = observe(first, b"\n\r", b"\n", b"data: [DONE]\r", b"\n\r\n")
    assert (observer.text, observer.done, observer.event_count) == ("a", True, 2)


def test_mixed_line_endings_in_one_stream() -> None:
    stream = (
        b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\r\n\n'
        b'data: {"choices":[{"index":0,"delta":{"content":"b"}}]}\r\r'
        b'data: {"choices":[{"index":0,"delta":{"content":"c"}}]}\n\r\n'
    )
    assert observe(stream).text == "abc"


def test_a_multibyte_character_split_across_chunks_is_kept_whole() -> None:
    body = event(chunk([delta({"content": "🙂"})]))
    emoji = body.index("🙂".encode())
    for cut in range(emoji + 1, emoji + 4):
        assert observe(body[:cut], body[cut:]).text == "🙂"


def test_comment_lines_are_ignored_but_hashed() -> None:
    stream = (
        b": OPENROUTER PROCESSING\n\n"
        + STREAM[: STREAM.index(b"data:", 10)]
        + b": ping - 2025-11-23 10:00:00.000000+00:00\r\n\r\n"
        + STREAM[STREAM.index(b"data:", 10) :]
    )
    observer = observe(stream)
    assert observer.summary() == WHOLE.summary()
    assert observer.event_count == WHOLE.event_count
    assert observer.byte_count == len(stream)


def test_other_fields_are_tolerated() -> None:
    stream = (
        b"retry: 3000\nid: 7\nevent: message\n"
        b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'
        b"event: ping\n\n"
        b"id\n\n"
    )
    observer = observe(stream)
    assert (observer.text, observer.event_count, observer.malformed_events) == ("x", 1, 0)


def test_json_with_spaces_and_data_without_a_space_are_read() -> None:
    stream = (
        b'data: {"id": "r1", "model": "m", "choices": [{"index": 0, "delta": {"content": "a"}, '
        b'"finish_reason": null}]}\n\n'
        b'data:{"choices": [{"index": 0, "delta": {"content": " b"}, "finish_reason": "length"}]}'
        b"\n\n"
        b"data:  [DONE]\n\n"
    )
    observer = observe(stream)
    assert (observer.text, observer.finish_reason) == ("a b", "length")
    assert (observer.response_id, observer.model, observer.done) == ("r1", "m", True)


def test_a_usage_chunk_with_null_choices_is_read() -> None:
    stream = STREAM.replace(b'"choices":[],', b'"choices":null,')
    assert stream != STREAM
    assert observe(stream).summary() == WHOLE.summary()


def test_a_stream_without_usage_still_completes() -> None:
    observer = observe(openai_stream(usage=False))
    assert observer.usage is None
    assert (observer.text, observer.finish_reason, observer.done) == ("".join(PIECES), "stop", True)


def test_multi_line_data_is_joined_with_newlines() -> None:
    stream = (
        b'data: {"choices": [\ndata: {"index": 0, "delta": {"content": "two lines"}}\ndata: ]}\n\n'
    )
    observer = observe(stream)
    assert (observer.text, observer.event_count, observer.malformed_events) == ("two lines", 1, 0)


@pytest.mark.parametrize(
    ("bad", "count", "error"),
    [
        (b"data: 42\n\ndata: [1, 2]\n\n", 2, None),
        # No JSON at all: the client's parser raises on it, its words are lost to history.
        (b'data: {"choices": [\n\ndata: not json\n\ndata:\n\n', 3, "upstream_malformed"),
    ],
    ids=["not an object", "not JSON"],
)
def test_malformed_events_are_counted_and_reading_goes_on(bad, count, error) -> None:
    cut = STREAM.index(b"data:", 10)
    observer = observe(STREAM[:cut] + bad + STREAM[cut:])
    assert observer.malformed_events == count
    assert observer.event_count == WHOLE.event_count + count
    assert (observer.error or {}).get("code") == error
    assert observer.summary() == replace(WHOLE.summary(), error=observer.error)


@pytest.mark.parametrize(
    "obj",
    [
        {"choices": "x"},
        {"choices": [None, 3, {"delta": [1]}, {"index": [0], "delta": {"content": 5}}]},
        {"choices": [{"delta": {"tool_calls": {"a": 1}}}, {"message": "x"}]},
        {"choices": [{"delta": {"tool_calls": [None, {"index": "x", "function": "f"}]}}]},
        {"choices": [{"finish_reason": 3, "delta": {"refusal": 1}}]},
        {"usage": [], "model": 1, "id": None, "error": None},
    ],
)
def test_odd_shapes_never_raise(obj: dict[str, Any]) -> None:
    observer = observe(event(obj))
    assert observer.malformed_events == 0
    assert observer.text == ""
    assert observer.finish_reason is None


def test_a_mid_stream_error_event_is_recorded() -> None:
    error = {"message": "The server had an error", "type": "server_error", "code": None}
    first_two = b"\n\n".join(STREAM.split(b"\n\n")[:2]) + b"\n\n"
    observer = observe(first_two + event({"error": error}))
    assert observer.error == error
    assert observer.text == PIECES[0]
    assert observer.done is False
    assert observe(event({"error": "overloaded"})).error == {"message": "overloaded"}


def test_tool_call_fragments_are_assembled() -> None:
    def call(index: int, **fields: Any) -> bytes:
        return event(chunk([delta({"tool_calls": [{"index": index, **fields}]})]))

    stream = b"".join(
        [
            event(chunk([delta({"role": "assistant", "content": None})])),
            call(
                0, id="call_1", type="function", function={"name": "get_weather", "arguments": ""}
            ),
            call(0, function={"arguments": '{"city": '}),
            call(1, id="call_2", type="function", function={"name": "get_time", "arguments": ""}),
            call(0, function={"arguments": '"Paris"}'}),
            call(1, function={"arguments": "{}"}),
            event(chunk([delta({}, "tool_calls")])),
            b"data: [DONE]\n\n",
        ]
    )
    observer = observe(stream)
    assert observer.tool_calls == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]
    assert (observer.finish_reason, observer.text) == ("tool_calls", "")
    assert observer.first_content_at is not None


def test_a_refusal_is_collected_apart_from_text() -> None:
    stream = event(chunk([delta({"refusal": "I can't "})])) + event(
        chunk([delta({"refusal": "help with that."}, "stop")])
    )
    observer = observe(stream)
    assert (observer.refusal, observer.text) == ("I can't help with that.", "")
    assert observer.summary().reply == "I can't help with that."
    # /v1/chat passes the refusal on as the answer's text, as history keeps it.
    deltas = DeltaObserver()
    deltas.feed(stream)
    assert deltas.take() == ["I can't ", "help with that."]


def test_each_choice_keeps_its_own_text() -> None:
    stream = event(chunk([delta({"content": "a"}, index=0), delta({"content": "b"}, index=1)]))
    stream += event(chunk([delta({"content": "c"}, index=1), delta({}, "stop", index=0)]))
    observer = observe(stream)
    assert (observer.text, observer.choice_text(1), observer.finish_reason) == ("a", "bc", "stop")


def test_the_choices_after_the_first_are_summarised_in_order() -> None:
    call = {
        "index": 0,
        "id": "c1",
        "type": "function",
        "function": {"name": "f", "arguments": "{}"},
    }
    stream = event(chunk([delta({"content": "z"}, index=2), delta({"content": "a"}, index=0)]))
    stream += event(
        chunk([delta({"refusal": "no"}, index=1), delta({"tool_calls": [call]}, index=2)])
    )
    stream += event(chunk([delta({"content": "far"}, index=500)]))  # past OpenAI's 128
    more = observe(stream).summary().more_choices
    assert [(choice.index, choice.reply) for choice in more] == [(1, "no"), (2, "z")]
    assert (more[0].tool_calls, more[1].tool_calls) == (
        [],
        [{k: v for k, v in call.items() if k != "index"}],
    )
    # One choice: nothing more to keep.
    assert observe(event(chunk([delta({"content": "a"})]))).summary().more_choices == ()


def test_the_answer_is_finished_by_its_own_choice_only() -> None:
    stream = event(chunk([delta({"content": "a"}, index=0), delta({}, "length", index=1)]))
    assert observe(stream).finish_reason is None
    stream += event(chunk([delta({}, "stop", index=0), delta({}, None, index=2)]))
    assert observe(stream).finish_reason == "stop"
    # A first choice without an index is choice 0; a finish that is no string is none.
    assert observe(event(chunk([{"delta": {}, "finish_reason": "stop"}]))).finish_reason == "stop"
    assert observe(event(chunk([delta({}, 7)]))).finish_reason is None  # type: ignore[arg-type]


def test_what_every_choice_generated_is_counted_in_bytes() -> None:
    def call(**fields: Any) -> dict[str, Any]:
        return {"tool_calls": [{"index": 0, **fields}]}

    stream = b"".join(
        [
            event(chunk([delta({"role": "assistant", "content": ""}, index=i) for i in (0, 1)])),
            event(chunk([delta({"content": "héllo"}), delta({"content": "日本"}, index=1)])),
            event(chunk([delta({"refusal": "no"}, index=2)])),
            event(chunk([delta(call(id="call_1", type="function", function={"name": "f"}))])),
            event(chunk([delta(call(function={"arguments": '{"a": 1}'}))])),
            event(chunk([delta({"content": None, "reasoning_content": "hmm"}, index=1)])),
            # Sent under both names (vLLM's old and new), one thought is counted once.
            event(chunk([delta({"reasoning_content": "so", "reasoning": "so"}, index=3)])),
            event(chunk([delta({"reasoning": "ok", "content": "!"}, index=3)])),
            event(chunk([delta({}, "stop")], usage=None)),
        ]
    )
    # 6 + 6 text, 2 refusal, 1 + 8 tool call, 3 + 2 + 2 reasoning, 1 text.
    assert observe(stream).summary().generated_bytes == 31
    assert observe(openai_stream()).summary().generated_bytes == len("".join(PIECES).encode())


def test_a_whole_answer_counts_what_its_choices_generated_as_a_stream_does() -> None:
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    body = orjson.dumps(
        {
            "object": "chat.completion",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Hi", "refusal": None}},
                {
                    "index": 1,
                    "message": {"role": "assistant", "content": None, "tool_calls": calls},
                },
                {"index": 2, "message": {"content": "ok", "reasoning_content": "thought"}},
            ],
        }
    )
    assert summarize_completion(body).generated_bytes == 2 + 3 + 2 + 7


def test_a_legacy_function_call_is_counted_and_kept_as_a_tool_call() -> None:
    # OpenAI's deprecated `functions` are still answered with `function_call`,
    # streamed in fragments: what it generated is charged, and recorded.
    stream = b"".join(
        [
            event(chunk([delta({"role": "assistant", "function_call": {"name": "essay"}})])),
            *(
                event(chunk([delta({"function_call": {"arguments": piece}})]))
                for piece in ('{"text": "', "a" * 100, '"}')
            ),
            event(chunk([delta({}, "function_call")], usage=None)),
        ]
    )
    summary = observe(stream).summary()
    arguments = '{"text": "' + "a" * 100 + '"}'
    assert summary.generated_bytes == len("essay") + len(arguments)
    assert summary.tool_calls == [
        {"id": "", "type": "function", "function": {"name": "essay", "arguments": arguments}}
    ]
    call = {"name": "f", "arguments": "{}"}
    whole = {"role": "assistant", "content": None, "function_call": call}
    body = orjson.dumps({"object": "chat.completion", "choices": [{"index": 0, "message": whole}]})
    assert summarize_completion(body).generated_bytes == 3


def test_mistrals_thinking_parts_are_counted_but_are_not_the_answer() -> None:
    content = [
        {"type": "thinking", "thinking": [{"type": "text", "text": "let me see"}]},
        {"type": "thinking", "thinking": "hm"},
        {"type": "text", "text": "42"},
    ]
    summary = observe(event(chunk([delta({"content": content}, "stop")], usage=None))).summary()
    assert (summary.text, summary.generated_bytes) == ("42", 10 + 2 + 2)


def test_time_to_first_token_waits_for_content() -> None:
    observer = StreamObserver()
    observer.feed(event(chunk([delta({"role": "assistant", "content": ""})])))
    assert observer.first_content_at is None
    observer.feed(event(chunk([delta({"content": "Hi"})])))
    assert observer.first_content_at is not None


def test_an_incomplete_trailing_event_is_discarded_at_close() -> None:
    complete = event(chunk([delta({"content": "kept"})]))
    dangling = event(chunk([delta({"content": " lost"})]))[:-1]
    observer = StreamObserver()
    observer.feed(complete + dangling + b"data: [DO")
    observer.close()
    assert (observer.text, observer.event_count, observer.done) == ("kept", 1, False)
    assert observer.byte_count == len(complete + dangling) + 9


def test_done_is_seen_once_its_blank_line_comes() -> None:
    observer = StreamObserver()
    observer.feed(b"data: [DONE]\n")
    assert observer.done is False  # not yet: the event has not ended
    observer.feed(b"\n")
    assert observer.done is True


def test_a_leading_byte_order_mark_is_skipped() -> None:
    stream = b"\xef\xbb\xbf" + STREAM
    assert observe(stream[:2], stream[2:]).summary() == WHOLE.summary()


def test_a_long_line_in_tiny_pieces_is_read() -> None:
    text = "x" * 200_000
    body = event(chunk([delta({"content": text})]))
    observer = observe(*(body[i : i + 7] for i in range(0, len(body), 7)))
    assert observer.text == text


def completion_body(message: dict[str, Any], finish_reason: str = "stop") -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-XyZ",
            "object": "chat.completion",
            "created": 1731000000,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
            ],
            "usage": USAGE,
            "service_tier": "default",
            "system_fingerprint": "fp_0ba0d124f1",
        }
    )


def test_a_completion_body_is_summarised() -> None:
    body = completion_body({"role": "assistant", "content": "Hello!", "refusal": None})
    assert summarize_completion(body) == CompletionSummary(
        text="Hello!",
        finish_reason="stop",
        usage=USAGE,
        model="gpt-4o-mini-2024-07-18",
        response_id="chatcmpl-XyZ",
        generated_bytes=6,
    )


def test_a_completion_with_tool_calls_is_summarised() -> None:
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "a", "arguments": '{"x": 1}'}},
        {"id": "call_2", "type": "function", "function": {"name": "b", "arguments": "{}"}},
    ]
    body = completion_body(
        {"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"
    )
    summary = summarize_completion(body)
    assert (summary.tool_calls, summary.finish_reason, summary.text) == (calls, "tool_calls", "")


def test_a_streamed_and_a_whole_answer_summarise_alike() -> None:
    body = completion_body({"role": "assistant", "content": "".join(PIECES)})
    whole = summarize_completion(body)
    assert whole.text == WHOLE.summary().text
    assert whole.usage == WHOLE.summary().usage
    assert whole.finish_reason == WHOLE.summary().finish_reason


def test_an_error_body_is_summarised_as_its_error() -> None:
    error = {"message": "bad key", "type": "invalid_request_error", "param": None, "code": "x"}
    assert summarize_completion(orjson.dumps({"error": error})) == CompletionSummary(error=error)


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[]", b"null", b'{"choices": ', b"\xff\xfe", b'"text"']
)
def test_a_garbage_body_gives_an_empty_summary_with_an_error(body: bytes) -> None:
    summary = summarize_completion(body)
    assert summary.error is not None
    assert summary.error["code"] == "malformed_response"
    assert (summary.text, summary.usage, summary.tool_calls) == ("", None, [])


@pytest.mark.parametrize(
    "piece", [b"x" * 65536, b"data: " + b"x" * 65530 + b"\n"], ids=["one line", "many data lines"]
)
def test_an_event_that_never_ends_stops_the_decoder_at_its_cap(piece):
    seen: list[bytes] = []
    decoder = SSEDecoder(seen.append)
    decoder.feed(b"data: ")
    for _ in range(MAX_EVENT_BYTES // len(piece) + 2):
        decoder.feed(piece)
    assert decoder.overflowed and not seen
    decoder.feed(b"\n\ndata: late\n\n")  # nothing more is read
    assert not seen


@pytest.mark.parametrize(
    ("tail", "done"),
    [
        (b"data: [DONE]\n", True),  # the line ended, the event did not
        (b"data: [DONE]", True),  # not even the line
        (b"data:[DONE]\r\n", True),
        (b'data: {"x":1}\n', False),  # any other event left unended is dropped
        (b": [DONE]\n", False),  # a comment is not data
    ],
)
def test_a_done_left_unended_at_the_close_still_ends_the_answer(tail: bytes, done: bool) -> None:
    observer = StreamObserver()
    observer.feed(b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n' + tail)
    assert not observer.done
    observer.close()
    assert (observer.done, observer.text) == (done, "Hi")


def test_a_custom_tool_call_keeps_its_kind_and_input() -> None:
    """OpenAI's custom tools (free-form input) stream `custom` fragments, not `function`."""

    def call(**fields: Any) -> bytes:
        return event(chunk([delta({"tool_calls": [{"index": 0, **fields}]})]))

    stream = b"".join(
        [
            call(id="call_1", type="custom", custom={"name": "run_sql", "input": ""}),
            call(custom={"input": "SELECT "}),
            call(custom={"input": "1"}),
            event(chunk([delta({}, "tool_calls")])),
        ]
    )
    assert observe(stream).tool_calls == [
        {"id": "call_1", "type": "custom", "custom": {"name": "run_sql", "input": "SELECT 1"}}
    ]
    whole = {"id": "call_2", "type": "custom", "custom": {"name": "grep", "input": "x|y"}}
    body = completion_body({"role": "assistant", "content": None, "tool_calls": [whole]})
    assert summarize_completion(body).tool_calls == [whole]


def test_answers_in_content_parts_or_audio_keep_their_words() -> None:
    # Mistral's reasoning models: a list of parts, the thinking apart from the answer.
    thinking = {"type": "thinking", "thinking": [{"type": "text", "text": "hmm"}]}
    stream = event(chunk([delta({"content": [thinking]})])) + event(
        chunk([delta({"content": [{"type": "text", "text": "Paris"}]}, "stop")])
    )
    assert observe(stream).text == "Paris"
    deltas = DeltaObserver()
    deltas.feed(stream)
    assert deltas.take() == ["Paris"]
    parts = [thinking, {"type": "text", "text": "Paris"}]
    assert summarize_completion(completion_body({"content": parts})).text == "Paris"
    # An audio answer: its transcript is its text.
    spoken = {"content": None, "audio": {"id": "a1", "data": "UklG", "transcript": "Paris"}}
    assert summarize_completion(completion_body(spoken)).text == "Paris"
