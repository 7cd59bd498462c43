-- OpenAI's assistant message that refuses (structured outputs) has `"content":
-- null` and its words in `refusal`; relay kept those words as the message's
-- content, so a reader of history could not tell a refusal from an answer. They
-- stay there (search and /v1/chat's context read them, and so do instances of
-- the version before this one) and are kept here too, which marks them as a
-- refusal. Nullable, with no default: adding it rewrites no row.
ALTER TABLE messages ADD COLUMN refusal text;
