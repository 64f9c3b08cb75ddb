-- The outbox: every message a run's end or an upload sends (RabbitMQ and webhooks), written in the
-- same transaction as the run's end, so a crash between the commit and the publish loses nothing;
-- a relay publishes what is pending. `dedupe_key` makes a run's end idempotent: a retried run that
-- finds its commit already made records its messages once.
CREATE TABLE outbox (
    id            BIGSERIAL PRIMARY KEY,
    dedupe_key    TEXT NOT NULL UNIQUE,
    -- The webhook event (`run_succeeded`, `validation_failed`, `extraction_failed`,
    -- `upload_success`); NULL for broker-only messages (`dataset_ready`).
    event         TEXT,
    routing_key   TEXT NOT NULL,
    dataset_id    TEXT NOT NULL,
    run_id        TEXT,
    payload       TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    -- `pending`, then `published` once the broker confirmed it, or `skipped` where there is no
    -- broker at all (`carga serve` without `--amqp-url`).
    broker_state  TEXT NOT NULL DEFAULT 'pending',
    published_at  TIMESTAMPTZ,
    -- A relay's lease on a pending row.
    claimed_by    TEXT,
    claimed_until TIMESTAMPTZ
);
CREATE INDEX outbox_pending ON outbox (broker_state, id);

-- Webhook subscriptions: events of one dataset or of all (`dataset_id` NULL). Their signing
-- secrets live in the secrets provider (`webhooks/<webhook_id>`), never here, as connections' do.
CREATE TABLE webhooks (
    webhook_id  TEXT PRIMARY KEY,
    url         TEXT NOT NULL,
    dataset_id  TEXT,
    -- The events, comma-separated with a comma at each end (`,run_succeeded,extraction_failed,`).
    events      TEXT NOT NULL,
    enabled     BOOLEAN NOT NULL DEFAULT TRUE,
    created_by  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);

-- One row per message and subscription: the delivery log the dashboard shows.
CREATE TABLE webhook_deliveries (
    id              BIGSERIAL PRIMARY KEY,
    outbox_id       BIGINT NOT NULL,
    webhook_id      TEXT NOT NULL,
    -- `pending` (due at next_attempt_at), `delivered`, or `failed` (gave up).
    state           TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    claimed_until   TIMESTAMPTZ,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    delivered_at    TIMESTAMPTZ,
    UNIQUE (outbox_id, webhook_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);
