-- The provider's id of the completion a receipt covers (`chatcmpl-…`, the `id`
-- the client read in the answer): clients built for NEAR's private inference ask
-- for an answer's signature by it. Not indexed: an index of random ids would
-- touch a random page for every receipt (see 004); a lookup reads only the
-- client's latest receipts, newest first, along receipts_client_id_seq_idx.
ALTER TABLE receipts ADD COLUMN response_id text;
