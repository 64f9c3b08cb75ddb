//! The PostgreSQL catalog: dataset configuration (`dataset_crons`), run history (`dataset_runs`),
//! API tokens and the audit log. Schema in `migrations/`, compiled into the binary.

use std::borrow::Cow;

use carga_config::{DatasetSpec, Mode, NewColumnPolicy, Trigger};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Row, SqlSafeStr};

use crate::job::ExtractionJob;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("catalog migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("dataset '{dataset}' in the catalog has a spec that no longer parses: {message}")]
    BadSpec { dataset: String, message: String },
}

pub type Result<T> = std::result::Result<T, CatalogError>;

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "catalog",
        include_str!("../../migrations/0001_catalog.sql"),
    ),
    (
        2,
        "dashboard",
        include_str!("../../migrations/0002_dashboard.sql"),
    ),
];

/// A dataset as the catalog holds it.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetRecord {
    pub dataset_id: String,
    pub spec: DatasetSpec,
    pub enabled: bool,
    pub approved: bool,
    pub approved_by: Option<String>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

impl DatasetRecord {
    /// The scheduler fires it and the trigger may run it.
    pub fn is_runnable(&self) -> bool {
        self.enabled && self.approved
    }
}

/// One row of run history.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunRecord {
    pub run_id: String,
    pub dataset_id: String,
    pub reason: String,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub state: String,
    pub attempts: i32,
    pub enqueued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub worker: Option<String>,
    pub rows_written: Option<i64>,
    pub bytes_written: Option<i64>,
    pub manifest_url: Option<String>,
    pub report_url: Option<String>,
    pub watermark_before: Option<String>,
    pub watermark_after: Option<String>,
    pub error: Option<String>,
    pub requested_by: Option<String>,
    /// The run that a dashboard retry started in this one's place.
    pub retried_as: Option<String>,
}

/// What the run history is searched by.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RunFilter {
    pub dataset_id: Option<String>,
    pub state: Option<String>,
    /// A part of the dataset id.
    pub search: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    #[serde(default = "default_run_limit")]
    pub limit: i64,
}

fn default_run_limit() -> i64 {
    100
}

/// Runs that finished in one minute with one state.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputPoint {
    pub minute: DateTime<Utc>,
    pub state: String,
    pub runs: i64,
    pub rows_written: i64,
}

/// How a run ended, as the worker reports it.
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    pub state: &'static str,
    pub rows_written: Option<i64>,
    pub bytes_written: Option<i64>,
    pub manifest_url: Option<String>,
    pub report_url: Option<String>,
    pub watermark_before: Option<String>,
    pub watermark_after: Option<String>,
    pub error: Option<String>,
}

/// One audit entry: who, in which role, did what, on which dataset, from where, with what result.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub subject: String,
    pub role: Option<String>,
    pub action: String,
    pub dataset_id: Option<String>,
    pub source_ip: Option<String>,
    pub result: &'static str,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    pub id: i64,
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub entry: AuditEntry,
}

#[derive(Clone)]
pub struct Catalog {
    pool: PgPool,
}

impl Catalog {
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the migrations not yet applied (sqlx's table, with its advisory lock, so replicas
    /// starting together apply each once).
    pub async fn migrate(&self) -> Result<()> {
        let migrations = MIGRATIONS
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    AssertSqlSafe(*sql).into_sql_str(),
                    false,
                )
            })
            .collect();
        Migrator::with_migrations(migrations)
            .run(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Creates or replaces a dataset's configuration. A change needs approval again unless the
    /// writer may approve (`approve`), and bumps the version the scheduler watches.
    pub async fn upsert_dataset(
        &self,
        spec: &DatasetSpec,
        by: &str,
        approve: bool,
    ) -> Result<DatasetRecord> {
        let spec_json = serde_json::to_value(spec).expect("a spec always serializes");
        let row = sqlx::query(
            "INSERT INTO dataset_crons (dataset_id, source_format, source_location, tables, connection_id,
                 mode, trigger_method, cron, time_zone, new_columns, enabled, approved, approved_by, spec, updated_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, TRUE, $11, $12, $13, $14)
             ON CONFLICT (dataset_id) DO UPDATE SET
                 source_format = EXCLUDED.source_format, source_location = EXCLUDED.source_location,
                 tables = EXCLUDED.tables, connection_id = EXCLUDED.connection_id, mode = EXCLUDED.mode,
                 trigger_method = EXCLUDED.trigger_method, cron = EXCLUDED.cron, time_zone = EXCLUDED.time_zone,
                 new_columns = EXCLUDED.new_columns, approved = EXCLUDED.approved,
                 approved_by = EXCLUDED.approved_by, spec = EXCLUDED.spec, updated_by = EXCLUDED.updated_by,
                 version = dataset_crons.version + 1, updated_at = now()
             RETURNING *",
        )
        .bind(&spec.id)
        .bind(format_name(&spec.source.format))
        .bind(&spec.source.location)
        .bind(&spec.source.tables)
        .bind(&spec.connection_id)
        .bind(match spec.mode {
            Mode::Delta => "delta",
            Mode::Complete => "complete",
        })
        .bind(match spec.trigger {
            Trigger::TimedPull => "timed_pull",
            Trigger::Callback => "callback",
        })
        .bind(spec.cron.as_deref().filter(|_| spec.trigger == Trigger::TimedPull))
        .bind(spec.time_zone.as_deref().unwrap_or("UTC"))
        .bind(match spec.new_columns {
            NewColumnPolicy::Ignore => "ignore",
            NewColumnPolicy::Add => "add",
        })
        .bind(approve)
        .bind(approve.then_some(by))
        .bind(spec_json)
        .bind(by)
        .fetch_one(&self.pool)
        .await?;
        dataset_from_row(&row)
    }

    pub async fn approve(&self, dataset_id: &str, by: &str) -> Result<Option<DatasetRecord>> {
        let row = sqlx::query(
            "UPDATE dataset_crons SET approved = TRUE, approved_by = $2, updated_at = now(),
                 version = version + 1
             WHERE dataset_id = $1 RETURNING *",
        )
        .bind(dataset_id)
        .bind(by)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(dataset_from_row).transpose()
    }

    pub async fn set_enabled(
        &self,
        dataset_id: &str,
        enabled: bool,
        by: &str,
    ) -> Result<Option<DatasetRecord>> {
        let row = sqlx::query(
            "UPDATE dataset_crons SET enabled = $2, updated_by = $3, updated_at = now(), version = version + 1
             WHERE dataset_id = $1 RETURNING *",
        )
        .bind(dataset_id)
        .bind(enabled)
        .bind(by)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(dataset_from_row).transpose()
    }

    pub async fn delete_dataset(&self, dataset_id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM dataset_crons WHERE dataset_id = $1")
            .bind(dataset_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn dataset(&self, dataset_id: &str) -> Result<Option<DatasetRecord>> {
        let row = sqlx::query("SELECT * FROM dataset_crons WHERE dataset_id = $1")
            .bind(dataset_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(dataset_from_row).transpose()
    }

    pub async fn datasets(&self) -> Result<Vec<DatasetRecord>> {
        let rows = sqlx::query("SELECT * FROM dataset_crons ORDER BY dataset_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(dataset_from_row).collect()
    }

    /// Enabled, approved `timed_pull` datasets: what the scheduler fires. A row whose spec no
    /// longer parses is skipped with a warning rather than stopping every other schedule.
    pub async fn scheduled_datasets(&self) -> Result<Vec<DatasetRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM dataset_crons
             WHERE enabled AND approved AND trigger_method = 'timed_pull' ORDER BY dataset_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .filter_map(|row| match dataset_from_row(row) {
                Ok(record) => Some(record),
                Err(e) => {
                    tracing::warn!(error = %e, "dataset skipped by the scheduler");
                    None
                }
            })
            .collect())
    }

    /// Records queued runs; a run id already present is left as it is.
    pub async fn insert_queued_runs(&self, jobs: &[ExtractionJob]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = jobs.iter().map(|j| j.run_id.as_str()).collect();
        let datasets: Vec<&str> = jobs.iter().map(|j| j.dataset_id.as_str()).collect();
        let reasons: Vec<&str> = jobs.iter().map(|j| j.reason.as_str()).collect();
        let scheduled: Vec<Option<DateTime<Utc>>> = jobs.iter().map(|j| j.scheduled_for).collect();
        let requested: Vec<Option<&str>> = jobs.iter().map(|j| j.requested_by.as_deref()).collect();
        sqlx::query(
            "INSERT INTO dataset_runs (run_id, dataset_id, reason, scheduled_for, requested_by, state)
             SELECT *, 'queued' FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[])
             ON CONFLICT (run_id) DO NOTHING",
        )
        .bind(&ids)
        .bind(&datasets)
        .bind(&reasons)
        .bind(&scheduled)
        .bind(&requested)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A worker took the run (again, after a crash or a retry): the row exists afterwards even if
    /// the enqueuer died before writing it.
    pub async fn run_started(&self, job: &ExtractionJob, worker: &str, attempt: i32) -> Result<()> {
        sqlx::query(
            "INSERT INTO dataset_runs (run_id, dataset_id, reason, scheduled_for, requested_by, state,
                 attempts, started_at, worker)
             VALUES ($1, $2, $3, $4, $5, 'running', $6, now(), $7)
             ON CONFLICT (run_id) DO UPDATE SET state = 'running', attempts = $6,
                 started_at = COALESCE(dataset_runs.started_at, now()), worker = $7, error = NULL",
        )
        .bind(&job.run_id)
        .bind(&job.dataset_id)
        .bind(job.reason.as_str())
        .bind(job.scheduled_for)
        .bind(&job.requested_by)
        .bind(attempt)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn run_retrying(&self, run_id: &str, attempts: i32, error: &str) -> Result<()> {
        sqlx::query(
            "UPDATE dataset_runs SET state = 'retrying', attempts = $2, error = $3 WHERE run_id = $1",
        )
        .bind(run_id)
        .bind(attempts)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn run_finished(
        &self,
        run_id: &str,
        attempts: i32,
        result: &RunResult,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE dataset_runs SET state = $2, attempts = $3, finished_at = now(), rows_written = $4,
                 bytes_written = $5, manifest_url = $6, report_url = $7, watermark_before = $8,
                 watermark_after = $9, error = $10
             WHERE run_id = $1",
        )
        .bind(run_id)
        .bind(result.state)
        .bind(attempts)
        .bind(result.rows_written)
        .bind(result.bytes_written)
        .bind(&result.manifest_url)
        .bind(&result.report_url)
        .bind(&result.watermark_before)
        .bind(&result.watermark_after)
        .bind(&result.error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        let row = sqlx::query("SELECT * FROM dataset_runs WHERE run_id = $1")
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(run_from_row).transpose()?)
    }

    /// Run history, newest first, optionally for one dataset and one state.
    pub async fn runs(
        &self,
        dataset_id: Option<&str>,
        state: Option<&str>,
        limit: i64,
    ) -> Result<Vec<RunRecord>> {
        self.search_runs(&RunFilter {
            dataset_id: dataset_id.map(str::to_owned),
            state: state.map(str::to_owned),
            limit,
            ..RunFilter::default()
        })
        .await
    }

    /// Run history, newest first: a dataset (or a part of its id), a state, and an enqueue-time
    /// window.
    pub async fn search_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM dataset_runs
             WHERE ($1::text IS NULL OR dataset_id = $1)
               AND ($2::text IS NULL OR state = $2)
               AND ($3::text IS NULL OR strpos(dataset_id, $3) > 0)
               AND ($4::timestamptz IS NULL OR enqueued_at >= $4)
               AND ($5::timestamptz IS NULL OR enqueued_at < $5)
             ORDER BY enqueued_at DESC, run_id DESC LIMIT $6",
        )
        .bind(&filter.dataset_id)
        .bind(&filter.state)
        .bind(&filter.search)
        .bind(filter.since)
        .bind(filter.until)
        .bind(filter.limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(run_from_row).collect::<sqlx::Result<_>>()?)
    }

    /// Finished runs per minute and state over the last `minutes` minutes (the throughput chart).
    pub async fn throughput(&self, minutes: i64) -> Result<Vec<ThroughputPoint>> {
        let rows = sqlx::query(
            "SELECT date_trunc('minute', finished_at) AS minute, state, count(*) AS runs,
                    COALESCE(sum(rows_written), 0)::bigint AS rows_written
             FROM dataset_runs
             WHERE finished_at >= now() - make_interval(mins => $1::int)
             GROUP BY 1, 2 ORDER BY 1",
        )
        .bind(minutes)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                Ok(ThroughputPoint {
                    minute: r.try_get("minute")?,
                    state: r.try_get("state")?,
                    runs: r.try_get("runs")?,
                    rows_written: r.try_get("rows_written")?,
                })
            })
            .collect::<sqlx::Result<_>>()?)
    }

    /// When the oldest still-queued run was enqueued.
    pub async fn oldest_queued(&self) -> Result<Option<DateTime<Utc>>> {
        Ok(
            sqlx::query_scalar("SELECT min(enqueued_at) FROM dataset_runs WHERE state = 'queued'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// The last successful run of each dataset.
    pub async fn last_successes(&self) -> Result<Vec<(String, DateTime<Utc>)>> {
        let rows = sqlx::query(
            "SELECT dataset_id, max(finished_at) AS at FROM dataset_runs
             WHERE state = 'succeeded' GROUP BY dataset_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| Ok((r.try_get("dataset_id")?, r.try_get("at")?)))
            .collect::<sqlx::Result<_>>()?)
    }

    /// Ends a queued or running run by an operator's kill. False when it had already ended.
    pub async fn run_killed(&self, run_id: &str, by: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE dataset_runs SET state = 'killed', finished_at = now(),
                 error = COALESCE(error || '; ', '') || 'killed by ' || $2
             WHERE run_id = $1 AND state IN ('queued', 'running', 'retrying')",
        )
        .bind(run_id)
        .bind(by)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records that `run_id` was retried as `new_run_id`.
    pub async fn run_retried_as(&self, run_id: &str, new_run_id: &str) -> Result<()> {
        sqlx::query("UPDATE dataset_runs SET retried_as = $2 WHERE run_id = $1")
            .bind(run_id)
            .bind(new_run_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes a finished run from the history. False when it is not finished (or not there).
    pub async fn delete_run(&self, run_id: &str) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM dataset_runs
             WHERE run_id = $1 AND state IN ('succeeded', 'failed', 'dead', 'killed')",
        )
        .bind(run_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Creates an API token for `subject` with `role`; only its hash is stored.
    pub async fn create_token(&self, subject: &str, role: &str) -> Result<String> {
        let token = format!("carga_{}", hex::encode(rand::random::<[u8; 24]>()));
        sqlx::query("INSERT INTO api_tokens (token_sha256, subject, role) VALUES ($1, $2, $3)")
            .bind(token_hash(&token))
            .bind(subject)
            .bind(role)
            .execute(&self.pool)
            .await?;
        Ok(token)
    }

    /// The subject and role of a live token.
    pub async fn token(&self, token: &str) -> Result<Option<(String, String)>> {
        let row = sqlx::query(
            "SELECT subject, role FROM api_tokens WHERE token_sha256 = $1 AND revoked_at IS NULL",
        )
        .bind(token_hash(token))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| (r.get("subject"), r.get("role"))))
    }

    pub async fn audit(&self, entry: &AuditEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (subject, role, action, dataset_id, source_ip, result, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&entry.subject)
        .bind(&entry.role)
        .bind(&entry.action)
        .bind(&entry.dataset_id)
        .bind(&entry.source_ip)
        .bind(entry.result)
        .bind(&entry.detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn audit_log(
        &self,
        dataset_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AuditRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM audit_log WHERE ($1::text IS NULL OR dataset_id = $1)
             ORDER BY id DESC LIMIT $2",
        )
        .bind(dataset_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| AuditRecord {
                id: r.get("id"),
                at: r.get("at"),
                entry: AuditEntry {
                    subject: r.get("subject"),
                    role: r.get("role"),
                    action: r.get("action"),
                    dataset_id: r.get("dataset_id"),
                    source_ip: r.get("source_ip"),
                    result: match r.get::<String, _>("result").as_str() {
                        "ok" => "ok",
                        "rejected" => "rejected",
                        "denied" => "denied",
                        _ => "error",
                    },
                    detail: r.get("detail"),
                },
            })
            .collect())
    }
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn format_name(format: &carga_config::SourceFormat) -> String {
    serde_json::to_value(format)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn dataset_from_row(row: &PgRow) -> Result<DatasetRecord> {
    let dataset_id: String = row.get("dataset_id");
    let spec_json: serde_json::Value = row.get("spec");
    let spec: DatasetSpec =
        serde_json::from_value(spec_json).map_err(|e| CatalogError::BadSpec {
            dataset: dataset_id.clone(),
            message: e.to_string(),
        })?;
    Ok(DatasetRecord {
        dataset_id,
        spec,
        enabled: row.get("enabled"),
        approved: row.get("approved"),
        approved_by: row.get("approved_by"),
        version: row.get("version"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        updated_by: row.get("updated_by"),
    })
}

fn run_from_row(row: &PgRow) -> sqlx::Result<RunRecord> {
    Ok(RunRecord {
        run_id: row.try_get("run_id")?,
        dataset_id: row.try_get("dataset_id")?,
        reason: row.try_get("reason")?,
        scheduled_for: row.try_get("scheduled_for")?,
        state: row.try_get("state")?,
        attempts: row.try_get("attempts")?,
        enqueued_at: row.try_get("enqueued_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        worker: row.try_get("worker")?,
        rows_written: row.try_get("rows_written")?,
        bytes_written: row.try_get("bytes_written")?,
        manifest_url: row.try_get("manifest_url")?,
        report_url: row.try_get("report_url")?,
        watermark_before: row.try_get("watermark_before")?,
        watermark_after: row.try_get("watermark_after")?,
        error: row.try_get("error")?,
        requested_by: row.try_get("requested_by")?,
        retried_as: row.try_get("retried_as")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_survives_the_jsonb_round_trip() {
        let spec = DatasetSpec::from_yaml(
            "id: ds\nsource: {format: csv, location: '/tmp/x.csv'}\nmode: delta\ntimestamp_column: ts\nkey: [id]\ntrigger: timed_pull\ncron: '0 7 * * *'\ntime_zone: America/Bogota\n",
        )
        .unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        let back: DatasetSpec = serde_json::from_value(json).unwrap();
        assert_eq!(back, spec);
        assert_eq!(format_name(&spec.source.format), "csv");
    }
}
