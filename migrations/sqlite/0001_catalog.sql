-- The embedded mode's catalog (`carga serve`): the same tables as the PostgreSQL catalog
-- (../0001_catalog.sql, ../0002_dashboard.sql) in SQLite's types. Timestamps are RFC 3339 text
-- written by Carga (UTC, so they sort as text); `tables` is a JSON array; `spec` is JSON text.

CREATE TABLE dataset_crons (
    dataset_id      TEXT PRIMARY KEY,
    source_format   TEXT NOT NULL,
    source_location TEXT NOT NULL DEFAULT '',
    tables          TEXT NOT NULL DEFAULT '[]',
    connection_id   TEXT,
    mode            TEXT NOT NULL CHECK (mode IN ('delta', 'complete')),
    trigger_method  TEXT NOT NULL CHECK (trigger_method IN ('timed_pull', 'callback')),
    cron            TEXT,
    time_zone       TEXT NOT NULL DEFAULT 'UTC',
    new_columns     TEXT NOT NULL CHECK (new_columns IN ('ignore', 'add')),
    enabled         BOOLEAN NOT NULL DEFAULT TRUE,
    approved        BOOLEAN NOT NULL DEFAULT FALSE,
    approved_by     TEXT,
    spec            TEXT NOT NULL,
    version         INTEGER NOT NULL DEFAULT 1,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    updated_by      TEXT NOT NULL,
    CHECK (trigger_method = 'callback' OR cron IS NOT NULL)
);

CREATE TABLE dataset_runs (
    run_id        TEXT PRIMARY KEY,
    dataset_id    TEXT NOT NULL,
    reason        TEXT NOT NULL CHECK (reason IN ('schedule', 'trigger', 'retry')),
    scheduled_for TEXT,
    state         TEXT NOT NULL
        CHECK (state IN ('queued', 'running', 'retrying', 'succeeded', 'failed', 'dead', 'killed')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    enqueued_at   TEXT NOT NULL,
    started_at    TEXT,
    finished_at   TEXT,
    worker        TEXT,
    rows_written  INTEGER,
    bytes_written INTEGER,
    manifest_url  TEXT,
    report_url    TEXT,
    watermark_before TEXT,
    watermark_after  TEXT,
    error         TEXT,
    requested_by  TEXT,
    retried_as    TEXT
);
CREATE INDEX dataset_runs_by_dataset ON dataset_runs (dataset_id, enqueued_at DESC);
CREATE INDEX dataset_runs_by_state ON dataset_runs (state, enqueued_at DESC);
CREATE INDEX dataset_runs_by_finish ON dataset_runs (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE api_tokens (
    token_sha256 TEXT PRIMARY KEY,
    subject      TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('viewer', 'editor', 'approver', 'admin')),
    created_at   TEXT NOT NULL,
    revoked_at   TEXT
);

CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          TEXT NOT NULL,
    subject     TEXT NOT NULL,
    role        TEXT,
    action      TEXT NOT NULL,
    dataset_id  TEXT,
    source_ip   TEXT,
    result      TEXT NOT NULL CHECK (result IN ('ok', 'rejected', 'denied', 'error')),
    detail      TEXT
);
CREATE INDEX audit_log_by_dataset ON audit_log (dataset_id, at DESC);
