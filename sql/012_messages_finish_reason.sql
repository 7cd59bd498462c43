-- How an assistant message ended, as its provider said it (its choice's
-- finish_reason: "stop", "length", "content_filter", "tool_calls", …): history
-- told a filtered or truncated answer from a whole one by nothing. Null for other
-- messages, for an answer whose provider never said (a cut stream), and for
-- every answer stored before this. relay bounds the value before writing it (a
-- provider's junk must not fail a batch), so the column holds plain text.
-- Nullable, with no default: adding it rewrites no row.
ALTER TABLE messages ADD COLUMN finish_reason text;
