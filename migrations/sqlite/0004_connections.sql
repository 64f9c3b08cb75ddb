-- The connection store: what may be shown of each connection written through the API (its values
-- live in the secrets provider and never here).
CREATE TABLE connections (
    connection_id TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    hosts         TEXT NOT NULL,
    fields        TEXT NOT NULL,
    owner         TEXT NOT NULL,
    updated_by    TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
CREATE INDEX dataset_crons_connection ON dataset_crons (connection_id);
