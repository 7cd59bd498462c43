-- /v1/chat's context begins with its conversation's latest system message. With
-- no index by role, finding it read back through every message after it, and
-- through the whole of a conversation that has none. System messages are few:
-- this index is small, and finds the latest (or that there is none) at once.
CREATE INDEX messages_conversation_system_idx ON messages (conversation_id, seq)
    WHERE role = 'system';
