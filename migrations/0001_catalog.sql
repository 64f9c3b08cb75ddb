-- The catalog: which datasets exist, when they run, what each run did, and who changed what.
-- Applied by the scheduler at start-up (sqlx migrations; the files are compiled into the binary).

-- One row per dataset: the columns operators query, plus the full dataset spec the workers run.
-- The columns are derived from `spec` on every write, never edited on their own.
CREATE TABLE dataset_crons (
    dataset_id      TEXT PRIMARY KEY,
    source_format   TEXT NOT NULL,
    source_location TEXT NOT NULL DEFAULT '',
    tables          TEXT[] NOT NULL DEFAULT '{}',
    connection_id   TEXT,
    mode            TEXT NOT NULL CHECK (mode IN ('delta', 'complete')),
    trigger_method  TEXT NOT NULL CHECK (trigger_method IN ('timed_pull', 'callback')),
    cron            TEXT,
    time_zone       TEXT NOT NULL DEFAULT 'UTC',
    new_columns     TEXT NOT NULL CHECK (new_columns IN ('ignore', 'add')),
    enabled         BOOLEAN NOT NULL DEFAULT TRUE,
    -- An editor's change waits for an approver before the scheduler or a trigger may run it.
    approved        BOOLEAN NOT NULL DEFAULT FALSE,
    approved_by     TEXT,
    spec            JSONB NOT NULL,
    version         BIGINT NOT NULL DEFAULT 1,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_by      TEXT NOT NULL,
    CHECK (trigger_method = 'callback' OR cron IS NOT NULL)
);

-- Run history: one row per job (a scheduled time or an on-demand trigger), updated as it moves.
CREATE TABLE dataset_runs (
    run_id        TEXT PRIMARY KEY,
    dataset_id    TEXT NOT NULL,
    reason        TEXT NOT NULL CHECK (reason IN ('schedule', 'trigger', 'retry')),
    scheduled_for TIMESTAMPTZ,
    state         TEXT NOT NULL CHECK (state IN ('queued', 'running', 'retrying', 'succeeded', 'failed', 'dead')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    enqueued_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at    TIMESTAMPTZ,
    finished_at   TIMESTAMPTZ,
    worker        TEXT,
    rows_written  BIGINT,
    bytes_written BIGINT,
    manifest_url  TEXT,
    report_url    TEXT,
    watermark_before TEXT,
    watermark_after  TEXT,
    error         TEXT,
    requested_by  TEXT
);
CREATE INDEX dataset_runs_by_dataset ON dataset_runs (dataset_id, enqueued_at DESC);
CREATE INDEX dataset_runs_by_state ON dataset_runs (state, enqueued_at DESC);

-- API tokens: only the SHA-256 of the token is stored.
CREATE TABLE api_tokens (
    token_sha256 TEXT PRIMARY KEY,
    subject      TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('viewer', 'editor', 'approver', 'admin')),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at   TIMESTAMPTZ
);

-- Audit log: who, in which role, when, what, on what, from where, and the result. Append only.
CREATE TABLE audit_log (
    id          BIGSERIAL PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    subject     TEXT NOT NULL,
    role        TEXT,
    action      TEXT NOT NULL,
    dataset_id  TEXT,
    source_ip   TEXT,
    result      TEXT NOT NULL CHECK (result IN ('ok', 'rejected', 'denied', 'error')),
    detail      TEXT
);
CREATE INDEX audit_log_by_dataset ON audit_log (dataset_id, at DESC);
