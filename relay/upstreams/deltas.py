"""A stream observer that also hands out each new piece of answer text, for relay's own events."""

from __future__ import annotations

from typing import Any

from relay.upstreams.choice_parts import answer_text
from relay.upstreams.observer import StreamObserver
from relay.upstreams.provider_json import well_formed


class DeltaObserver(StreamObserver):
    """Everything StreamObserver learns, plus the text of choice 0 as it comes: its
    content deltas, or its refusal's when the model refuses (CompletionSummary.reply).

    Once a provider escaped surrogates (`surrogates`), each piece goes out whole
    (well_formed): a pair split across two deltas is joined, the first half held back
    until the next piece (or the stream's end) shows whether its second comes.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pending: list[str] = []
        self._high = ""  # a pair's first half, ending the last piece, held back

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
                    if self.surrogates:
                        self._add_paired(text)
                    else:
                        self._pending.append(text)

    def _add_paired(self, text: str) -> None:
        text, self._high = self._high + text, ""
        if "\ud800" <= text[-1] <= "\udbff":
            text, self._high = text[:-1], text[-1]
        if text:
            self._pending.append(well_formed(text))

    def close(self, *, body_ended: bool = False) -> None:
        super().close(body_ended=body_ended)
        if self._high:  # its second half never came
            self._pending.append(well_formed(self._high))
            self._high = ""

    def take(self) -> list[str]:
        """The text deltas seen since the last call, in order."""
        taken, self._pending = self._pending, []
        return taken
