-- The connection store: what may be shown of each connection written through the API (its values
-- live in the secrets provider and never here): kind, the hosts its credentials go to, the names of
-- its fields, who owns it and who changed it last.
CREATE TABLE connections (
    connection_id TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    hosts         JSONB NOT NULL,
    fields        JSONB NOT NULL,
    owner         TEXT NOT NULL,
    updated_by    TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX dataset_crons_connection ON dataset_crons (connection_id);
