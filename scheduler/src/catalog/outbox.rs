//! The outbox and the webhook subscriptions (`migrations/0006_outbox.sql`).
//!
//! A run's end and its messages are one transaction: the run row, the outbox rows (RabbitMQ
//! routing key and payload) and one delivery row per matching webhook subscription commit
//! together or not at all. The relay (`crate::relay`) publishes and delivers what is pending,
//! under a lease, so any number of processes may relay at once.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::ColumnIndex;

use super::{Catalog, CatalogRow, Pool, Result, RunResult};

/// The events a webhook may subscribe to.
pub const WEBHOOK_EVENTS: [&str; 4] = [
    "upload_success",
    "validation_failed",
    "extraction_failed",
    "run_succeeded",
];

/// A message to send once the transaction recording it commits.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    /// The same key is recorded once (a retried run that finds its commit made records its
    /// messages again; they are kept once).
    pub dedupe_key: String,
    /// The webhook event, for the subscriptions to it; `None` sends to the broker only.
    pub event: Option<&'static str>,
    pub routing_key: String,
    pub dataset_id: String,
    pub run_id: Option<String>,
    pub payload: serde_json::Value,
}

/// What became of a message for the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerState {
    Published,
    /// There is no broker to publish to.
    Skipped,
}

impl BrokerState {
    fn as_str(self) -> &'static str {
        match self {
            BrokerState::Published => "published",
            BrokerState::Skipped => "skipped",
        }
    }
}

/// An outbox row the broker has not confirmed yet.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingMessage {
    pub id: i64,
    pub routing_key: String,
    pub payload: String,
}

/// A webhook subscription (its signing secret is in the secrets provider, never here).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct WebhookRecord {
    pub webhook_id: String,
    pub url: String,
    /// `null`: every dataset's events.
    pub dataset_id: Option<String>,
    pub events: Vec<String>,
    pub enabled: bool,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a subscription is written with.
#[derive(Debug, Clone)]
pub struct WebhookSpec {
    pub url: String,
    pub dataset_id: Option<String>,
    pub events: Vec<String>,
    pub enabled: bool,
}

/// One line of the delivery log.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DeliveryRecord {
    pub id: i64,
    pub outbox_id: i64,
    pub webhook_id: String,
    pub url: Option<String>,
    pub event: Option<String>,
    pub dataset_id: String,
    pub run_id: Option<String>,
    /// `pending`, `delivered` or `failed` (gave up).
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// The outbox as operators watch it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    /// Messages the broker has not confirmed.
    pub pending_messages: i64,
    /// Webhook deliveries by state (`pending`, `delivered`, `failed`).
    pub deliveries: Vec<(String, i64)>,
}

/// A delivery due now, with what sending it needs.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub id: i64,
    pub outbox_id: i64,
    pub webhook_id: String,
    /// Attempts made before this one.
    pub attempts: i32,
    pub url: String,
    pub event: String,
    pub payload: String,
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryOutcome {
    Delivered {
        status: i32,
    },
    /// Tried again at `next`.
    Retry {
        status: Option<i32>,
        error: String,
        next: DateTime<Utc>,
    },
    /// Given up.
    Failed {
        status: Option<i32>,
        error: String,
    },
}

/// `,a,b,`: a list a `LIKE '%,a,%'` finds an item of.
fn event_list(events: &[String]) -> String {
    format!(",{},", events.join(","))
}

/// Records `$messages` in the open transaction `$tx` at `$now`: each outbox row once (by its
/// dedupe key), and a delivery for each enabled subscription to its event and dataset.
macro_rules! record_messages {
    ($tx:ident, $messages:expr, $now:expr) => {
        for message in $messages {
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO outbox (dedupe_key, event, routing_key, dataset_id, run_id, payload, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (dedupe_key) DO NOTHING
                 RETURNING id",
            )
            .bind(&message.dedupe_key)
            .bind(message.event)
            .bind(&message.routing_key)
            .bind(&message.dataset_id)
            .bind(&message.run_id)
            .bind(message.payload.to_string())
            .bind($now)
            .fetch_optional(&mut *$tx)
            .await?;
            let (Some(id), Some(event)) = (id, message.event) else {
                continue;
            };
            sqlx::query(
                "INSERT INTO webhook_deliveries (outbox_id, webhook_id, state, attempts, next_attempt_at, created_at)
                 SELECT $1, webhook_id, 'pending', 0, $2, $2 FROM webhooks
                 WHERE enabled AND (dataset_id IS NULL OR dataset_id = $3) AND events LIKE $4",
            )
            .bind(id)
            .bind($now)
            .bind(&message.dataset_id)
            .bind(format!("%,{event},%"))
            .execute(&mut *$tx)
            .await?;
        }
    };
}

impl Catalog {
    /// The run's end and its messages, in one transaction.
    pub async fn run_finished_with(
        &self,
        run_id: &str,
        attempts: i32,
        result: &RunResult,
        messages: &[OutboxMessage],
    ) -> Result<()> {
        let now = Utc::now();
        with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            finish_run_query!(run_id, attempts, result, now)
                .execute(&mut *tx)
                .await?;
            record_messages!(tx, messages, now);
            tx.commit().await?;
        });
        Ok(())
    }

    /// Messages with no run to end (an upload's validation).
    pub async fn record_messages(&self, messages: &[OutboxMessage]) -> Result<()> {
        let now = Utc::now();
        with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            record_messages!(tx, messages, now);
            tx.commit().await?;
        });
        Ok(())
    }

    /// Takes up to `limit` pending messages for `relay` until `lease` ends (oldest first). The
    /// lease is checked again on each row, so two relays never take the same one.
    pub async fn claim_outbox(
        &self,
        relay: &str,
        lease: std::time::Duration,
        limit: i64,
    ) -> Result<Vec<PendingMessage>> {
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(lease).unwrap_or_default();
        let mut rows = with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE outbox SET claimed_by = $1, claimed_until = $2
                 WHERE id IN (SELECT id FROM outbox
                              WHERE broker_state = 'pending' AND (claimed_until IS NULL OR claimed_until < $3)
                              ORDER BY id LIMIT $4)
                   AND broker_state = 'pending' AND (claimed_until IS NULL OR claimed_until < $3)
                 RETURNING id, routing_key, payload",
            )
            .bind(relay)
            .bind(until)
            .bind(now)
            .bind(limit)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                Ok(PendingMessage {
                    id: row.integer("id")?,
                    routing_key: row.text("routing_key")?,
                    payload: row.text("payload")?,
                })
            })
            .collect::<sqlx::Result<Vec<_>>>()?
        });
        rows.sort_by_key(|m| m.id);
        Ok(rows)
    }

    /// Messages the broker has not confirmed yet.
    pub async fn outbox_pending(&self) -> Result<i64> {
        let pending = with_pool!(self, |pool| {
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE broker_state = 'pending'")
                .fetch_one(pool)
                .await?
        });
        Ok(pending)
    }

    /// Messages waiting for the broker, and webhook deliveries by state, for `/metrics`.
    pub async fn outbox_counts(&self) -> Result<OutboxCounts> {
        let pending_messages = self.outbox_pending().await?;
        let deliveries = with_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT state, COUNT(*) AS n FROM webhook_deliveries GROUP BY state ORDER BY state",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| Ok((row.text("state")?, row.integer("n")?)))
                .collect::<sqlx::Result<Vec<_>>>()?
        });
        Ok(OutboxCounts {
            pending_messages,
            deliveries,
        })
    }

    /// The broker confirmed message `id` (`published`), or there is no broker (`skipped`).
    pub async fn outbox_sent(&self, id: i64, state: BrokerState) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE outbox SET broker_state = $2, published_at = $3, claimed_by = NULL,
                     claimed_until = NULL
                 WHERE id = $1",
            )
            .bind(id)
            .bind(state.as_str())
            .bind(Utc::now())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Takes up to `limit` deliveries due now until `lease` ends.
    pub async fn claim_deliveries(
        &self,
        lease: std::time::Duration,
        limit: i64,
    ) -> Result<Vec<DueDelivery>> {
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(lease).unwrap_or_default();
        let mut due = with_pool!(self, |pool| {
            let claimed: Vec<i64> = sqlx::query_scalar(
                "UPDATE webhook_deliveries SET claimed_until = $1
                 WHERE id IN (SELECT id FROM webhook_deliveries
                              WHERE state = 'pending' AND next_attempt_at <= $2
                                AND (claimed_until IS NULL OR claimed_until < $2)
                              ORDER BY id LIMIT $3)
                   AND state = 'pending' AND (claimed_until IS NULL OR claimed_until < $2)
                 RETURNING id",
            )
            .bind(until)
            .bind(now)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            let mut due = Vec::with_capacity(claimed.len());
            for id in claimed {
                let row = sqlx::query(
                    "SELECT d.id, d.outbox_id, d.webhook_id, d.attempts, w.url, o.event, o.payload
                     FROM webhook_deliveries d
                     JOIN webhooks w ON w.webhook_id = d.webhook_id
                     JOIN outbox o ON o.id = d.outbox_id
                     WHERE d.id = $1",
                )
                .bind(id)
                .fetch_optional(pool)
                .await?;
                match row {
                    Some(row) => due.push(DueDelivery {
                        id: row.integer("id")?,
                        outbox_id: row.integer("outbox_id")?,
                        webhook_id: row.text("webhook_id")?,
                        attempts: row.small_integer("attempts")?,
                        url: row.text("url")?,
                        event: row.optional_text("event")?.unwrap_or_default(),
                        payload: row.text("payload")?,
                    }),
                    // The subscription was deleted since: nothing to deliver to.
                    None => {
                        sqlx::query(
                            "UPDATE webhook_deliveries SET state = 'failed', claimed_until = NULL,
                                 last_error = 'the subscription was deleted'
                             WHERE id = $1",
                        )
                        .bind(id)
                        .execute(pool)
                        .await?;
                    }
                }
            }
            due
        });
        due.sort_by_key(|d| d.id);
        Ok(due)
    }

    /// Records how delivery `id`'s attempt number `attempts` ended.
    pub async fn delivery_attempted(
        &self,
        id: i64,
        attempts: i32,
        outcome: &DeliveryOutcome,
    ) -> Result<()> {
        let now = Utc::now();
        let (state, status, error, next, delivered) = match outcome {
            DeliveryOutcome::Delivered { status } => {
                ("delivered", Some(*status), None, now, Some(now))
            }
            DeliveryOutcome::Retry {
                status,
                error,
                next,
            } => ("pending", *status, Some(error.as_str()), *next, None),
            DeliveryOutcome::Failed { status, error } => {
                ("failed", *status, Some(error.as_str()), now, None)
            }
        };
        with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE webhook_deliveries SET state = $2, attempts = $3, last_status = $4, last_error = $5,
                     next_attempt_at = $6, delivered_at = $7, claimed_until = NULL
                 WHERE id = $1",
            )
            .bind(id)
            .bind(state)
            .bind(attempts)
            .bind(status)
            .bind(error)
            .bind(next)
            .bind(delivered)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Creates or replaces a subscription.
    pub async fn put_webhook(
        &self,
        webhook_id: &str,
        spec: &WebhookSpec,
        by: &str,
    ) -> Result<WebhookRecord> {
        let now = Utc::now();
        let record = with_pool!(self, |pool| {
            let row = sqlx::query(
                "INSERT INTO webhooks (webhook_id, url, dataset_id, events, enabled, created_by, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
                 ON CONFLICT (webhook_id) DO UPDATE SET url = EXCLUDED.url, dataset_id = EXCLUDED.dataset_id,
                     events = EXCLUDED.events, enabled = EXCLUDED.enabled, updated_at = EXCLUDED.updated_at
                 RETURNING webhook_id, url, dataset_id, events, enabled, created_by, created_at, updated_at",
            )
            .bind(webhook_id)
            .bind(&spec.url)
            .bind(&spec.dataset_id)
            .bind(event_list(&spec.events))
            .bind(spec.enabled)
            .bind(by)
            .bind(now)
            .fetch_one(pool)
            .await?;
            webhook_from_row(&row)?
        });
        Ok(record)
    }

    pub async fn webhooks(&self) -> Result<Vec<WebhookRecord>> {
        let records = with_pool!(self, |pool| {
            sqlx::query(
                "SELECT webhook_id, url, dataset_id, events, enabled, created_by, created_at, updated_at
                 FROM webhooks ORDER BY webhook_id",
            )
            .fetch_all(pool)
            .await?
            .iter()
            .map(webhook_from_row)
            .collect::<sqlx::Result<Vec<_>>>()?
        });
        Ok(records)
    }

    /// Deletes a subscription; its pending deliveries end as failed when they come due.
    pub async fn delete_webhook(&self, webhook_id: &str) -> Result<bool> {
        let deleted = with_pool!(self, |pool| {
            sqlx::query("DELETE FROM webhooks WHERE webhook_id = $1")
                .bind(webhook_id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(deleted > 0)
    }

    /// The delivery log, newest first: one subscription's, one dataset's, or all.
    pub async fn deliveries(
        &self,
        webhook_id: Option<&str>,
        dataset_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeliveryRecord>> {
        let records = with_pool!(self, |pool| {
            sqlx::query(
                "SELECT d.id, d.outbox_id, d.webhook_id, w.url, o.event, o.dataset_id, o.run_id, d.state,
                        d.attempts, d.next_attempt_at, d.last_status, d.last_error, d.created_at, d.delivered_at
                 FROM webhook_deliveries d
                 JOIN outbox o ON o.id = d.outbox_id
                 LEFT JOIN webhooks w ON w.webhook_id = d.webhook_id
                 WHERE ($1 IS NULL OR d.webhook_id = $1) AND ($2 IS NULL OR o.dataset_id = $2)
                 ORDER BY d.id DESC LIMIT $3",
            )
            .bind(webhook_id)
            .bind(dataset_id)
            .bind(limit)
            .fetch_all(pool)
            .await?
            .iter()
            .map(delivery_from_row)
            .collect::<sqlx::Result<Vec<_>>>()?
        });
        Ok(records)
    }

    /// Forgets what is older than `before`: deliveries that ended, and messages with no
    /// delivery left (published, or never published where no relay has a broker).
    pub async fn prune_outbox(&self, before: DateTime<Utc>) -> Result<u64> {
        let pruned = with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let deliveries = sqlx::query(
                "DELETE FROM webhook_deliveries WHERE state <> 'pending' AND created_at < $1",
            )
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let messages = sqlx::query(
                "DELETE FROM outbox WHERE created_at < $1
                   AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.outbox_id = outbox.id)",
            )
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            deliveries + messages
        });
        Ok(pruned)
    }
}

fn webhook_from_row<R: CatalogRow>(row: &R) -> sqlx::Result<WebhookRecord>
where
    for<'a> &'a str: ColumnIndex<R>,
{
    Ok(WebhookRecord {
        webhook_id: row.text("webhook_id")?,
        url: row.text("url")?,
        dataset_id: row.optional_text("dataset_id")?,
        events: row
            .text("events")?
            .split(',')
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect(),
        enabled: row.flag("enabled")?,
        created_by: row.text("created_by")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}

fn delivery_from_row<R: CatalogRow>(row: &R) -> sqlx::Result<DeliveryRecord>
where
    for<'a> &'a str: ColumnIndex<R>,
{
    Ok(DeliveryRecord {
        id: row.integer("id")?,
        outbox_id: row.integer("outbox_id")?,
        webhook_id: row.text("webhook_id")?,
        url: row.optional_text("url")?,
        event: row.optional_text("event")?,
        dataset_id: row.text("dataset_id")?,
        run_id: row.optional_text("run_id")?,
        state: row.text("state")?,
        attempts: row.small_integer("attempts")?,
        next_attempt_at: row.time("next_attempt_at")?,
        last_status: row.optional_small_integer("last_status")?,
        last_error: row.optional_text("last_error")?,
        created_at: row.time("created_at")?,
        delivered_at: row.optional_time("delivered_at")?,
    })
}
