//! Carga's control plane: the catalog (PostgreSQL; SQLite embedded), cron scheduling onto the job
//! queue (Redis through apalis; SQLite embedded) and cluster-wide metrics. The HTTP API and the
//! `carga-scheduler` service are in `carga-api`, so a worker does not link them.
//! Messages (RabbitMQ through `notify`, webhooks through `webhook`) are recorded in the catalog's
//! outbox with the run's end or the upload's validation, and sent by the outbox `relay` that every
//! worker and service process runs.
//! Workers (`carga worker`, or `carga serve` in one process) take the jobs this enqueues.

pub mod catalog;
pub mod daemon;
pub mod job;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod queue;
pub mod relay;
pub mod schedule;
pub mod shutdown;
pub mod webhook;

pub use catalog::Catalog;
pub use daemon::{Scheduler, SchedulerSettings};
pub use job::{ExtractionJob, RunReason};
pub use queue::{JobQueue, QueueSettings};
