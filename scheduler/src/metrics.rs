//! Cluster-wide counters kept with the queue (Redis hashes; the embedded mode's SQLite file), so
//! schedulers and every worker replica add to the same numbers and any API replica can serve
//! `/metrics` (Prometheus text format).

use crate::queue::{JobQueue, QueueError, QueueStats};

const COUNTERS: &str = "metrics:counters";
const DURATION: &str = "metrics:run_duration";
/// Rows and extraction seconds per source format (`rows:csv`, `seconds:postgres`, ...).
const SOURCES: &str = "metrics:sources";
/// Upper bounds (seconds) of the run-duration histogram buckets.
pub const DURATION_BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0,
];

/// The counters, by name; each is exported as `carga_<name>_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    JobsEnqueued,
    JobsStarted,
    JobsSucceeded,
    JobsFailed,
    JobsRetried,
    JobsDead,
    RowsWritten,
    BytesWritten,
}

impl Counter {
    const ALL: [Counter; 8] = [
        Counter::JobsEnqueued,
        Counter::JobsStarted,
        Counter::JobsSucceeded,
        Counter::JobsFailed,
        Counter::JobsRetried,
        Counter::JobsDead,
        Counter::RowsWritten,
        Counter::BytesWritten,
    ];

    fn name(self) -> &'static str {
        match self {
            Counter::JobsEnqueued => "jobs_enqueued",
            Counter::JobsStarted => "jobs_started",
            Counter::JobsSucceeded => "jobs_succeeded",
            Counter::JobsFailed => "jobs_failed",
            Counter::JobsRetried => "jobs_retried",
            Counter::JobsDead => "jobs_dead",
            Counter::RowsWritten => "rows_written",
            Counter::BytesWritten => "bytes_written",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Counter::JobsEnqueued => "Extraction jobs put on the queue (scheduled and on demand).",
            Counter::JobsStarted => "Extraction attempts started by workers.",
            Counter::JobsSucceeded => "Runs committed.",
            Counter::JobsFailed => "Runs that ended without a commit.",
            Counter::JobsRetried => "Attempts that failed and were retried.",
            Counter::JobsDead => "Jobs moved to the dead set.",
            Counter::RowsWritten => "Rows committed to the raw zone.",
            Counter::BytesWritten => "Parquet bytes committed to the raw zone.",
        }
    }
}

#[derive(Clone)]
pub struct Metrics {
    queue: JobQueue,
}

impl Metrics {
    /// Counters kept where the queue keeps its state (Redis, or the embedded SQLite file).
    pub fn new(queue: JobQueue) -> Self {
        Self { queue }
    }

    /// Adds to counters of a group; a metrics write that fails is logged, never fails a run.
    async fn add_all(&self, group: &str, adds: &[(String, f64)]) {
        if let Err(e) = self.queue.add_counters(group, adds).await {
            tracing::warn!(error = %e, group, "metrics update failed");
        }
    }

    pub async fn add(&self, counter: Counter, by: u64) {
        self.add_all(COUNTERS, &[(counter.name().to_owned(), by as f64)])
            .await;
    }

    /// Rows a committed run wrote and the seconds it took, by source format: the dashboard's
    /// rows per second per source is `rate(rows) / rate(seconds)`.
    pub async fn add_source_run(&self, source: &str, rows: u64, seconds: f64) {
        self.add_all(
            SOURCES,
            &[
                (format!("rows:{source}"), rows as f64),
                (format!("seconds:{source}"), seconds),
            ],
        )
        .await;
    }

    pub async fn observe_run_duration(&self, seconds: f64) {
        let mut adds: Vec<(String, f64)> = DURATION_BUCKETS
            .iter()
            .filter(|bound| seconds <= **bound)
            .map(|bound| (format!("{bound}"), 1.0))
            .collect();
        adds.extend([
            ("+Inf".to_owned(), 1.0),
            ("count".to_owned(), 1.0),
            ("sum".to_owned(), seconds),
        ]);
        self.add_all(DURATION, &adds).await;
    }

    /// The Prometheus exposition of the counters, the run-duration histogram and the queue.
    pub async fn render(&self, queue: &QueueStats) -> Result<String, QueueError> {
        let counters = self.queue.counters(COUNTERS).await?;
        let durations = self.queue.counters(DURATION).await?;
        let sources: std::collections::BTreeMap<String, f64> =
            self.queue.counters(SOURCES).await?.into_iter().collect();
        let mut out = String::new();
        for counter in Counter::ALL {
            let name = format!("carga_{}_total", counter.name());
            let value = counters.get(counter.name()).copied().unwrap_or(0.0);
            out.push_str(&format!(
                "# HELP {name} {}\n# TYPE {name} counter\n{name} {value}\n",
                counter.help()
            ));
        }
        out.push_str("# HELP carga_run_duration_seconds Duration of extraction runs.\n");
        out.push_str("# TYPE carga_run_duration_seconds histogram\n");
        for bound in DURATION_BUCKETS {
            let value = durations.get(&format!("{bound}")).copied().unwrap_or(0.0);
            out.push_str(&format!(
                "carga_run_duration_seconds_bucket{{le=\"{bound}\"}} {value}\n"
            ));
        }
        let get = |k: &str| durations.get(k).copied().unwrap_or(0.0);
        out.push_str(&format!(
            "carga_run_duration_seconds_bucket{{le=\"+Inf\"}} {}\ncarga_run_duration_seconds_sum {}\ncarga_run_duration_seconds_count {}\n",
            get("+Inf"),
            get("sum"),
            get("count")
        ));
        out.push_str(
            "# HELP carga_queue_jobs Jobs in the queue by state.\n# TYPE carga_queue_jobs gauge\n",
        );
        for (state, value) in [
            ("queued", queue.queued),
            ("scheduled", queue.scheduled),
            ("running", queue.running),
            ("dead", queue.dead),
        ] {
            out.push_str(&format!("carga_queue_jobs{{state=\"{state}\"}} {value}\n"));
        }
        for (metric, prefix, help) in [
            (
                "carga_source_rows_total",
                "rows:",
                "Rows committed, by source format.",
            ),
            (
                "carga_source_seconds_total",
                "seconds:",
                "Seconds spent in committed runs, by source format.",
            ),
        ] {
            out.push_str(&format!(
                "# HELP {metric} {help}\n# TYPE {metric} counter\n"
            ));
            for (field, value) in &sources {
                if let Some(source) = field.strip_prefix(prefix) {
                    out.push_str(&format!("{metric}{{source=\"{source}\"}} {value}\n"));
                }
            }
        }
        out.push_str("# HELP carga_queue_workers Workers with a live heartbeat.\n# TYPE carga_queue_workers gauge\n");
        out.push_str(&format!("carga_queue_workers {}\n", queue.workers));
        Ok(out)
    }
}
