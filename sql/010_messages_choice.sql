-- With `n` > 1 a request gets several answers, choices 0, 1, …; relay kept only
-- choice 0, so the others reached the client and no row. Each is now a row of
-- its own, numbered here; null where the request asked for one answer (or the
-- row is no answer). Nullable, with no default: adding it rewrites no row.
ALTER TABLE messages ADD COLUMN choice smallint;
