//! Carga's control plane: the PostgreSQL catalog, cron scheduling onto the Redis queue (apalis),
//! cluster-wide metrics and the HTTP API. Workers (`carga worker`) take the jobs this enqueues.

pub mod api;
pub mod catalog;
pub mod daemon;
pub mod job;
pub mod metrics;
pub mod queue;
pub mod schedule;

pub use catalog::Catalog;
pub use daemon::{Scheduler, SchedulerSettings};
pub use job::{ExtractionJob, RunReason};
pub use queue::{JobQueue, QueueSettings};
