-- Conversation history: conversations, their messages, and the per-client
-- sequence that orders a client's messages in commit order (the history cursor).
CREATE TABLE conversations (
    id         uuid PRIMARY KEY,
    client_id  uuid NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    title      text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- The target of messages' composite foreign key: a message can only belong
    -- to a conversation of its own client.
    UNIQUE (id, client_id)
);

CREATE INDEX conversations_client_id_created_at_id_idx
    ON conversations (client_id, created_at DESC, id DESC);
CREATE INDEX conversations_updated_at_idx ON conversations (updated_at);

-- One row per client: the last history sequence number handed out. A batch
-- takes the row lock of each client it writes for, so one client's numbers
-- are committed in increasing order and `seq > cursor` never skips a row that
-- commits late (bigserial ids can commit out of order; these cannot).
CREATE TABLE history_sequences (
    client_id uuid PRIMARY KEY REFERENCES clients (id) ON DELETE CASCADE,
    last_seq  bigint NOT NULL
);

CREATE TABLE messages (
    id                bigserial PRIMARY KEY,
    conversation_id   uuid NOT NULL,
    client_id         uuid NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    seq               bigint NOT NULL,
    role              text NOT NULL,
    content           text NOT NULL DEFAULT '',
    tool_calls        jsonb,
    tool_call_id      text,
    model             text,
    prompt_tokens     integer,
    completion_tokens integer,
    status            text NOT NULL CHECK (status IN ('complete', 'cut', 'cancelled', 'failed')),
    latency_ms        double precision,
    request_id        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    -- Search covers the first 100,000 characters: a tsvector is capped at 1 MB,
    -- and one oversized message must not make a whole group commit fail.
    search            tsvector GENERATED ALWAYS AS
                          (to_tsvector('english'::regconfig, left(content, 100000))) STORED,
    FOREIGN KEY (conversation_id, client_id)
        REFERENCES conversations (id, client_id) ON DELETE CASCADE
);

CREATE UNIQUE INDEX messages_client_id_seq_idx ON messages (client_id, seq);
CREATE INDEX messages_conversation_id_seq_idx ON messages (conversation_id, seq);
CREATE INDEX messages_created_at_idx ON messages (created_at);
CREATE INDEX messages_search_idx ON messages USING gin (search);
