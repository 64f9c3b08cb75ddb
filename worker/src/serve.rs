//! `carga serve`: the whole service in one process, with no servers to run — for a laptop, a
//! demo, or a small installation. The scheduler fires the crons, the HTTP API and dashboard take
//! triggers and configuration, and workers run the jobs, exactly as the production processes do;
//! the catalog and the queue are one SQLite file (`<state-dir>/carga.db`) instead of PostgreSQL
//! and Redis, and the bucket is the settings' bucket (a local folder by default).
//!
//! Stopping it (SIGTERM, Ctrl-C) stops taking jobs and lets the running ones finish; a process
//! killed mid-run leaves its job held, and the next start puts it back once the old heartbeats are
//! stale, so nothing is lost and nothing is committed twice (the manifest commit decides).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use carga_api::{self as api, ApiState};
use carga_config::{DatasetSpec, Settings};
use carga_jobs::Engine;
use carga_jobs::access::AccessPolicy;
use carga_jobs::secrets::SecretsProvider;
use carga_jobs::storage::Bucket;
use carga_scheduler::catalog::AuditEntry;
use carga_scheduler::metrics::Metrics;
use carga_scheduler::queue::SqliteQueue;
use carga_scheduler::relay::Relay;
use carga_scheduler::shutdown::Shutdown;
use carga_scheduler::{
    Catalog, ExtractionJob, JobQueue, QueueSettings, RunReason, Scheduler, SchedulerSettings,
};

use crate::queue_worker::Shared;
use crate::take_loop;
use crate::{JobArgs, default_worker_name};

/// Who the embedded mode's own changes are recorded as in the audit log.
const LOCAL_SUBJECT: &str = "carga-serve";

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Where the catalog and queue file (`carga.db`) and the admin token (`admin-token`) live.
    #[arg(long, env = "CARGA_STATE_DIR", default_value = ".carga")]
    state_dir: PathBuf,
    /// The API and dashboard address.
    #[arg(long, env = "CARGA_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Dataset specs loaded into the catalog at start, approved: YAML files or folders of them.
    /// A spec already in the catalog unchanged is left as it is.
    #[arg(long = "datasets", value_name = "PATH")]
    datasets: Vec<PathBuf>,
    /// RabbitMQ for the transformation message and notifications; none sent when absent.
    #[arg(long, env = "CARGA_AMQP_URL")]
    amqp_url: Option<String>,
    #[command(flatten)]
    jobs: JobArgs,
    /// A job held by a process whose heartbeats stopped this long (times the missed count) goes
    /// back to the queue.
    #[arg(long, default_value_t = 2.0)]
    heartbeat_seconds: f64,
    /// Seconds between catalog re-reads by the scheduler.
    #[arg(long, default_value_t = 5)]
    refresh_seconds: u64,
    /// Run each loaded dataset once at start when it has never run, instead of waiting for its
    /// cron or a trigger (so a demo shows output at once).
    #[arg(long, env = "CARGA_INITIAL_RUNS", default_value_t = true, action = clap::ArgAction::Set)]
    initial_runs: bool,
    #[command(flatten)]
    api: api::ApiArgs,
}

pub async fn serve(settings_path: Option<&Path>, args: ServeArgs) -> Result<()> {
    let settings = Settings::load(settings_path)?;
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating {}", args.state_dir.display()))?;
    let database = args.state_dir.join("carga.db");
    let catalog = Catalog::open_sqlite(&database)
        .await
        .with_context(|| format!("opening {}", database.display()))?;
    catalog.migrate().await.context("migrating the catalog")?;
    let pool = catalog
        .sqlite_pool()
        .expect("an embedded catalog is on SQLite")
        .clone();
    let queue = JobQueue::Embedded(SqliteQueue::new(
        pool,
        QueueSettings {
            name: "embedded".into(),
            heartbeat: Duration::from_secs_f64(args.heartbeat_seconds),
            missed_heartbeats: args.jobs.missed_heartbeats,
            ..QueueSettings::default()
        },
    ));
    let metrics = Metrics::new(queue.clone());
    let secrets = carga_jobs::secrets::provider(&settings).await;
    // Specs may read files only under the folders their specs were loaded from (or the roots the
    // settings name), never the state folder; no private networks unless the settings allow.
    let roots: Vec<PathBuf> = args
        .datasets
        .iter()
        .map(|p| {
            if p.is_dir() {
                p.clone()
            } else {
                p.parent().map(Path::to_owned).unwrap_or_default()
            }
        })
        .map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p
            }
        })
        .collect();
    let access = AccessPolicy::for_server(&settings, &roots, &[&args.state_dir]);
    let mut loaded = Vec::new();
    for path in &args.datasets {
        loaded.extend(load_datasets(&catalog, secrets.as_ref(), &access, path).await?);
    }
    if args.initial_runs {
        enqueue_initial_runs(&catalog, &queue, &loaded).await?;
    }
    let token = admin_token(&catalog, &args.state_dir).await?;

    let shutdown = Shutdown::on_signals();
    let mut tasks = tokio::task::JoinSet::new();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    // The workers' engine first: it creates the master key on a first start.
    let engine = Engine::from_settings(settings.clone())
        .await?
        .with_access(access.clone());
    let api_state = ApiState::new(
        catalog.clone(),
        queue.clone(),
        secrets,
        Bucket::open(&settings)?,
        access.clone(),
    )
    .with_engine(Engine::new(settings.clone())?.with_access(access.clone()));
    let api_state = Arc::new(args.api.apply(api_state).map_err(anyhow::Error::msg)?);
    let stopped = shutdown.wait();
    tasks.spawn(async move {
        if let Err(e) = api::serve(api_state, listener, stopped).await {
            tracing::error!(error = %e, "API stopped");
        }
        Ok(())
    });
    let scheduler = Scheduler::new(
        catalog.clone(),
        queue.clone(),
        SchedulerSettings {
            refresh: Duration::from_secs(args.refresh_seconds),
            ..SchedulerSettings::default()
        },
    );
    tasks.spawn({
        let stopped = shutdown.wait();
        async move {
            scheduler.run(stopped).await;
            Ok(())
        }
    });
    let bucket = settings.bucket.clone();
    let name = default_worker_name();
    // One relay for the process: the runs' and the uploads' messages, to RabbitMQ and webhooks.
    let relay = Relay::new(
        catalog.clone(),
        args.amqp_url
            .as_deref()
            .map(|url| Arc::new(carga_scheduler::notify::Notifier::new(url))),
        engine.secrets().clone(),
        access.network,
        carga_scheduler::relay::RelaySettings {
            // One process: without its broker there is none.
            no_broker_anywhere: args.amqp_url.is_none(),
            ..args.jobs.relay.settings(format!("{name}-relay"))
        },
    );
    tasks.spawn({
        let stopped = shutdown.wait();
        async move {
            relay.run(stopped).await;
            Ok(())
        }
    });
    let shared = Arc::new(Shared {
        engine,
        catalog,
        queue,
        metrics,
        settings: args.jobs.worker_settings(name),
        stopping: tokio::sync::watch::Sender::new(false),
    });
    tasks.spawn(take_loop::run(shared, shutdown.wait()));

    println!("carga is serving in this process (scheduler, API, workers):");
    println!(
        "  dashboard: http://{}/dashboard#token={token}",
        args.listen
    );
    println!(
        "  API:       http://{}  (Authorization: Bearer <token in {}>)",
        args.listen,
        args.state_dir.join("admin-token").display()
    );
    println!("  catalog and queue: {}", database.display());
    println!("  output:    {bucket}");
    println!("Ctrl-C stops it (running jobs finish first).");

    // A service task that fails ends the process (dropping the others; uncommitted runs leave
    // nothing visible) rather than leaving it half alive.
    while let Some(ended) = tasks.join_next().await {
        let failure = match ended {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(e) => anyhow::anyhow!("a service task ended abnormally: {e}"),
        };
        return Err(failure.context("carga serve stopped"));
    }
    println!("carga stopped");
    Ok(())
}

/// Loads the specs at `path` (a YAML file or a folder of them) into the catalog, approved, after
/// the checks the API makes, and returns their ids. Relative file locations are made absolute
/// (they are relative to the spec file) so the stored spec runs from any directory.
async fn load_datasets(
    catalog: &Catalog,
    secrets: &dyn SecretsProvider,
    access: &AccessPolicy,
    path: &Path,
) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_owned()]
    };
    for file in files {
        let absolute = std::fs::canonicalize(&file)
            .with_context(|| format!("dataset spec {}", file.display()))?;
        let spec = DatasetSpec::from_file(&absolute)?;
        api::check_spec(secrets, access, &spec)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        ids.push(spec.id.clone());
        let current = catalog.dataset(&spec.id).await?;
        if current
            .as_ref()
            .is_some_and(|r| r.spec == spec && r.approved)
        {
            continue;
        }
        catalog.upsert_dataset(&spec, LOCAL_SUBJECT, true).await?;
        catalog
            .audit(&AuditEntry {
                subject: LOCAL_SUBJECT.into(),
                role: Some("admin".into()),
                action: "load_dataset".into(),
                dataset_id: Some(spec.id.clone()),
                source_ip: None,
                result: "ok",
                detail: Some(absolute.display().to_string()),
            })
            .await?;
        println!("loaded dataset '{}' from {}", spec.id, file.display());
    }
    Ok(ids)
}

/// Queues one run of each dataset in `ids` that has no run at all yet (a first start, or a
/// dataset added since): the demo shows output without a trigger, and a restart runs nothing again.
async fn enqueue_initial_runs(catalog: &Catalog, queue: &JobQueue, ids: &[String]) -> Result<()> {
    for id in ids {
        if !catalog.runs(Some(id), None, 1).await?.is_empty() {
            continue;
        }
        let mut job = ExtractionJob::new(id, RunReason::Trigger);
        job.requested_by = Some(format!("{LOCAL_SUBJECT} (initial run)"));
        catalog
            .insert_queued_runs(std::slice::from_ref(&job))
            .await?;
        queue.enqueue(std::slice::from_ref(&job)).await?;
        tracing::info!(dataset = %id, run_id = %job.run_id, "initial run queued");
        println!("queued a first run of '{id}' (run {})", job.run_id);
    }
    Ok(())
}

/// The local admin's API token: the one in `<state-dir>/admin-token` while the catalog still
/// knows it, otherwise a new one written there (owner-readable only).
async fn admin_token(catalog: &Catalog, state_dir: &Path) -> Result<String> {
    let path = state_dir.join("admin-token");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim().to_owned();
        if catalog.token(&existing).await?.is_some() {
            return Ok(existing);
        }
    }
    let token = catalog.create_token("local-admin", "admin").await?;
    write_private(&path, &token).with_context(|| format!("writing {}", path.display()))?;
    Ok(token)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")
}
