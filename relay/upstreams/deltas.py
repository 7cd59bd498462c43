"""A stream observer that also hands out each new piece of answer text, for relay's own events."""

from __future__ import annotations

from typing import Any

from relay.upstreams.completion import answer_text
from relay.upstreams.observer import StreamObserver


class DeltaObserver(StreamObserver):
    """Everything StreamObserver learns, plus the text of choice 0 as it comes: its
    content deltas, or its refusal's when the model refuses (CompletionSummary.reply)."""

    def __init__(self) -> None:
        super().__init__()
        self._pending: list[str] = []

    def apply(self, obj: dict[str, Any]) -> None:
        super().apply(obj)
        choices = obj.get("choices")
        if not isinstance(choices, list):
            return
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            for text in (answer_text(delta), delta.get("refusal")):
                if isinstance(text, str) and text:
                    self._pending.append(text)

    def take(self) -> list[str]:
        """The text deltas seen since the last call, in order."""
        taken, self._pending = self._pending, []
        return taken
