-- API clients: who may use relay, with what key, scopes and limits.
CREATE TABLE clients (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    key_id        text NOT NULL UNIQUE,
    key_hash      text NOT NULL,
    key_version   integer NOT NULL DEFAULT 1,
    scopes        text[] NOT NULL DEFAULT '{}',
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    limits        jsonb NOT NULL DEFAULT '{}',
    store_history boolean NOT NULL DEFAULT true,
    metadata      jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX clients_created_at_id_idx ON clients (created_at, id);

-- Every relay instance LISTENs on relay_clients and drops its cached copy of
-- the client named in the payload, so a revocation takes effect everywhere
-- at once. A trigger (not application code) so that no path can forget it.
CREATE FUNCTION clients_notify_change() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('relay_clients', OLD.id::text);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER clients_notify_change
    AFTER UPDATE OR DELETE ON clients
    FOR EACH ROW EXECUTE FUNCTION clients_notify_change();
