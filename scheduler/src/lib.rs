//! Carga's control plane: the catalog (PostgreSQL; SQLite embedded), cron scheduling onto the job
//! queue (Redis through apalis; SQLite embedded) and cluster-wide metrics. The HTTP API and the
//! `carga-scheduler` service are in `carga-api`, so a worker does not link them.
//! Messages to RabbitMQ (`notify`) are sent from both: runs' ends by workers, uploads by the API.
//! Workers (`carga worker`, or `carga serve` in one process) take the jobs this enqueues.

pub mod catalog;
pub mod daemon;
pub mod job;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod queue;
pub mod schedule;
pub mod shutdown;

pub use catalog::Catalog;
pub use daemon::{Scheduler, SchedulerSettings};
pub use job::{ExtractionJob, RunReason};
pub use queue::{JobQueue, QueueSettings};
