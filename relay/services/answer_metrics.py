"""What each answer adds to relay's metrics: its tokens and its time to first token."""

from __future__ import annotations

from relay.metrics import FIRST_TOKEN_SECONDS, TOKENS, labelled
from relay.services.answers import Answer
from relay.upstreams.completion import estimated_tokens
from relay.upstreams.provider_json import usage_count


def count_answer(answer: Answer) -> None:
    """After-hook: tokens and time to first token, by public model id. Without the
    provider's usage (a stream that did not ask for it, a cut, a client that left),
    the tokens the rate limiter was charged, estimated, kept apart by their label."""
    model = answer.route.model
    reported = False
    for direction, key in (("in", "prompt_tokens"), ("out", "completion_tokens")):
        if (count := usage_count(answer.summary.usage, key)) is not None:
            reported = True
            if count:
                labelled(TOKENS, model, direction, "false").inc(count)
    if not reported and (used := answer.tokens_used):
        sent = min(estimated_tokens(len(answer.forwarded_body)), used)
        labelled(TOKENS, model, "in", "true").inc(sent)
        labelled(TOKENS, model, "out", "true").inc(used - sent)
    if answer.first_token_ms is not None:
        labelled(FIRST_TOKEN_SECONDS, model).observe(answer.first_token_ms / 1000)
