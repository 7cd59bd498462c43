"""What relay knows about one relayed answer when it ends, and who is told about it."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from relay.errors import RelayError
from relay.ids import uuid7_hex, uuid7_text
from relay.metrics import ANSWERS, HISTORY_COMMIT_FAILURES, labelled
from relay.services.rate_verdicts import Reservation
from relay.stores.clients import Client
from relay.upstreams.completion import CompletionSummary, estimated_tokens
from relay.upstreams.provider_json import usage_count
from relay.upstreams.routing import Route

log = logging.getLogger(__name__)

CommitHook = Callable[["Answer"], Awaitable[None]]
AfterHook = Callable[["Answer"], None]


# What an answer knows of its reply until it has one: shared, as it never changes
# (a frozen summary built per answer cost more than the rest of its Answer).
NO_SUMMARY = CompletionSummary()


class SentBytes(Protocol):
    """Bytes on their way to a client, hashed and counted as they go."""

    byte_count: int

    def sha256_with(self, tail: bytes) -> str: ...


@dataclass(eq=False)
class Answer:
    request_id: str
    client: Client
    endpoint: str
    route: Route
    stream: bool
    request: dict[str, Any]  # the parsed request body
    request_body: bytes  # exactly as received
    forwarded_body: bytes  # exactly as sent to the provider
    store: bool  # content may be kept (request's `store` and the client's store_history)
    conversation_id: str | None = None
    # The request named a conversation that exists: its row must still be there
    # when the answer commits (erased meanwhile, the answer fails; it is not revived).
    continues_conversation: bool = False
    receipt_id: str = field(default_factory=uuid7_hex)
    status: str = "complete"  # one of relay.proofs.receipt.RECEIPT_STATUSES
    summary: CompletionSummary = NO_SUMMARY
    response_sha256: str = ""  # the exact bytes the client receives, its final event included
    response_bytes: int = 0
    latency_ms: float = 0.0
    first_token_ms: float | None = None
    # Response headers that describe the answer (conversation id, receipt id).
    headers: dict[str, str] = field(default_factory=dict)
    # What this request adds to its conversation (relay.services.turns.answer_turn):
    # on /v1/chat/completions its messages after its last assistant message, taken
    # once when the request came in; /v1/chat builds its messages from history, so
    # only its new message (and, opening a conversation, its system message) is new.
    turn: list[dict[str, Any]] | None = None
    # The assistant's history row, reserved before commit by /v1/chat (which names it),
    # and the ids of the turn's rows before it, so that their ids follow their order.
    message_id: int | None = None
    message_created_at: datetime.datetime | None = None
    turn_ids: tuple[int, ...] = ()
    recorded: bool = False  # queued for the group commit (relay.services.recorder)
    # The tokens its chat reserved as it was admitted, settled by its usage as it ends.
    reservation: Reservation | None = None
    # The hashes of request_body and forwarded_body, once asked for (by its receipt).
    _request_sha256: str = field(default="", init=False, repr=False)
    _forwarded_sha256: str = field(default="", init=False, repr=False)

    def __post_init__(self) -> None:
        if self.store and self.conversation_id is None:
            self.conversation_id = uuid7_text()  # what is kept belongs to a conversation

    # Worked out once, as functools.cached_property would, without the lock that
    # takes on every first use (Python 3.11): an answer is only ever read on the loop.
    @property
    def request_sha256(self) -> str:
        if not self._request_sha256:
            self._request_sha256 = hashlib.sha256(self.request_body).hexdigest()
        return self._request_sha256

    @property
    def forwarded_sha256(self) -> str:
        if not self._forwarded_sha256:
            if self.forwarded_body is self.request_body:  # sent on as received: one hash serves
                self._forwarded_sha256 = self.request_sha256
            else:
                self._forwarded_sha256 = hashlib.sha256(self.forwarded_body).hexdigest()
        return self._forwarded_sha256

    def received_body(self, body: bytes) -> None:
        """What the client receives, for the receipt: `body`, whole (an answer or an error)."""
        self.response_sha256 = hashlib.sha256(body).hexdigest()
        self.response_bytes = len(body)

    def received(self, sent: SentBytes, final: bytes = b"") -> None:
        """What the client receives, for the receipt: the bytes `sent` has hashed and
        counted so far, then `final` (the end of a stream, not yet written)."""
        self.response_sha256 = sent.sha256_with(final)
        self.response_bytes = sent.byte_count + len(final)

    def client_left(self) -> None:
        """Its client left before the end. Cancelled if the answer was still going well;
        one its provider had already failed (an error event, which OpenAI's SDK raises on
        and hangs up) is failed, and one relay had already ended as cut or failed stays
        so: how fast a client hangs up does not change how its answer ended."""
        if self.status == "complete":
            self.status = "cancelled" if self.summary.error is None else "failed"

    def label(self, error: RelayError) -> None:
        """Give an error response the answer's headers (its conversation and receipt
        ids): what was recorded of it can be found like any other answer's."""
        for name, value in self.headers.items():
            error.headers.setdefault(name, value)

    @property
    def tokens_used(self) -> int:
        """The provider's total_tokens (its prompt and completion tokens added, where it
        gives those alone); without usage (a stream that did not ask for it, a cut), an
        estimate from the bytes that went in and all that came out: every choice, tool
        calls and reasoning included. A failed answer that brought nothing back (the
        provider refused it or was never reached) used none: providers do not charge
        for those, and the SDKs retry them."""
        summary = self.summary
        if (total := usage_count(summary.usage, "total_tokens")) is not None:
            return total
        prompt = usage_count(summary.usage, "prompt_tokens")
        completion = usage_count(summary.usage, "completion_tokens")
        if prompt is not None and completion is not None:
            return prompt + completion
        if self.status == "failed" and not (summary.generated_bytes or summary.tool_calls):
            return 0
        return estimated_tokens(len(self.forwarded_body) + summary.generated_bytes)


@dataclass
class AnswerHooks:
    """`commit` hooks must succeed before the client receives the end of an answer
    (history and receipts); `after` hooks run once the answer has ended, quickly and
    without waiting on anything (token debits, metrics); their failures are logged,
    never shown to the client."""

    commit: list[CommitHook] = field(default_factory=list)
    after: list[AfterHook] = field(default_factory=list)
    # Work that outlives its request; referenced here until it finishes.
    _background: set[asyncio.Task[None]] = field(default_factory=set)

    def in_background(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def run_commit(self, answer: Answer) -> None:
        try:
            for hook in self.commit:
                await hook(answer)
        except RelayError as error:
            self.not_committed(answer, error)
            raise

    @staticmethod
    def not_committed(answer: Answer, error: RelayError) -> None:
        """`answer` could not be committed (`error` says why): logged, and counted if it
        was complete, since its client then gets an error instead of its end."""
        log.warning(
            "answer not committed", extra={"request_id": answer.request_id, "error": error.code}
        )
        if answer.status == "complete":
            HISTORY_COMMIT_FAILURES.inc()

    async def commit_quietly(self, answer: Answer) -> None:
        """Record an answer whose end the client will not see; a failure is only logged."""
        await self.commit_end(answer)

    async def commit_end(self, answer: Answer, *, again: bool = True) -> RelayError | None:
        """Record an answer before its client receives the end: None once committed, or
        the error the client gets instead of a complete answer's end (never a silent
        loss). For an answer that did not complete (its client is told so) a failure
        is only logged, as for one whose end the client will not see."""
        try:
            await self.run_commit(answer)
        except RelayError as error:
            if answer.status == "complete":
                return error  # the caller records the receipt of the error sent instead
            if again and not answer.recorded:
                # Not queued, or let go again: only its content was refused (its
                # conversation is gone), and its receipt, of the very end its client
                # is told, may still be kept. (Once: a recorder that is closing refuses
                # it again at once.)
                await self.commit_end(answer, again=False)
        return None

    async def commit_stream_end(
        self,
        answer: Answer,
        sent: SentBytes,
        final: bytes,
        error_event: Callable[[RelayError], bytes],
    ) -> bytes:
        """Record a streamed answer before its client receives `final`, the end after
        the bytes `sent` so far; the bytes to send then: `final`, or the error event
        the client gets instead should the answer not be committed (never a silent
        loss), whose receipt is kept where one still can be."""
        answer.received(sent, final)
        if (error := await self.commit_end(answer)) is None:
            return final
        return await self.end_stream_instead(answer, sent, error_event(error))

    async def end_stream_instead(self, answer: Answer, sent: SentBytes, final: bytes) -> bytes:
        """`final`, the error event a streamed answer that could not be committed ends
        with instead of its end: the answer is failed, and the receipt of what its client
        received is kept where one still can be (else its x-receipt-id names none)."""
        answer.status = "failed"
        answer.received(sent, final)
        await self.commit_quietly(answer)
        return final

    def client_left(self, answer: Answer, latency_ms: float) -> None:
        """The answer's handler was cancelled: record it as it ended (Answer.client_left),
        in the background. One already queued for commit is written as it stood when
        queued, so its status and the hash of its end, signed in one receipt, still agree."""
        if answer.recorded:
            return
        answer.client_left()
        answer.latency_ms = latency_ms
        self.in_background(self.commit_quietly(answer))

    def run_after(self, answer: Answer) -> None:
        """Every relayed answer ends here, once."""
        labelled(ANSWERS, answer.status).inc()
        for hook in self.after:
            try:
                hook(answer)
            except Exception:
                log.exception("answer hook failed", extra={"request_id": answer.request_id})
