-- Search finds words inside what PostgreSQL's parser takes for markup. Its
-- default parser reads `<String>` in `Vec<String>`, `<b and c>` in `a<b and c>d`,
-- `<div class="x">` and `<!-- ... -->` as tags and comments and leaves their
-- words out, so a search for `String` missed `Vec<String>`. Each such token
-- begins at a "<": every "<" becomes a space, which the parser reads as a
-- separator anyway, so nothing else is read differently (`3 < 4`, `x<<2`, `x<-5`
-- and `<bob@example.com>` give the words they gave). The control characters 1,
-- 2 and 3 are dropped: relay.stores.messages prepares the query and the snippet's
-- text the same way, so all three read one text.
--
-- A generated column's expression cannot be altered: the column is dropped and
-- added again. That rewrites the table and rebuilds its indexes, holding it
-- locked all the while (history writes, reads and searches wait).
ALTER TABLE messages DROP COLUMN search;  -- messages_search_idx goes with it

ALTER TABLE messages ADD COLUMN search tsvector GENERATED ALWAYS AS
    (to_tsvector('english'::regconfig,
                 translate(left(content, 100000), E'<\001\002\003', ' '))) STORED;

CREATE INDEX messages_search_idx ON messages USING gin (search);
