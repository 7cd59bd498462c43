-- A message's `name` (OpenAI's participant name, on user, system and assistant
-- messages): relay kept role and content and dropped it, so a poller of a chat
-- among several people could not tell who said what. Nullable, with no default:
-- adding it rewrites no row.
ALTER TABLE messages ADD COLUMN name text;
