-- Signed receipts: one per relayed answer, hash-chained across every instance
-- sharing this database. They hold hashes and ids only, never content.
CREATE TABLE receipts (
    id          text PRIMARY KEY,  -- the receipt_id in the body
    -- Position in the chain: the order a verifier walks the log in.
    seq         bigint NOT NULL UNIQUE,
    -- SET NULL, not CASCADE: deleting a receipt would break the chain for every
    -- later one (as it should show a tampered log). A deleted client's receipts
    -- stay as anonymous links, readable by no client, since they hold no content.
    client_id   uuid REFERENCES clients (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- The receipt exactly as signed and served: canonical JSON, signature included.
    -- text, not jsonb: jsonb would re-order keys and lose the byte form.
    body        text NOT NULL,
    sha256      text NOT NULL UNIQUE,  -- sha256 of body; the next receipt's prev
    prev_sha256 text
);

CREATE INDEX receipts_client_id_seq_idx ON receipts (client_id, seq);

-- The one row every commit of receipts locks FOR UPDATE: instances serialise
-- on it, so each receipt names the one before it and the chain never forks.
CREATE TABLE receipt_chain_head (
    id     boolean PRIMARY KEY DEFAULT true CHECK (id),
    seq    bigint NOT NULL,
    sha256 text
);

INSERT INTO receipt_chain_head (id, seq, sha256) VALUES (true, 0, NULL);
