"""What a chat completion said: the summary of one answer and the accumulator that builds it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, TypeVar

from relay.upstreams.choice_parts import ChoiceState, answer_text, text_bytes, thinking_bytes
from relay.upstreams.provider_json import (
    error_object,
    groq_usage,
    lenient_json,
    listed_error,
    provider_json,
    well_formed,
)

# Without the provider's usage an answer is charged about four bytes (UTF-8) a token
# of what went in and what came out: the one rule relay estimates tokens with.
BYTES_PER_TOKEN = 4


def estimated_tokens(size: int) -> int:
    """The tokens `size` bytes of text are taken for, rounded up."""
    return -(-size // BYTES_PER_TOKEN)


_JSON = TypeVar("_JSON")

_MALFORMED_BODY = {
    "message": "the upstream answer is not a chat completion object",
    "type": "upstream_error",
    "code": "malformed_response",
}
# OpenRouter's finish_reason for an answer its provider failed, most often with an error
# object (which is kept), at times without one (Gemini's MALFORMED_FUNCTION_CALL).
_FINISHED_IN_ERROR = {
    "message": 'it ended the answer with finish_reason "error".',
    "type": "upstream_error",
    "code": "upstream_error",
}


# OpenAI's most choices one request may ask for (`n`): a provider's choice index past it
# is not kept apart.
MAX_CHOICES = 128


@dataclass(frozen=True, slots=True)
class ChoiceReply:
    """A choice after the first, when a request asked for several (`n`): its index,
    its text, its refusal, its tool calls and its finish_reason (None: it never said)."""

    index: int
    text: str
    refusal: str
    tool_calls: list[dict[str, Any]]
    finish_reason: str | None = None

    @property
    def reply(self) -> str:
        """The choice's words: its text, or its refusal when the model refused."""
        return self.text or self.refusal


@dataclass(frozen=True, slots=True)
class CompletionSummary:
    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    refusal: str = ""
    model: str | None = None
    response_id: str | None = None
    error: dict[str, Any] | None = None
    # The UTF-8 bytes the model generated, in every choice: text, refusals, tool calls'
    # names and arguments, reasoning. What the answer is charged for without usage.
    generated_bytes: int = 0
    # The choices after the first (choice 0, the answer the fields above describe).
    more_choices: tuple[ChoiceReply, ...] = ()

    @property
    def reply(self) -> str:
        """The answer's words: its text, or its refusal when the model refused."""
        return self.text or self.refusal


class CompletionAccumulator:
    """Folds chat completion objects, whole or streamed as chunks, into one answer.

    A streamed chunk's `delta` and a whole answer's `message` are read alike, so streamed
    and non-streamed answers are summarised by the same rules. Choice 0 is the answer,
    the others (a request's `n` > 1) are summarised apart (`more_choices`);
    `generated_bytes` counts what every choice generated, as it arrives.

    `surrogates` tells that an object lenient_json read was taken in: its strings are
    kept as read, so that a pair split across two chunks joins up, and made whole
    (well_formed) as the answer is put together. orjson's never hold one.

    `choices` is how many the request asked for (its `n`): `all_finished` tells every
    one has its finish_reason, a plain attribute moved only by a finish_reason, as a
    pipe asks after every read. `generated_bytes` past `finished_bytes` tells the
    provider went on after that.
    """

    def __init__(self, choices: int = 1) -> None:
        self.usage: dict[str, Any] | None = None
        self.model: str | None = None
        self.response_id: str | None = None
        self.error: dict[str, Any] | None = None
        self.first_content_at: float | None = None
        # Choice 0's, the answer's: a plain attribute, as a pipe asks for it after every read.
        self.finish_reason: str | None = None
        self.generated_bytes = 0
        self._choices: dict[int, ChoiceState] = {}
        self._choices_asked = choices
        self._finished: set[int] = set()  # the choices that have their finish_reason
        self.all_finished = False
        # generated_bytes once every choice had finished: more since is words after the
        # end (some providers send a finish_reason with every chunk).
        self.finished_bytes = 0
        self.surrogates = False
        self._openai_usage = False  # a `usage` in OpenAI's place was read: Groq's gives way

    def apply(self, obj: dict[str, Any]) -> None:
        """Take in one `chat.completion` or `chat.completion.chunk` object (or an error)."""
        # The first that names them: Azure's first chunk (its prompt filter results)
        # carries `"id": ""` and `"model": ""`.
        if self.response_id is None and isinstance(rid := obj.get("id"), str) and rid:
            self.response_id = rid
        if self.model is None and isinstance(model := obj.get("model"), str) and model:
            self.model = model
        # error_object's own test, inline first: a call per ordinary chunk costs more.
        if ("error" in obj or obj.get("object") == "error") and (
            error := error_object(obj)
        ) is not None:
            self.error = error if isinstance(error, dict) else {"message": str(error)}
            if self.surrogates:
                self.error = well_formed(self.error)
        # The usage chunk carries `"choices": []` (or null); other chunks carry `"usage": null`.
        if isinstance(usage := obj.get("usage"), dict):
            self.usage = usage
            self._openai_usage = True
        # Groq's own place for it, where OpenAI's usage chunk was not asked for.
        elif "x_groq" in obj and not self._openai_usage and (usage := groq_usage(obj)):
            self.usage = usage
        if isinstance(choices := obj.get("choices"), list):
            for choice in choices:
                if isinstance(choice, dict):
                    self._apply_choice(choice)

    def _apply_choice(self, choice: dict[str, Any]) -> None:
        index = choice.get("index", 0)
        if not isinstance(index, int):
            index = 0
        state = self._choices.get(index)
        if state is None:
            state = self._choices[index] = ChoiceState()
        part = choice.get("delta")
        if part is None:
            part = choice.get("message")
        if isinstance(part, dict):
            content = part.get("content")
            if not isinstance(content, str):  # the usual delta's is: no call for it
                if isinstance(content, list):  # Mistral's reasoning is generated too
                    self.generated_bytes += thinking_bytes(content)
                content = answer_text(part)
            if content:
                state.text.append(content)
                # text_bytes, inline: this runs for every streamed token.
                self.generated_bytes += (
                    len(content)
                    if content.isascii()
                    else len(content.encode("utf-8", "surrogatepass"))
                )
                if self.first_content_at is None:
                    self.first_content_at = time.monotonic()
            # The usual delta holds its content alone: nothing else to look for. Inline,
            # not a method: a provider may send its role or a null field with every token.
            if len(part) > 1 or not content:
                saw_content = False
                if (refusal := part.get("refusal")) and isinstance(refusal, str):
                    state.refusal.append(refusal)
                    self.generated_bytes += text_bytes(refusal)
                    saw_content = True
                if (calls := part.get("tool_calls")) and isinstance(calls, list):
                    self.generated_bytes += state.merge_tool_calls(calls)
                    saw_content = True
                # OpenAI's deprecated `functions` are answered with one `function_call`
                # (still sent, streamed in fragments as a tool call is): kept as one.
                if (call := part.get("function_call")) and isinstance(call, dict):
                    legacy = {"index": 0, "type": "function", "function": call}
                    self.generated_bytes += state.merge_tool_calls([legacy])
                    saw_content = True
                # DeepSeek's and older vLLM's name, or OpenRouter's and newer vLLM's; a
                # provider sending both sends the same text: it is counted once.
                reasoning = part.get("reasoning_content") or part.get("reasoning")
                if reasoning and isinstance(reasoning, str):
                    self.generated_bytes += text_bytes(reasoning)
                if saw_content and self.first_content_at is None:
                    self.first_content_at = time.monotonic()
        # SGLang (≤0.4.3) and older Ollama send `"finish_reason": ""` with every chunk:
        # only a reason that says something ends a choice.
        if (finish_reason := choice.get("finish_reason")) and isinstance(finish_reason, str):
            state.finish_reason = finish_reason
            if index == 0:
                self.finish_reason = finish_reason
            if finish_reason == "error" and self.error is None:
                self.error = dict(_FINISHED_IN_ERROR)
            self._finish(index)

    def _finish(self, index: int) -> None:
        """Choice `index` has its finish_reason. Choices are counted, not matched against
        0 … n-1: a provider numbering them its own way still ends its answer."""
        self._finished.add(index)
        if not self.all_finished and len(self._finished) >= self._choices_asked:
            self.all_finished = True
            self.finished_bytes = self.generated_bytes

    def read_again(self, data: bytes) -> object:
        """An object orjson refused, read by lenient_json (None if no JSON even so)."""
        obj = lenient_json(data)
        if obj is not None:
            self.surrogates = True
        return obj

    def _whole(self, value: _JSON) -> _JSON:
        return well_formed(value) if self.surrogates else value

    def choice_text(self, index: int) -> str:
        state = self._choices.get(index)
        return self._whole("".join(state.text)) if state else ""

    def choice_refusal(self, index: int) -> str:
        state = self._choices.get(index)
        return self._whole("".join(state.refusal)) if state else ""

    def choice_tool_calls(self, index: int) -> list[dict[str, Any]]:
        state = self._choices.get(index)
        return self._whole(state.tool_call_list()) if state else []

    @property
    def text(self) -> str:
        return self.choice_text(0)

    @property
    def refusal(self) -> str:
        return self.choice_refusal(0)

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        return self.choice_tool_calls(0)

    def more_choices(self) -> tuple[ChoiceReply, ...]:
        """Every choice but the first, in order of index (up to MAX_CHOICES)."""
        return tuple(
            ChoiceReply(
                index,
                self.choice_text(index),
                self.choice_refusal(index),
                self.choice_tool_calls(index),
                self._whole(self._choices[index].finish_reason),
            )
            for index in sorted(self._choices)
            if 0 < index < MAX_CHOICES
        )

    def summary(self) -> CompletionSummary:
        return CompletionSummary(
            text=self.text,
            finish_reason=self._whole(self.finish_reason),
            usage=self._whole(self.usage),
            tool_calls=self.tool_calls,
            refusal=self.refusal,
            model=self._whole(self.model),
            response_id=self._whole(self.response_id),
            error=self.error,
            generated_bytes=self.generated_bytes,
            more_choices=self.more_choices() if len(self._choices) > 1 else (),
        )


def summarize_completion(body: bytes) -> CompletionSummary:
    """Summarise a non-streamed answer; a body that is not a JSON object yields an error summary."""
    obj = provider_json(body)
    if not isinstance(obj, dict) and (obj := listed_error(obj)) is None:
        return CompletionSummary(error=dict(_MALFORMED_BODY))
    accumulator = CompletionAccumulator()
    accumulator.apply(obj)
    return accumulator.summary()
