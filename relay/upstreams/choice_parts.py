"""What one choice of an answer gathers as it arrives, and how its parts are read:
the words of a delta or message, their size in bytes, and tool calls merged from
their streamed fragments."""

from __future__ import annotations

from typing import Any


def text_bytes(text: str) -> int:
    """`text`'s UTF-8 length; an ASCII string (the usual one) is not encoded to learn it.
    A lone surrogate (surrogate_json) counts the 3 bytes of the U+FFFD it is kept as."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


# The fields each kind of tool call always has: a function call its name and JSON
# arguments, a custom tool call (free-form input) its name and input.
_TOOL_CALL_FIELDS = {"function": ("name", "arguments"), "custom": ("name", "input")}


class ToolCall:
    """One tool call, whole or put together from its streamed fragments."""

    __slots__ = ("call_id", "fields", "kind")

    def __init__(self) -> None:
        self.call_id = ""
        self.kind = "function"
        # Fragments are joined once at the end: repeated str += would copy the arguments each time.
        self.fields: dict[str, list[str]] = {}

    def merge(self, call: dict[str, Any]) -> int:
        """Take in one fragment (or a whole call): string fields are concatenated, as
        the OpenAI SDK does; the name may come in fragments too. Returns the bytes
        of those fields it took in."""
        size = 0
        if not self.call_id and isinstance(call_id := call.get("id"), str):
            self.call_id = call_id
        if isinstance(kind := call.get("type"), str) and kind:
            self.kind = kind  # named by the first fragment only
        if isinstance(payload := call.get(self.kind), dict):
            for name, value in payload.items():
                if isinstance(value, str):
                    self.fields.setdefault(name, []).append(value)
                    size += text_bytes(value)
        return size

    def as_dict(self) -> dict[str, Any]:
        payload = dict.fromkeys(_TOOL_CALL_FIELDS.get(self.kind, ("name",)), "")
        payload.update((name, "".join(parts)) for name, parts in self.fields.items())
        return {"id": self.call_id, "type": self.kind, self.kind: payload}


class ChoiceState:
    """What one choice has said so far: its text and refusal in pieces, its tool calls,
    and how it ended (its finish_reason, the last that said something)."""

    __slots__ = ("calls", "finish_reason", "refusal", "text", "tool_calls")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.refusal: list[str] = []
        self.finish_reason: str | None = None
        self.tool_calls: dict[int, ToolCall] = {}  # the call each index names now
        self.calls: list[tuple[int, ToolCall]] = []  # every call, by index and in order begun

    def merge_tool_calls(self, calls: list[Any]) -> int:
        """Take in a delta's (or a message's) tool calls; the bytes of their fields."""
        size = 0
        for position, call in enumerate(calls):
            if not isinstance(call, dict):
                continue
            # Streamed fragments name their call by `index`; a whole message lists calls in order.
            index = call.get("index", position)
            if not isinstance(index, int):
                index = position
            entry = self.tool_calls.get(index)
            # Ollama sends parallel calls whole, each at index 0 with its own id: a
            # fragment naming another id than the call at its index begins a new call
            # (as the Vercel AI SDK reads them). One without an id continues it.
            if entry is None or (
                entry.call_id
                and isinstance(call_id := call.get("id"), str)
                and call_id
                and call_id != entry.call_id
            ):
                entry = self.tool_calls[index] = ToolCall()
                self.calls.append((index, entry))
            size += entry.merge(call)
        return size

    def tool_call_list(self) -> list[dict[str, Any]]:
        """Every call, whole, in order of index."""
        # A stable sort: calls sharing an index keep the order they began in.
        return [call.as_dict() for _, call in sorted(self.calls, key=lambda item: item[0])]


def thinking_bytes(content: list[Any]) -> int:
    """The bytes of the `thinking` parts of a content list (Mistral's reasoning: its
    `thinking` a list of text parts, or a string), which are not the answer's words
    but were generated all the same."""
    size = 0
    for piece in content:
        if not isinstance(piece, dict) or piece.get("type") != "thinking":
            continue
        thinking = piece.get("thinking")
        if isinstance(thinking, str):
            size += text_bytes(thinking)
        elif isinstance(thinking, list):
            size += sum(
                text_bytes(inner["text"])
                for inner in thinking
                if isinstance(inner, dict) and isinstance(inner.get("text"), str)
            )
    return size


def answer_text(part: dict[str, Any]) -> str:
    """The words of a `delta` or `message`: its content as a string, or the text parts
    of a content list (Mistral's reasoning models answer so; their `thinking` parts
    are not the answer), or else the transcript of an audio answer."""
    content = part.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            piece["text"]
            for piece in content
            if isinstance(piece, dict)
            and piece.get("type") == "text"
            and isinstance(piece.get("text"), str)
        )
    audio = part.get("audio")
    if isinstance(audio, dict) and isinstance(transcript := audio.get("transcript"), str):
        return transcript
    return ""
