"""The deterministic words the simulator answers with, and its token accounting."""

from __future__ import annotations

from typing import Any

FIRST_WORD = "Hello"
# WORDS[i % len(WORDS)] is token i; token 0 is FIRST_WORD, so an answer never opens with a space.
WORDS: tuple[str, ...] = (
    " Hello",
    " from",
    " the",
    " relay",
    " simulator",
    ".",
    " Every",
    " answer",
    " is",
    " made",
    " of",
    " the",
    " same",
    " predictable",
    " words",
    ".",
)


def word_index(index: int, choice: int = 0) -> int:
    """Where token `index` of choice `choice` is in WORDS: each choice (`n` > 1) starts
    one word further on, so that their answers differ after the first word."""
    return (index + choice) % len(WORDS)


def token_text(index: int, choice: int = 0) -> str:
    return FIRST_WORD if index == 0 else WORDS[word_index(index, choice)]


def completion_text(tokens: int, choice: int = 0) -> str:
    """The full answer of `tokens` tokens, as a client joining the deltas sees it."""
    return "".join(token_text(i, choice) for i in range(tokens))


def count_prompt_tokens(messages: list[Any]) -> int:
    """3 per message plus the words of its text: a stable stand-in for a tokenizer."""
    total = 0
    for message in messages:
        total += 3
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += len(content.split())
        elif isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                if isinstance(text, str):
                    total += len(text.split())
    return total


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
