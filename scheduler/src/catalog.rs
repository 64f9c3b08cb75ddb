//! The catalog: dataset configuration (`dataset_crons`), run history (`dataset_runs`), API tokens
//! and the audit log. PostgreSQL in production; SQLite in the embedded mode (`carga serve`), one
//! file beside the local bucket. Schemas in `migrations/` and `migrations/sqlite/`, compiled in.
//!
//! Every statement is written once in SQL both databases accept (times are bound from here rather
//! than `now()`, no casts, no arrays) and compiled for each driver by `with_pool!`.

use std::borrow::Cow;

use carga_config::{DatasetSpec, Mode, NewColumnPolicy, Trigger};
use chrono::{DateTime, Timelike, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions, Postgres};
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
};
use sqlx::{AssertSqlSafe, ColumnIndex, Decode, Row, SqlSafeStr, Type};

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

const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
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
    (
        3,
        "retries",
        include_str!("../../migrations/0003_retries.sql"),
    ),
    (
        4,
        "connections",
        include_str!("../../migrations/0004_connections.sql"),
    ),
    (
        5,
        "progress",
        include_str!("../../migrations/0005_progress.sql"),
    ),
    (
        6,
        "outbox",
        include_str!("../../migrations/0006_outbox.sql"),
    ),
];

/// The embedded mode's file: the catalog and the queue's tables (`queue::sqlite`).
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "catalog",
        include_str!("../../migrations/sqlite/0001_catalog.sql"),
    ),
    (
        2,
        "queue",
        include_str!("../../migrations/sqlite/0002_queue.sql"),
    ),
    (
        3,
        "retries",
        include_str!("../../migrations/sqlite/0003_retries.sql"),
    ),
    (
        4,
        "connections",
        include_str!("../../migrations/sqlite/0004_connections.sql"),
    ),
    (
        5,
        "progress",
        include_str!("../../migrations/sqlite/0005_progress.sql"),
    ),
    (
        6,
        "outbox",
        include_str!("../../migrations/sqlite/0006_outbox.sql"),
    ),
];

/// A dataset as the catalog holds it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DatasetRecord {
    pub dataset_id: String,
    /// The dataset's configuration, as `PUT /datasets/{id}` stored it (the YAML spec as JSON).
    #[schema(value_type = Object)]
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
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
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
    /// A retrying run: when its next attempt is due, and how many attempts it has in all.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub max_attempts: Option<i32>,
    /// How far a running attempt has got, as its worker last wrote it.
    pub progress: Option<RunProgress>,
}

/// A running attempt's progress, written by its worker every few seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunProgress {
    pub rows_read: u64,
    pub rows_rejected: u64,
    pub bytes_read: u64,
    /// How far through the source, 0 to 1, where its size is known (file size, the database's
    /// row estimate).
    pub fraction: Option<f64>,
    pub rows_per_second: f64,
    /// Seconds left at the rate so far, where the fraction is known.
    pub eta_seconds: Option<u64>,
    pub at: DateTime<Utc>,
}

impl RunProgress {
    /// The progress of an attempt that has been reading for `elapsed`.
    pub fn new(
        snapshot: &carga_jobs::validation::ProgressSnapshot,
        elapsed: std::time::Duration,
    ) -> Self {
        Self {
            rows_read: snapshot.rows_read,
            rows_rejected: snapshot.rows_rejected,
            bytes_read: snapshot.bytes_read,
            fraction: snapshot.fraction,
            rows_per_second: snapshot.rows_per_second(elapsed),
            eta_seconds: snapshot.eta(elapsed).map(|d| d.as_secs()),
            at: Utc::now(),
        }
    }
}

/// What the run history is searched by.
#[derive(Debug, Clone, Deserialize)]
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

impl Default for RunFilter {
    fn default() -> Self {
        Self {
            dataset_id: None,
            state: None,
            search: None,
            since: None,
            until: None,
            limit: default_run_limit(),
        }
    }
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub subject: String,
    pub role: Option<String>,
    pub action: String,
    pub dataset_id: Option<String>,
    pub source_ip: Option<String>,
    #[schema(value_type = String)]
    pub result: &'static str,
    pub detail: Option<String>,
}

/// What the catalog shows of a connection in the store: never a value.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ConnectionRecord {
    pub connection_id: String,
    pub kind: String,
    /// Where its credentials go (`host:port`).
    pub hosts: Vec<String>,
    /// The names of the fields it holds.
    pub fields: Vec<String>,
    /// Who created it: an editor may change or delete only their own.
    pub owner: String,
    pub updated_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditRecord {
    pub id: i64,
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub entry: AuditEntry,
}

/// The database behind the catalog.
#[derive(Clone)]
enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Runs the same statement code on whichever database backs the catalog: each arm is compiled
/// for its own driver, so the SQL in `$body` must be portable.
macro_rules! with_pool {
    ($catalog:expr, |$pool:ident| $body:expr) => {
        match &$catalog.pool {
            Pool::Postgres($pool) => $body,
            Pool::Sqlite($pool) => $body,
        }
    };
}

/// The statement that ends a run (state, counts, addresses, watermarks, error) at `$now`.
macro_rules! finish_run_query {
    ($run_id:expr, $attempts:expr, $result:expr, $now:expr) => {
        sqlx::query(
            "UPDATE dataset_runs SET state = $2, attempts = $3, finished_at = $11, rows_written = $4,
                 bytes_written = $5, manifest_url = $6, report_url = $7, watermark_before = $8,
                 watermark_after = $9, error = $10, next_attempt_at = NULL
             WHERE run_id = $1",
        )
        .bind($run_id)
        .bind($result.state)
        .bind($attempts)
        .bind($result.rows_written)
        .bind($result.bytes_written)
        .bind(&$result.manifest_url)
        .bind(&$result.report_url)
        .bind(&$result.watermark_before)
        .bind(&$result.watermark_after)
        .bind(&$result.error)
        .bind($now)
    };
}

mod outbox;
pub use outbox::{
    BrokerState, DeliveryOutcome, DeliveryRecord, DueDelivery, OutboxCounts, OutboxMessage,
    PendingMessage, WEBHOOK_EVENTS, WebhookRecord, WebhookSpec,
};

#[derive(Clone)]
pub struct Catalog {
    pool: Pool,
}

impl Catalog {
    /// Connects to the catalog: `postgres://…` or `sqlite://path` (created when missing).
    pub async fn connect(url: &str) -> Result<Self> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            return Self::open_sqlite(std::path::Path::new(path)).await;
        }
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await?;
        Ok(Self {
            pool: Pool::Postgres(pool),
        })
    }

    /// Opens (or creates) the embedded mode's SQLite file. WAL lets the dashboard read while a
    /// worker writes; writers wait for each other rather than failing.
    pub async fn open_sqlite(path: &std::path::Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        Ok(Self {
            pool: Pool::Sqlite(pool),
        })
    }

    /// The PostgreSQL pool, when the catalog is on PostgreSQL.
    pub fn postgres_pool(&self) -> Option<&PgPool> {
        match &self.pool {
            Pool::Postgres(pool) => Some(pool),
            Pool::Sqlite(_) => None,
        }
    }

    /// The SQLite pool, in the embedded mode (the queue keeps its tables in the same file).
    pub fn sqlite_pool(&self) -> Option<&SqlitePool> {
        match &self.pool {
            Pool::Postgres(_) => None,
            Pool::Sqlite(pool) => Some(pool),
        }
    }

    /// Applies the migrations not yet applied (sqlx's table; on PostgreSQL with its advisory
    /// lock, so replicas starting together apply each once).
    pub async fn migrate(&self) -> Result<()> {
        let set = match self.pool {
            Pool::Postgres(_) => POSTGRES_MIGRATIONS,
            Pool::Sqlite(_) => SQLITE_MIGRATIONS,
        };
        let migrations = set
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
        let migrator = Migrator::with_migrations(migrations);
        with_pool!(self, |pool| migrator.run(pool).await)?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
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
        let now = Utc::now();
        let row = with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO dataset_crons (dataset_id, source_format, source_location, tables, connection_id,
                     mode, trigger_method, cron, time_zone, new_columns, enabled, approved, approved_by, spec,
                     updated_by, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, TRUE, $11, $12, $13, $14, $15, $15)
                 ON CONFLICT (dataset_id) DO UPDATE SET
                     source_format = EXCLUDED.source_format, source_location = EXCLUDED.source_location,
                     tables = EXCLUDED.tables, connection_id = EXCLUDED.connection_id, mode = EXCLUDED.mode,
                     trigger_method = EXCLUDED.trigger_method, cron = EXCLUDED.cron, time_zone = EXCLUDED.time_zone,
                     new_columns = EXCLUDED.new_columns, approved = EXCLUDED.approved,
                     approved_by = EXCLUDED.approved_by, spec = EXCLUDED.spec, updated_by = EXCLUDED.updated_by,
                     version = dataset_crons.version + 1, updated_at = EXCLUDED.updated_at
                 RETURNING *",
            )
            .bind(&spec.id)
            .bind(spec.source.format_name())
            .bind(spec.source.location().unwrap_or_default())
            .bind(TableList(spec.source.tables()))
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
            .bind(&spec_json)
            .bind(by)
            .bind(now)
            .fetch_one(pool)
            .await
            .map_err(CatalogError::from)
            .and_then(|row| dataset_from_row(&row))
        })?;
        Ok(row)
    }

    pub async fn approve(&self, dataset_id: &str, by: &str) -> Result<Option<DatasetRecord>> {
        with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE dataset_crons SET approved = TRUE, approved_by = $2, updated_at = $3,
                     version = version + 1
                 WHERE dataset_id = $1 RETURNING *",
            )
            .bind(dataset_id)
            .bind(by)
            .bind(Utc::now())
            .fetch_optional(pool)
            .await?
            .as_ref()
            .map(dataset_from_row)
            .transpose()
        })
    }

    pub async fn set_enabled(
        &self,
        dataset_id: &str,
        enabled: bool,
        by: &str,
    ) -> Result<Option<DatasetRecord>> {
        with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE dataset_crons SET enabled = $2, updated_by = $3, updated_at = $4,
                     version = version + 1
                 WHERE dataset_id = $1 RETURNING *",
            )
            .bind(dataset_id)
            .bind(enabled)
            .bind(by)
            .bind(Utc::now())
            .fetch_optional(pool)
            .await?
            .as_ref()
            .map(dataset_from_row)
            .transpose()
        })
    }

    pub async fn delete_dataset(&self, dataset_id: &str) -> Result<bool> {
        let deleted = with_pool!(self, |pool| {
            sqlx::query("DELETE FROM dataset_crons WHERE dataset_id = $1")
                .bind(dataset_id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(deleted > 0)
    }

    pub async fn dataset(&self, dataset_id: &str) -> Result<Option<DatasetRecord>> {
        with_pool!(self, |pool| {
            sqlx::query("SELECT * FROM dataset_crons WHERE dataset_id = $1")
                .bind(dataset_id)
                .fetch_optional(pool)
                .await?
                .as_ref()
                .map(dataset_from_row)
                .transpose()
        })
    }

    pub async fn datasets(&self) -> Result<Vec<DatasetRecord>> {
        with_pool!(self, |pool| {
            sqlx::query("SELECT * FROM dataset_crons ORDER BY dataset_id")
                .fetch_all(pool)
                .await?
                .iter()
                .map(dataset_from_row)
                .collect()
        })
    }

    /// Enabled, approved `timed_pull` datasets: what the scheduler fires. A row whose spec no
    /// longer parses is skipped with a warning rather than stopping every other schedule.
    pub async fn scheduled_datasets(&self) -> Result<Vec<DatasetRecord>> {
        let records: Vec<Result<DatasetRecord>> = with_pool!(self, |pool| {
            sqlx::query(
                "SELECT * FROM dataset_crons
                 WHERE enabled AND approved AND trigger_method = 'timed_pull' ORDER BY dataset_id",
            )
            .fetch_all(pool)
            .await?
            .iter()
            .map(dataset_from_row)
            .collect()
        });
        Ok(records
            .into_iter()
            .filter_map(|record| {
                record
                    .inspect_err(|e| tracing::warn!(error = %e, "dataset skipped by the scheduler"))
                    .ok()
            })
            .collect())
    }

    /// Records queued runs; a run id already present is left as it is.
    pub async fn insert_queued_runs(&self, jobs: &[ExtractionJob]) -> Result<()> {
        let now = Utc::now();
        // Slices keep each statement well under the databases' bound-parameter limits.
        for chunk in jobs.chunks(1000) {
            with_pool!(self, |pool| {
                let mut insert = sqlx::QueryBuilder::new(
                    "INSERT INTO dataset_runs (run_id, dataset_id, reason, scheduled_for, requested_by,
                         state, enqueued_at) ",
                );
                insert.push_values(chunk, |mut row, job| {
                    row.push_bind(&job.run_id)
                        .push_bind(&job.dataset_id)
                        .push_bind(job.reason.as_str())
                        .push_bind(job.scheduled_for)
                        .push_bind(&job.requested_by)
                        .push_bind("queued")
                        .push_bind(now);
                });
                insert.push(" ON CONFLICT (run_id) DO NOTHING");
                insert.build().execute(pool).await?;
            });
        }
        Ok(())
    }

    /// A worker took the run (again, after a crash or a retry): the row exists afterwards even if
    /// the enqueuer died before writing it.
    pub async fn run_started(&self, job: &ExtractionJob, worker: &str, attempt: i32) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO dataset_runs (run_id, dataset_id, reason, scheduled_for, requested_by, state,
                     attempts, started_at, worker, enqueued_at)
                 VALUES ($1, $2, $3, $4, $5, 'running', $6, $8, $7, $8)
                 ON CONFLICT (run_id) DO UPDATE SET state = 'running', attempts = $6,
                     started_at = COALESCE(dataset_runs.started_at, $8), worker = $7, error = NULL,
                     next_attempt_at = NULL, progress = NULL",
            )
            .bind(&job.run_id)
            .bind(&job.dataset_id)
            .bind(job.reason.as_str())
            .bind(job.scheduled_for)
            .bind(&job.requested_by)
            .bind(attempt)
            .bind(worker)
            .bind(Utc::now())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// A running attempt's progress (only while the run is running: a late write after its end
    /// changes nothing).
    pub async fn run_progress(&self, run_id: &str, progress: &RunProgress) -> Result<()> {
        // Plain numbers and a time: serialising cannot fail; if it ever did, no progress shows.
        let Ok(text) = serde_json::to_string(progress) else {
            return Ok(());
        };
        with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE dataset_runs SET progress = $2 WHERE run_id = $1 AND state = 'running'",
            )
            .bind(run_id)
            .bind(&text)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// An attempt failed and the job went back to the queue for attempt `attempts + 1` at
    /// `next_at` (of `max_attempts`); the error shows until the next attempt starts.
    pub async fn run_retrying(
        &self,
        run_id: &str,
        attempts: i32,
        max_attempts: i32,
        next_at: DateTime<Utc>,
        error: &str,
    ) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE dataset_runs SET state = 'retrying', attempts = $2, error = $3,
                     next_attempt_at = $4, max_attempts = $5, worker = NULL
                 WHERE run_id = $1",
            )
            .bind(run_id)
            .bind(attempts)
            .bind(error)
            .bind(next_at)
            .bind(max_attempts)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The dataset's oldest run still waiting in the queue for its first attempt.
    pub async fn queued_run(&self, dataset_id: &str) -> Result<Option<String>> {
        Ok(with_pool!(self, |pool| {
            sqlx::query_scalar(
                "SELECT run_id FROM dataset_runs WHERE dataset_id = $1 AND state = 'queued'
                 ORDER BY enqueued_at LIMIT 1",
            )
            .bind(dataset_id)
            .fetch_optional(pool)
            .await?
        }))
    }

    pub async fn run_finished(
        &self,
        run_id: &str,
        attempts: i32,
        result: &RunResult,
    ) -> Result<()> {
        let now = Utc::now();
        with_pool!(self, |pool| {
            finish_run_query!(run_id, attempts, result, now)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    pub async fn run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        let run = with_pool!(self, |pool| {
            sqlx::query("SELECT * FROM dataset_runs WHERE run_id = $1")
                .bind(run_id)
                .fetch_optional(pool)
                .await?
                .as_ref()
                .map(run_from_row)
                .transpose()?
        });
        Ok(run)
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

    /// Run history, newest first: a dataset (or a part of its id, any case), a state, and an
    /// enqueue-time window.
    pub async fn search_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        let pattern = filter
            .search
            .as_deref()
            .map(|s| format!("%{}%", escape_like(&s.to_lowercase())));
        let runs = with_pool!(self, |pool| {
            sqlx::query(
                "SELECT * FROM dataset_runs
                 WHERE ($1 IS NULL OR dataset_id = $1)
                   AND ($2 IS NULL OR state = $2)
                   AND ($3 IS NULL OR lower(dataset_id) LIKE $3 ESCAPE '\\')
                   AND ($4 IS NULL OR enqueued_at >= $4)
                   AND ($5 IS NULL OR enqueued_at < $5)
                 ORDER BY enqueued_at DESC, run_id DESC LIMIT $6",
            )
            .bind(&filter.dataset_id)
            .bind(&filter.state)
            .bind(&pattern)
            .bind(filter.since)
            .bind(filter.until)
            .bind(filter.limit)
            .fetch_all(pool)
            .await?
            .iter()
            .map(run_from_row)
            .collect::<sqlx::Result<_>>()?
        });
        Ok(runs)
    }

    /// Finished runs per minute and state over the last `minutes` minutes (the throughput chart).
    pub async fn throughput(&self, minutes: i64) -> Result<Vec<ThroughputPoint>> {
        let since = Utc::now() - chrono::Duration::minutes(minutes);
        let finished: Vec<(DateTime<Utc>, String, Option<i64>)> = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT finished_at, state, rows_written FROM dataset_runs WHERE finished_at >= $1",
            )
            .bind(since)
            .fetch_all(pool)
            .await?
        });
        let mut points = std::collections::BTreeMap::<(DateTime<Utc>, String), (i64, i64)>::new();
        for (at, state, rows) in finished {
            let minute = at
                .with_second(0)
                .and_then(|t| t.with_nanosecond(0))
                .unwrap_or(at);
            let point = points.entry((minute, state)).or_default();
            point.0 += 1;
            point.1 += rows.unwrap_or(0);
        }
        Ok(points
            .into_iter()
            .map(|((minute, state), (runs, rows_written))| ThroughputPoint {
                minute,
                state,
                runs,
                rows_written,
            })
            .collect())
    }

    /// When the oldest still-queued run was enqueued.
    pub async fn oldest_queued(&self) -> Result<Option<DateTime<Utc>>> {
        Ok(with_pool!(self, |pool| {
            sqlx::query_scalar(
                "SELECT enqueued_at FROM dataset_runs WHERE state = 'queued'
                 ORDER BY enqueued_at LIMIT 1",
            )
            .fetch_optional(pool)
            .await?
        }))
    }

    /// The last successful run of each dataset.
    pub async fn last_successes(&self) -> Result<Vec<(String, DateTime<Utc>)>> {
        Ok(with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT dataset_id, max(finished_at) AS at FROM dataset_runs
                 WHERE state = 'succeeded' GROUP BY dataset_id",
            )
            .fetch_all(pool)
            .await?
        }))
    }

    /// Ends a queued or running run by an operator's kill. False when it had already ended.
    pub async fn run_killed(&self, run_id: &str, by: &str) -> Result<bool> {
        let killed = with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE dataset_runs SET state = 'killed', finished_at = $3,
                     error = COALESCE(error || '; ', '') || 'killed by ' || $2
                 WHERE run_id = $1 AND state IN ('queued', 'running', 'retrying')",
            )
            .bind(run_id)
            .bind(by)
            .bind(Utc::now())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(killed == 1)
    }

    /// Records that `run_id` was retried as `new_run_id`.
    pub async fn run_retried_as(&self, run_id: &str, new_run_id: &str) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query("UPDATE dataset_runs SET retried_as = $2 WHERE run_id = $1")
                .bind(run_id)
                .bind(new_run_id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Removes a finished run from the history. False when it is not finished (or not there).
    pub async fn delete_run(&self, run_id: &str) -> Result<bool> {
        let deleted = with_pool!(self, |pool| {
            sqlx::query(
                "DELETE FROM dataset_runs
                 WHERE run_id = $1 AND state IN ('succeeded', 'failed', 'dead', 'killed')",
            )
            .bind(run_id)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(deleted == 1)
    }

    /// Creates an API token for `subject` with `role`; only its hash is stored.
    /// Claims a new connection id for `by`; `None` when the id is already in the store (two
    /// editors creating one id at once: one of them gets it).
    pub async fn create_connection(
        &self,
        connection_id: &str,
        kind: &str,
        hosts: &[String],
        fields: &[String],
        by: &str,
    ) -> Result<Option<ConnectionRecord>> {
        let now = Utc::now();
        with_pool!(self, |pool| {
            let row = sqlx::query(
                "INSERT INTO connections (connection_id, kind, hosts, fields, owner, updated_by,
                     created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $5, $6, $6)
                 ON CONFLICT (connection_id) DO NOTHING
                 RETURNING *",
            )
            .bind(connection_id)
            .bind(kind)
            .bind(sqlx::types::Json(hosts))
            .bind(sqlx::types::Json(fields))
            .bind(by)
            .bind(now)
            .fetch_optional(pool)
            .await?;
            Ok(row.as_ref().map(connection_from_row).transpose()?)
        })
    }

    /// Records a connection written to the store (the owner stays who created it).
    pub async fn upsert_connection(
        &self,
        connection_id: &str,
        kind: &str,
        hosts: &[String],
        fields: &[String],
        by: &str,
    ) -> Result<ConnectionRecord> {
        let now = Utc::now();
        with_pool!(self, |pool| {
            let row = sqlx::query(
                "INSERT INTO connections (connection_id, kind, hosts, fields, owner, updated_by,
                     created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $5, $6, $6)
                 ON CONFLICT (connection_id) DO UPDATE SET
                     kind = EXCLUDED.kind, hosts = EXCLUDED.hosts, fields = EXCLUDED.fields,
                     updated_by = EXCLUDED.updated_by, updated_at = EXCLUDED.updated_at
                 RETURNING *",
            )
            .bind(connection_id)
            .bind(kind)
            .bind(sqlx::types::Json(hosts))
            .bind(sqlx::types::Json(fields))
            .bind(by)
            .bind(now)
            .fetch_one(pool)
            .await?;
            Ok(connection_from_row(&row)?)
        })
    }

    pub async fn connection(&self, connection_id: &str) -> Result<Option<ConnectionRecord>> {
        with_pool!(self, |pool| {
            let row = sqlx::query("SELECT * FROM connections WHERE connection_id = $1")
                .bind(connection_id)
                .fetch_optional(pool)
                .await?;
            Ok(row.as_ref().map(connection_from_row).transpose()?)
        })
    }

    pub async fn connections(&self) -> Result<Vec<ConnectionRecord>> {
        with_pool!(self, |pool| {
            let rows = sqlx::query("SELECT * FROM connections ORDER BY connection_id")
                .fetch_all(pool)
                .await?;
            Ok(rows
                .iter()
                .map(connection_from_row)
                .collect::<sqlx::Result<_>>()?)
        })
    }

    pub async fn delete_connection(&self, connection_id: &str) -> Result<bool> {
        let deleted = with_pool!(self, |pool| {
            sqlx::query("DELETE FROM connections WHERE connection_id = $1")
                .bind(connection_id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(deleted > 0)
    }

    /// The datasets whose spec names `connection_id`.
    pub async fn datasets_using(&self, connection_id: &str) -> Result<Vec<String>> {
        with_pool!(self, |pool| {
            Ok(sqlx::query_scalar(
                "SELECT dataset_id FROM dataset_crons WHERE connection_id = $1 ORDER BY dataset_id",
            )
            .bind(connection_id)
            .fetch_all(pool)
            .await?)
        })
    }

    pub async fn create_token(&self, subject: &str, role: &str) -> Result<String> {
        let token = format!("carga_{}", hex::encode(rand::random::<[u8; 24]>()));
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO api_tokens (token_sha256, subject, role, created_at)
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(token_hash(&token))
            .bind(subject)
            .bind(role)
            .bind(Utc::now())
            .execute(pool)
            .await?;
        });
        Ok(token)
    }

    /// The subject and role of a live token.
    pub async fn token(&self, token: &str) -> Result<Option<(String, String)>> {
        Ok(with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT subject, role FROM api_tokens WHERE token_sha256 = $1 AND revoked_at IS NULL",
            )
            .bind(token_hash(token))
            .fetch_optional(pool)
            .await?
        }))
    }

    pub async fn audit(&self, entry: &AuditEntry) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO audit_log (subject, role, action, dataset_id, source_ip, result, detail, at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&entry.subject)
            .bind(&entry.role)
            .bind(&entry.action)
            .bind(&entry.dataset_id)
            .bind(&entry.source_ip)
            .bind(entry.result)
            .bind(&entry.detail)
            .bind(Utc::now())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    pub async fn audit_log(
        &self,
        dataset_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AuditRecord>> {
        let records = with_pool!(self, |pool| {
            sqlx::query(
                "SELECT * FROM audit_log WHERE ($1 IS NULL OR dataset_id = $1)
                 ORDER BY id DESC LIMIT $2",
            )
            .bind(dataset_id)
            .bind(limit)
            .fetch_all(pool)
            .await?
            .iter()
            .map(audit_from_row)
            .collect::<sqlx::Result<_>>()?
        });
        Ok(records)
    }
}

/// `dataset_crons.tables`: a text array on PostgreSQL, a JSON array on SQLite.
struct TableList<'a>(&'a [String]);

impl Type<Postgres> for TableList<'_> {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <Vec<String> as Type<Postgres>>::type_info()
    }
}

impl<'q> sqlx::Encode<'q, Postgres> for TableList<'_> {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> std::result::Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&[String] as sqlx::Encode<'q, Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl Type<Sqlite> for TableList<'_> {
    fn type_info() -> sqlx::sqlite::SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
}

impl<'q> sqlx::Encode<'q, Sqlite> for TableList<'_> {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::sqlite::SqliteArgumentsBuffer,
    ) -> std::result::Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        let json = serde_json::to_string(self.0)?;
        <String as sqlx::Encode<'q, Sqlite>>::encode(json, buf)
    }
}

/// `%`, `_` and `\` in a search stand for themselves.
fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A row of either catalog database with the column types the records are read from.
trait CatalogRow: Row
where
    for<'a> &'a str: ColumnIndex<Self>,
{
    fn text(&self, column: &str) -> sqlx::Result<String>;
    fn optional_text(&self, column: &str) -> sqlx::Result<Option<String>>;
    fn time(&self, column: &str) -> sqlx::Result<DateTime<Utc>>;
    fn optional_time(&self, column: &str) -> sqlx::Result<Option<DateTime<Utc>>>;
    fn integer(&self, column: &str) -> sqlx::Result<i64>;
    /// A 32-bit column (`INTEGER` on PostgreSQL).
    fn small_integer(&self, column: &str) -> sqlx::Result<i32>;
    fn optional_integer(&self, column: &str) -> sqlx::Result<Option<i64>>;
    fn optional_small_integer(&self, column: &str) -> sqlx::Result<Option<i32>>;
    fn flag(&self, column: &str) -> sqlx::Result<bool>;
    fn json(&self, column: &str) -> sqlx::Result<serde_json::Value>;
}

impl<R: Row> CatalogRow for R
where
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> DateTime<Utc>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i32: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> sqlx::types::Json<serde_json::Value>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&self, column: &str) -> sqlx::Result<String> {
        self.try_get(column)
    }
    fn optional_text(&self, column: &str) -> sqlx::Result<Option<String>> {
        self.try_get(column)
    }
    fn time(&self, column: &str) -> sqlx::Result<DateTime<Utc>> {
        self.try_get(column)
    }
    fn optional_time(&self, column: &str) -> sqlx::Result<Option<DateTime<Utc>>> {
        self.try_get(column)
    }
    fn integer(&self, column: &str) -> sqlx::Result<i64> {
        self.try_get(column)
    }
    fn small_integer(&self, column: &str) -> sqlx::Result<i32> {
        self.try_get(column)
    }
    fn optional_integer(&self, column: &str) -> sqlx::Result<Option<i64>> {
        self.try_get(column)
    }
    fn optional_small_integer(&self, column: &str) -> sqlx::Result<Option<i32>> {
        self.try_get(column)
    }
    fn flag(&self, column: &str) -> sqlx::Result<bool> {
        self.try_get(column)
    }
    fn json(&self, column: &str) -> sqlx::Result<serde_json::Value> {
        self.try_get::<sqlx::types::Json<serde_json::Value>, _>(column)
            .map(|json| json.0)
    }
}

fn dataset_from_row<R: CatalogRow>(row: &R) -> Result<DatasetRecord>
where
    for<'a> &'a str: ColumnIndex<R>,
{
    let dataset_id = row.text("dataset_id")?;
    let spec: DatasetSpec =
        serde_json::from_value(row.json("spec")?).map_err(|e| CatalogError::BadSpec {
            dataset: dataset_id.clone(),
            message: e.to_string(),
        })?;
    Ok(DatasetRecord {
        dataset_id,
        spec,
        enabled: row.flag("enabled")?,
        approved: row.flag("approved")?,
        approved_by: row.optional_text("approved_by")?,
        version: row.integer("version")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
        updated_by: row.text("updated_by")?,
    })
}

fn connection_from_row<R: CatalogRow>(row: &R) -> sqlx::Result<ConnectionRecord>
where
    for<'a> &'a str: ColumnIndex<R>,
{
    let names = |column: &str| -> sqlx::Result<Vec<String>> {
        serde_json::from_value(row.json(column)?).map_err(|e| sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: Box::new(e),
        })
    };
    Ok(ConnectionRecord {
        connection_id: row.text("connection_id")?,
        kind: row.text("kind")?,
        hosts: names("hosts")?,
        fields: names("fields")?,
        owner: row.text("owner")?,
        updated_by: row.text("updated_by")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}

fn run_from_row<R: CatalogRow>(row: &R) -> sqlx::Result<RunRecord>
where
    for<'a> &'a str: ColumnIndex<R>,
{
    Ok(RunRecord {
        run_id: row.text("run_id")?,
        dataset_id: row.text("dataset_id")?,
        reason: row.text("reason")?,
        scheduled_for: row.optional_time("scheduled_for")?,
        state: row.text("state")?,
        attempts: row.small_integer("attempts")?,
        enqueued_at: row.time("enqueued_at")?,
        started_at: row.optional_time("started_at")?,
        finished_at: row.optional_time("finished_at")?,
        worker: row.optional_text("worker")?,
        rows_written: row.optional_integer("rows_written")?,
        bytes_written: row.optional_integer("bytes_written")?,
        manifest_url: row.optional_text("manifest_url")?,
        report_url: row.optional_text("report_url")?,
        watermark_before: row.optional_text("watermark_before")?,
        watermark_after: row.optional_text("watermark_after")?,
        error: row.optional_text("error")?,
        requested_by: row.optional_text("requested_by")?,
        retried_as: row.optional_text("retried_as")?,
        next_attempt_at: row.optional_time("next_attempt_at")?,
        max_attempts: row.optional_small_integer("max_attempts")?,
        // Written by Carga only; a value that does not parse shows as no progress.
        progress: row
            .optional_text("progress")?
            .and_then(|text| serde_json::from_str(&text).ok()),
    })
}

fn audit_from_row<R: CatalogRow>(row: &R) -> sqlx::Result<AuditRecord>
where
    for<'a> &'a str: ColumnIndex<R>,
{
    Ok(AuditRecord {
        id: row.integer("id")?,
        at: row.time("at")?,
        entry: AuditEntry {
            subject: row.text("subject")?,
            role: row.optional_text("role")?,
            action: row.text("action")?,
            dataset_id: row.optional_text("dataset_id")?,
            source_ip: row.optional_text("source_ip")?,
            result: match row.text("result")?.as_str() {
                "ok" => "ok",
                "rejected" => "rejected",
                "denied" => "denied",
                _ => "error",
            },
            detail: row.optional_text("detail")?,
        },
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
        assert_eq!(spec.source.format_name(), "csv");
    }
}
