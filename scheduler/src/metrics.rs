//! Cluster-wide counters kept with the queue (Redis hashes; the embedded mode's SQLite file), so
//! schedulers and every worker replica add to the same numbers and any API replica can serve
//! `/metrics` (Prometheus text format).

use std::collections::BTreeMap;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::catalog::OutboxCounts;
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

    /// The exposition (OpenMetrics text, which Prometheus scrapes) of the counters, the
    /// run-duration histogram, the queue and the outbox.
    pub async fn render(
        &self,
        queue: &QueueStats,
        outbox: &OutboxCounts,
    ) -> Result<String, QueueError> {
        let snapshot = Snapshot {
            counters: self.queue.counters(COUNTERS).await?.into_iter().collect(),
            durations: self.queue.counters(DURATION).await?.into_iter().collect(),
            sources: self.queue.counters(SOURCES).await?.into_iter().collect(),
            queue: queue.clone(),
            outbox: outbox.clone(),
        };
        let mut registry = Registry::with_prefix("carga");
        registry.register_collector(Box::new(snapshot));
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(%error, "metrics exposition failed part way");
        }
        Ok(out)
    }
}

/// The content type of `render`'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The cluster-wide numbers as read at one scrape, encoded by `prometheus-client` (names with
/// their unit and `_total`, types, help, label escaping, histogram buckets).
#[derive(Debug)]
struct Snapshot {
    counters: BTreeMap<String, f64>,
    /// The run-duration histogram, kept cumulative per bucket bound (`le`), with `+Inf`,
    /// `count` and `sum`.
    durations: BTreeMap<String, f64>,
    /// `rows:<format>` and `seconds:<format>`.
    sources: BTreeMap<String, f64>,
    queue: QueueStats,
    outbox: OutboxCounts,
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let bytes = Unit::Bytes;
        let seconds = Unit::Seconds;
        for counter in Counter::ALL {
            let value = self.counters.get(counter.name()).copied().unwrap_or(0.0);
            let (name, unit) = match counter {
                Counter::BytesWritten => ("written", Some(&bytes)),
                other => (other.name(), None),
            };
            encoder
                .encode_descriptor(name, counter.help(), unit, MetricType::Counter)?
                .encode_counter::<NoLabelSet, _, u64>(&(value as u64), None)?;
        }

        let cumulative = |key: &str| self.durations.get(key).copied().unwrap_or(0.0) as u64;
        let mut buckets = Vec::with_capacity(DURATION_BUCKETS.len() + 1);
        let mut below = 0;
        for bound in DURATION_BUCKETS {
            let upto = cumulative(&format!("{bound}"));
            buckets.push((bound, upto.saturating_sub(below)));
            below = upto;
        }
        buckets.push((f64::MAX, cumulative("+Inf").saturating_sub(below)));
        encoder
            .encode_descriptor(
                "run_duration",
                "Duration of extraction runs.",
                Some(&seconds),
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(
                self.durations.get("sum").copied().unwrap_or(0.0),
                cumulative("count"),
                &buckets,
                None,
            )?;

        let mut jobs = encoder.encode_descriptor(
            "queue_jobs",
            "Jobs in the queue by state.",
            None,
            MetricType::Gauge,
        )?;
        for (state, value) in [
            ("queued", self.queue.queued),
            ("scheduled", self.queue.scheduled),
            ("running", self.queue.running),
            ("dead", self.queue.dead),
        ] {
            jobs.encode_family(&[("state", state)])?
                .encode_gauge(&value)?;
        }
        encoder
            .encode_descriptor(
                "queue_workers",
                "Workers with a live heartbeat.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&self.queue.workers)?;
        encoder
            .encode_descriptor(
                "outbox_pending_messages",
                "Messages recorded and not yet confirmed by the broker.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&self.outbox.pending_messages)?;
        let mut deliveries = encoder.encode_descriptor(
            "webhook_deliveries",
            "Webhook deliveries kept in the log, by state (pending, delivered, failed).",
            None,
            MetricType::Gauge,
        )?;
        for (state, count) in &self.outbox.deliveries {
            deliveries
                .encode_family(&[("state", state.as_str())])?
                .encode_gauge(count)?;
        }

        let by_source = |prefix: &'static str| {
            self.sources
                .iter()
                .filter_map(move |(field, value)| Some((field.strip_prefix(prefix)?, *value)))
        };
        let mut rows = encoder.encode_descriptor(
            "source_rows",
            "Rows committed, by source format.",
            None,
            MetricType::Counter,
        )?;
        for (source, value) in by_source("rows:") {
            rows.encode_family(&[("source", source)])?
                .encode_counter::<NoLabelSet, _, u64>(&(value as u64), None)?;
        }
        let mut time = encoder.encode_descriptor(
            "source",
            "Seconds spent in committed runs, by source format.",
            Some(&seconds),
            MetricType::Counter,
        )?;
        for (source, value) in by_source("seconds:") {
            time.encode_family(&[("source", source)])?
                .encode_counter::<NoLabelSet, _, f64>(&value, None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(snapshot: Snapshot) -> String {
        let mut registry = Registry::with_prefix("carga");
        registry.register_collector(Box::new(snapshot));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn the_exposition_has_conventional_names_units_and_cumulative_buckets() {
        let map = |pairs: &[(&str, f64)]| -> BTreeMap<String, f64> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        // Two runs: 3 s and 100 s (the store keeps each bucket cumulative already).
        let text = exposition(Snapshot {
            counters: map(&[("jobs_enqueued", 2.0), ("bytes_written", 4096.0)]),
            durations: map(&[
                ("5", 1.0),
                ("15", 1.0),
                ("30", 1.0),
                ("60", 1.0),
                ("300", 2.0),
                ("900", 2.0),
                ("1800", 2.0),
                ("3600", 2.0),
                ("7200", 2.0),
                ("+Inf", 2.0),
                ("count", 2.0),
                ("sum", 103.0),
            ]),
            sources: map(&[("rows:csv", 500.0), ("seconds:csv", 1.5)]),
            queue: QueueStats {
                queued: 3,
                workers: 2,
                ..QueueStats::default()
            },
            outbox: OutboxCounts {
                pending_messages: 4,
                deliveries: vec![("delivered".into(), 7), ("failed".into(), 1)],
            },
        });
        for line in [
            "# TYPE carga_jobs_enqueued counter",
            "carga_jobs_enqueued_total 2",
            "carga_jobs_dead_total 0",
            "# UNIT carga_written_bytes bytes",
            "carga_written_bytes_total 4096",
            "# TYPE carga_run_duration_seconds histogram",
            "carga_run_duration_seconds_bucket{le=\"1.0\"} 0",
            "carga_run_duration_seconds_bucket{le=\"5.0\"} 1",
            "carga_run_duration_seconds_bucket{le=\"300.0\"} 2",
            "carga_run_duration_seconds_bucket{le=\"+Inf\"} 2",
            "carga_run_duration_seconds_count 2",
            "carga_run_duration_seconds_sum 103.0",
            "carga_queue_jobs{state=\"queued\"} 3",
            "carga_queue_jobs{state=\"dead\"} 0",
            "carga_queue_workers 2",
            "carga_source_rows_total{source=\"csv\"} 500",
            "carga_source_seconds_total{source=\"csv\"} 1.5",
            "carga_outbox_pending_messages 4",
            "carga_webhook_deliveries{state=\"delivered\"} 7",
            "carga_webhook_deliveries{state=\"failed\"} 1",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
    }
}
