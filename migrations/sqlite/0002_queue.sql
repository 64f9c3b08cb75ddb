-- The embedded mode's queue and shared state: what Redis holds in production (the job queue
-- with its dead set, workers' heartbeats, cancel requests, per-dataset locks, the scheduler's
-- last fired times, the metrics counters). Times are Unix milliseconds.

-- One row per job not yet done: queued (run_at says from when), running (held by `worker`) or
-- dead. A succeeded job's row is deleted; its history stays in dataset_runs.
CREATE TABLE queue_jobs (
    run_id      TEXT PRIMARY KEY,
    job         TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('queued', 'running', 'dead')),
    run_at      INTEGER NOT NULL,
    enqueued_at INTEGER NOT NULL,
    -- Times a worker took it (a hand-over after a crash counts).
    taken       INTEGER NOT NULL DEFAULT 0,
    worker      TEXT,
    error       TEXT
);
CREATE INDEX queue_jobs_due ON queue_jobs (state, run_at);

-- A scheduled time's key names the job that won it, so a time is enqueued once.
CREATE TABLE queue_idempotency (
    key        TEXT PRIMARY KEY,
    run_id     TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);

CREATE TABLE queue_workers (
    name      TEXT PRIMARY KEY,
    last_seen INTEGER NOT NULL
);

CREATE TABLE queue_cancels (
    run_id     TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);

CREATE TABLE dataset_locks (
    key        TEXT PRIMARY KEY,
    token      TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);

CREATE TABLE scheduler_fired (
    dataset_id TEXT PRIMARY KEY,
    fired_at   INTEGER NOT NULL
);

CREATE TABLE metric_counters (
    grp   TEXT NOT NULL,
    field TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (grp, field)
);
