-- Conversations erased before they were created: relay names a new conversation
-- (Relay-Conversation-Id) from its first answer's first byte but writes its row
-- when that answer commits, so a DELETE in between finds nothing. It leaves a
-- tombstone instead, and the commit does not create a tombstoned conversation
-- (its answer is not saved, as when a conversation is erased while a later
-- answer streams). Ids only, no content; kept until no answer begun with that
-- id can still commit (expires_at), then purged.
CREATE TABLE conversation_tombstones (
    conversation_id uuid NOT NULL,
    client_id       uuid NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    expires_at      timestamptz NOT NULL,
    -- The commit of a new conversation looks its id up here, in its own statement;
    -- the client's id first, so deleting a client finds its tombstones by index.
    PRIMARY KEY (client_id, conversation_id)
);

CREATE INDEX conversation_tombstones_expires_at_idx ON conversation_tombstones (expires_at);
