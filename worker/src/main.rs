//! `carga`: runs extraction jobs: one-shot on this machine (`carga run`), as a queue worker
//! (`carga worker`), or the whole service in one process (`carga serve`); reads committed data back
//! (`carga read`), tests connections (`carga preview`), lists databases' tables (`carga discover`)
//! and creates and rotates master keys (`carga keygen`, `carga keys rotate`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod chunk_job;
mod drill;
mod health;
mod heap;
mod lock;
mod queue_worker;
mod run_progress;
#[cfg(feature = "serve")]
mod serve;
mod sql_command;
mod take_loop;

use anyhow::Result;
use carga_config::{DatasetSpec, Settings, SourceFormat};
use carga_jobs::Engine;
use carga_jobs::access::AccessPolicy;
use carga_jobs::encryption::MasterKeyring;
use carga_jobs::secrets;
use carga_jobs::sources::SourceRegistry;
use clap::{Parser, Subcommand};

/// `carga --version`: the release and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CARGA_COMMIT"),
    ")"
);

/// Exit codes (documented in the README and `carga --help`).
const EXIT_RUN_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "carga",
    version = VERSION,
    about = "Carga: ingest datasets into an encrypted Parquet raw zone",
    after_help = "Exit codes: 0 success; 1 the work failed (a run, a query, a connection); 2 usage or configuration error (flags, settings, a dataset spec)."
)]
struct Cli {
    /// Settings file (YAML); CARGA_* environment variables override it. Defaults: local folder
    /// `.carga/bucket` as the bucket and `.carga/master-keys.json` as the key file.
    #[arg(long, global = true, env = "CARGA_SETTINGS")]
    settings: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one extraction end to end and commit it.
    Run {
        /// Dataset spec (YAML).
        #[arg(long)]
        dataset: PathBuf,
    },
    /// Print the committed rows of a dataset (latest snapshot plus later deltas), decrypted.
    Read {
        /// Dataset spec (YAML) or dataset id.
        #[arg(long)]
        dataset: String,
        /// Rows to print at most.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Query what was ingested: read-only SQL over every committed dataset (decrypted), each a
    /// table of exactly its live files, plus `<dataset>__history` and `<dataset>__current`.
    Sql(sql_command::SqlArgs),
    /// Test a dataset's connection: read the first page or batch of its source with its
    /// credentials and print the schema Carga would write and a few rows, as JSON. Writes nothing.
    Preview {
        /// Dataset spec (YAML).
        #[arg(long)]
        dataset: PathBuf,
        /// Rows to show at most.
        #[arg(long, default_value_t = 10)]
        rows: usize,
    },
    /// Check a dataset spec without running it.
    Check {
        /// Dataset spec (YAML).
        #[arg(long)]
        dataset: PathBuf,
    },
    /// List the tables of a database connection: columns, the type Carga writes, primary keys.
    Discover {
        /// Connection id in the secrets provider.
        #[arg(long)]
        connection: String,
        /// postgres, mysql, mariadb, mssql or mongodb.
        #[arg(long)]
        format: String,
        /// Only this schema (PostgreSQL) or database (MySQL).
        #[arg(long)]
        schema: Option<String>,
        /// Print JSON instead of a listing.
        #[arg(long)]
        json: bool,
    },
    /// Take extraction jobs from the Redis queue until SIGTERM (then finish the running ones).
    Worker(WorkerArgs),
    /// Run the whole service in this process with no servers: the scheduler, the HTTP API and
    /// dashboard, and workers, with the catalog and the queue in a SQLite file beside the local
    /// bucket. Until SIGTERM or Ctrl-C.
    #[cfg(feature = "serve")]
    Serve(serve::ServeArgs),
    /// Exit non-zero unless a worker wrote its liveness file (`--health-file`) recently: the
    /// worker's liveness probe.
    Health {
        /// The liveness file the worker writes (`carga worker --health-file`).
        #[arg(long, env = "CARGA_HEALTH_FILE")]
        file: PathBuf,
        /// Older than this is a stuck worker.
        #[arg(long, default_value_t = 120)]
        max_age_seconds: u64,
    },
    /// Create a master key file with one new random 256-bit key.
    Keygen {
        /// The key file to create (never overwritten).
        #[arg(long)]
        key_file: PathBuf,
        /// The new key's id, which every file it wraps names.
        #[arg(long, default_value = "carga-master")]
        key_id: String,
    },
    /// Manage master keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout: `carga man > carga.1`.
    Man,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Add a new random key to the settings' key file and make it current: new files use it,
    /// files written before keep reading with the key that wrapped them.
    Rotate {
        /// The new key's id (default: carga-master-<UTC date and time>).
        #[arg(long)]
        key_id: Option<String>,
    },
}

#[derive(clap::Args)]
struct WorkerArgs {
    /// This worker's name in the queue (unique per process; default: host-pid).
    #[arg(long, env = "CARGA_WORKER_NAME")]
    name: Option<String>,
    /// PostgreSQL catalog (run history).
    #[arg(
        long,
        env = "CARGA_CATALOG_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    catalog_url: String,
    /// Redis holding the queue, the locks and the counters.
    #[arg(
        long,
        env = "CARGA_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
    /// Queue name (the prefix of its Redis keys).
    #[arg(long, env = "CARGA_QUEUE", default_value = "carga:extractions")]
    queue: String,
    /// RabbitMQ for the transformation message and notifications; none sent when absent.
    #[arg(long, env = "CARGA_AMQP_URL")]
    amqp_url: Option<String>,
    #[command(flatten)]
    jobs: JobArgs,
    /// Seconds between heartbeats (a worker silent for `--missed-heartbeats` of them is
    /// presumed dead and its jobs handed to others).
    #[arg(long, env = "CARGA_HEARTBEAT_SECONDS", default_value_t = 10.0)]
    heartbeat_seconds: f64,
}

/// How a process runs the jobs it takes (`carga worker` and `carga serve`).
#[derive(clap::Args)]
struct JobArgs {
    /// Jobs run at once by this process.
    #[arg(long, env = "CARGA_WORKER_CONCURRENCY", default_value_t = 2)]
    concurrency: usize,
    /// Attempts per job before it goes to the dead set.
    #[arg(long, env = "CARGA_MAX_ATTEMPTS", default_value_t = 5)]
    max_attempts: u32,
    /// Wait before the second attempt; doubles for each later one.
    #[arg(long, env = "CARGA_BACKOFF_SECONDS", default_value_t = 30.0)]
    backoff_seconds: f64,
    /// The longest wait between attempts.
    #[arg(long, env = "CARGA_MAX_BACKOFF_SECONDS", default_value_t = 1800.0)]
    max_backoff_seconds: f64,
    /// Missed heartbeats after which a worker's jobs are handed to others.
    #[arg(long, env = "CARGA_MISSED_HEARTBEATS", default_value_t = 3)]
    missed_heartbeats: usize,
    /// TTL of the per-dataset lock (renewed at a third of it while a run lasts).
    #[arg(long, env = "CARGA_LOCK_TTL_SECONDS", default_value_t = 60.0)]
    lock_ttl_seconds: f64,
    /// How long a job waits for another run of its dataset before going back to the queue.
    #[arg(long, env = "CARGA_LOCK_WAIT_SECONDS", default_value_t = 30.0)]
    lock_wait_seconds: f64,
    /// Write the time here on every heartbeat round, for `carga health` (a liveness probe).
    #[arg(long, env = "CARGA_HEALTH_FILE")]
    health_file: Option<PathBuf>,
    /// Seconds between writes of a running job's progress (rows, rate, percentage) to the catalog.
    #[arg(long, env = "CARGA_PROGRESS_SECONDS", default_value_t = 3.0)]
    progress_seconds: f64,
    #[command(flatten)]
    relay: carga_scheduler::relay::RelayArgs,
}

impl JobArgs {
    fn worker_settings(&self, name: String) -> queue_worker::WorkerSettings {
        use std::time::Duration;
        queue_worker::WorkerSettings {
            name,
            concurrency: self.concurrency.max(1),
            retry: queue_worker::RetryPolicy {
                max_attempts: self.max_attempts.max(1),
                first_backoff: Duration::from_secs_f64(self.backoff_seconds),
                max_backoff: Duration::from_secs_f64(self.max_backoff_seconds),
            },
            lock_ttl: Duration::from_secs_f64(self.lock_ttl_seconds),
            lock_wait: Duration::from_secs_f64(self.lock_wait_seconds),
            liveness: health::Liveness::new(self.health_file.clone()),
            progress_every: Duration::from_secs_f64(self.progress_seconds.max(0.1)),
        }
    }
}

/// `host-pid`: unique per process, and tells an operator where the worker runs.
fn default_worker_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "worker".into());
    format!("{}-{}", host.trim(), std::process::id())
}

fn main() -> ExitCode {
    heap::keep_heap_small();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
        .block_on(carga())
}

async fn carga() -> ExitCode {
    let cli = Cli::parse();
    carga_scheduler::logging::init(default_log_filter(&cli.command));
    match dispatch(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// What is logged without `RUST_LOG`: the services say what each run did (taken, committed,
/// failed) from Carga's own modules; one-shot commands print their result and log only problems.
fn default_log_filter(command: &Command) -> &'static str {
    match command {
        Command::Worker(_) => SERVICE_LOG_FILTER,
        #[cfg(feature = "serve")]
        Command::Serve(_) => SERVICE_LOG_FILTER,
        _ => "warn",
    }
}

const SERVICE_LOG_FILTER: &str =
    "warn,carga=info,carga_jobs=info,carga_scheduler=info,carga_api=info";

/// 2 when the settings, a spec or a flag's value is wrong (nothing ran); 1 when the work failed.
fn exit_code(error: &anyhow::Error) -> u8 {
    let misconfigured = error.chain().any(|cause| {
        cause.downcast_ref::<carga_config::ConfigError>().is_some()
            || cause
                .downcast_ref::<carga_jobs::JobError>()
                .is_some_and(|e| matches!(e, carga_jobs::JobError::Config(_)))
            || cause.downcast_ref::<UsageError>().is_some()
    });
    if misconfigured {
        EXIT_USAGE
    } else {
        EXIT_RUN_FAILED
    }
}

/// A flag's value clap could not check (an unknown format, a missing file): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

/// An error and its causes, each said once: a cause whose text the message already holds (as
/// `cannot read x: No such file` holds its io error) is not repeated.
fn describe(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

/// A reader that stopped reading (`carga read | head`) is not an error.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

async fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run { dataset } => run(cli.settings.as_deref(), &dataset).await,
        Command::Read { dataset, limit } => {
            read_back(cli.settings.as_deref(), &dataset, limit).await
        }
        Command::Sql(args) => sql_command::sql(cli.settings.as_deref(), args).await,
        Command::Preview { dataset, rows } => {
            let settings = Settings::load(cli.settings.as_deref())?;
            let secrets = carga_jobs::secrets::provider(&settings).await;
            let spec = DatasetSpec::from_file(&dataset)?;
            let policy = AccessPolicy::for_command(&settings, Some(&dataset));
            let preview =
                carga_jobs::preview::preview(&spec, &policy, secrets.as_ref(), rows).await?;
            println!("{}", serde_json::to_string_pretty(&preview)?);
            Ok(())
        }
        Command::Check { dataset } => {
            let spec = load_spec(&dataset)?;
            println!(
                "{}: dataset '{}' is valid ({:?}, {:?})",
                dataset.display(),
                spec.id,
                spec.mode,
                spec.trigger
            );
            Ok(())
        }
        Command::Discover {
            connection,
            format,
            schema,
            json,
        } => {
            discover(
                cli.settings.as_deref(),
                &connection,
                &format,
                schema.as_deref(),
                json,
            )
            .await
        }
        Command::Worker(args) => worker(cli.settings.as_deref(), args).await,
        #[cfg(feature = "serve")]
        Command::Serve(args) => serve::serve(cli.settings.as_deref(), args).await,
        Command::Health {
            file,
            max_age_seconds,
        } => health::check(&file, std::time::Duration::from_secs(max_age_seconds)),
        Command::Keys {
            command: KeysCommand::Rotate { key_id },
        } => rotate_keys(cli.settings.as_deref(), key_id),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "carga", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command).render(&mut std::io::stdout())?;
            Ok(())
        }
        Command::Keygen { key_file, key_id } => {
            anyhow::ensure!(
                !key_file.exists(),
                "{} already exists; not overwriting a key file",
                key_file.display()
            );
            MasterKeyring::create_file(&key_file, &key_id)?;
            println!(
                "created {} with master key '{key_id}' (owner-readable only); back it up",
                key_file.display()
            );
            Ok(())
        }
    }
}

/// `carga keys rotate`: a new current key in the key file. A KMS key rotates in KMS.
fn rotate_keys(settings_path: Option<&Path>, key_id: Option<String>) -> Result<()> {
    let settings = Settings::load(settings_path)?;
    if let Some(kms_key) = settings
        .master_key_id
        .strip_prefix(carga_jobs::encryption::KMS_SCHEME)
    {
        anyhow::bail!(
            "the master key is in AWS KMS ('{kms_key}'): KMS rotates its material itself \
             (aws kms enable-key-rotation --key-id {kms_key}) and old files keep reading; to move \
             to another KMS key set master_key_id to kms://<new key> (files name the key that \
             wrapped them, so older files stay readable while that key exists)"
        );
    }
    let key_id = key_id.unwrap_or_else(|| {
        format!(
            "carga-master-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
        )
    });
    MasterKeyring::rotate_file(&settings.key_file, &key_id)?;
    println!(
        "{}: '{key_id}' is now the current master key; files written before keep reading with \
         their own key (keep every key in the file)",
        settings.key_file.display()
    );
    Ok(())
}

async fn run(settings_path: Option<&Path>, spec_path: &Path) -> Result<()> {
    let settings = Settings::load(settings_path)?;
    let key_file = settings.key_file.clone();
    let policy = AccessPolicy::for_command(&settings, Some(spec_path));
    let engine = Engine::from_settings(settings).await?.with_access(policy);
    let tables = load_spec(spec_path)?.per_table();
    let progress_every = progress_every();
    // One table: its error is the command's error (one line).
    if let [spec] = tables.as_slice() {
        let outcome = run_progress::run(&engine, spec, progress_every)
            .await
            .map_err(|e| anyhow::anyhow!("dataset '{}' was not committed: {e}", spec.id))?;
        print_outcome(&outcome, spec_path, spec, &key_file);
        return Ok(());
    }
    // A multi-table dataset runs table by table; one table's failure does not stop the others.
    let mut failed = Vec::new();
    for spec in &tables {
        match run_progress::run(&engine, spec, progress_every).await {
            Ok(outcome) => print_outcome(&outcome, spec_path, spec, &key_file),
            Err(e) => {
                eprintln!("error: dataset '{}' was not committed: {e}", spec.id);
                failed.push(spec.id.clone());
            }
        }
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "{} of {} tables not committed: {}",
            failed.len(),
            tables.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// How often `carga run` prints a progress line when stderr is not a terminal
/// (`CARGA_PROGRESS_SECONDS`, 5 by default).
fn progress_every() -> std::time::Duration {
    let seconds = std::env::var("CARGA_PROGRESS_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(5.0);
    std::time::Duration::from_secs_f64(seconds.max(0.05))
}

/// A spec file with every check the scheduler makes: its own rules, and a cron and time zone
/// the scheduler accepts (one cron validation for every entry point).
fn load_spec(path: &Path) -> Result<DatasetSpec> {
    let spec = DatasetSpec::from_file(path)?;
    carga_jobs::sources::SourceRegistry::default()
        .check_format(&spec)
        .map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
    if spec.trigger == carga_config::Trigger::TimedPull || spec.time_zone.is_some() {
        let cron = spec.cron.as_deref().unwrap_or("0 0 * * *");
        carga_scheduler::schedule::CronSchedule::parse(cron, spec.time_zone.as_deref())
            .map_err(|e| UsageError(format!("{}: dataset '{}': {e}", path.display(), spec.id)))?;
    }
    Ok(spec)
}

fn print_outcome(
    outcome: &carga_jobs::RunOutcome,
    spec_path: &Path,
    spec: &DatasetSpec,
    key_file: &Path,
) {
    let manifest = &outcome.manifest;
    let report = &outcome.report;
    println!(
        "committed run {} of dataset '{}' ({:?}, manifest #{})",
        manifest.run_id, manifest.dataset, manifest.mode, manifest.sequence
    );
    println!(
        "  rows:     {} written ({} read, {} rejected, {} empty)",
        manifest.rows, report.rows_read, report.rejected_rows, report.empty_rows
    );
    if manifest.files.is_empty() {
        println!("  data:     no new rows, no files written");
    } else {
        let master_key_id = &manifest.encryption.master_key_id;
        let held_in = if master_key_id.starts_with(carga_jobs::encryption::KMS_SCHEME) {
            "AWS KMS".to_owned()
        } else {
            key_file.display().to_string()
        };
        println!(
            "  data:     {}/ ({} encrypted Parquet file(s), {} bytes, master key '{master_key_id}' in {held_in})",
            outcome.data_url,
            manifest.files.len(),
            manifest.bytes,
        );
    }
    println!("  manifest: {}", outcome.manifest_url);
    println!("  report:   {}", outcome.report_url);
    if let Some(to) = manifest.watermark.as_ref().and_then(|w| w.to.as_ref()) {
        let shown: Vec<String> = to
            .columns
            .iter()
            .map(|c| format!("{c}={}", to.values.get(c).map_or("", String::as_str)))
            .collect();
        println!("  watermark: {}", shown.join(", "));
    }
    for change in &report.schema_changes {
        println!("  schema:   {change}");
    }
    for warning in &report.warnings {
        println!("  warning:  {warning}");
    }
    if spec.id.contains('/') {
        println!("read it back: carga read --dataset {}", spec.id);
    } else {
        println!("read it back: carga read --dataset {}", spec_path.display());
    }
}

async fn read_back(settings_path: Option<&Path>, dataset: &str, limit: usize) -> Result<()> {
    let settings = Settings::load(settings_path)?;
    let id = if dataset.ends_with(".yaml") || dataset.ends_with(".yml") {
        let spec = DatasetSpec::from_file(Path::new(dataset))?;
        if !spec.source.tables().is_empty() {
            let ids: Vec<String> = spec.per_table().into_iter().map(|s| s.id).collect();
            anyhow::bail!(
                "{dataset} pulls {} tables; read one of them by id: {}",
                ids.len(),
                ids.join(", ")
            );
        }
        spec.id
    } else {
        dataset.to_owned()
    };
    // Before the key: a dataset never committed has nothing to decrypt.
    let bucket = carga_jobs::storage::Bucket::open(&settings)?;
    if carga_jobs::manifest::ManifestLog::new(&bucket, &id)
        .latest()
        .await?
        .is_none()
    {
        anyhow::bail!(
            "dataset '{id}' has no committed run yet in {} (run it first: carga run --dataset <spec>)",
            settings.bucket
        );
    }
    // The dataset as it stands, through the same SQL `carga sql` runs.
    let engine = sql_command::engine(settings_path)?;
    let query = format!("SELECT * FROM \"{}\"", id.replace('"', "\"\""));
    sql_command::print(
        &engine,
        &query,
        sql_command::Format::Table,
        None,
        Some(limit),
    )
    .await
}

async fn discover(
    settings_path: Option<&Path>,
    connection: &str,
    format: &str,
    schema: Option<&str>,
    json: bool,
) -> Result<()> {
    let settings = Settings::load(settings_path)?;
    // The source of the format lists its tables; one that reads files or an API has none.
    let sources = SourceRegistry::default();
    if SourceFormat::from_name(format).is_none() {
        return Err(UsageError(format!(
            "--format '{format}' is not a source format (formats: {})",
            sources.formats().join(", ")
        ))
        .into());
    }
    let secret = secrets::provider(&settings)
        .await
        .connection(connection)
        .await?;
    let tables = sources.discover(format, &secret, schema).await?;
    // Written with `writeln!` so that a closed pipe (`| head`) ends the listing quietly.
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&tables)?)?;
        return Ok(());
    }
    for table in &tables {
        let rows = table
            .estimated_rows
            .map(|r| format!(", ~{r} rows"))
            .unwrap_or_default();
        let key = if table.primary_key.is_empty() {
            "none".to_owned()
        } else {
            table.primary_key.join(", ")
        };
        writeln!(
            out,
            "{}.{} ({}{rows}; primary key: {key})",
            table.schema, table.name, table.kind
        )?;
        for column in &table.columns {
            writeln!(
                out,
                "  {:<30} {:<32} -> {}",
                column.name, column.declared, column.arrow
            )?;
        }
    }
    writeln!(out, "{} table(s)", tables.len())?;
    Ok(())
}

async fn worker(settings_path: Option<&Path>, args: WorkerArgs) -> Result<()> {
    use carga_scheduler::notify::Notifier;
    use carga_scheduler::relay::Relay;
    use carga_scheduler::shutdown::Shutdown;
    use carga_scheduler::{Catalog, JobQueue, QueueSettings};
    use std::time::Duration;

    let settings = Settings::load(settings_path)?;
    // A worker runs specs editors wrote: only the roots and networks the settings open.
    let policy = AccessPolicy::for_server(&settings, &[], &[]);
    let engine = Engine::from_settings(settings).await?.with_access(policy);
    let catalog = Catalog::connect(&args.catalog_url).await?;
    catalog.migrate().await?;
    let queue = JobQueue::connect(&QueueSettings {
        redis_url: args.redis_url.clone(),
        name: args.queue.clone(),
        heartbeat: Duration::from_secs_f64(args.heartbeat_seconds),
        missed_heartbeats: args.jobs.missed_heartbeats,
        ..QueueSettings::default()
    })
    .await?;
    let name = args.name.unwrap_or_else(default_worker_name);
    let shutdown = Shutdown::on_signals();
    // The messages of the runs this worker ends (and any other process's left pending).
    let relay = Relay::new(
        catalog.clone(),
        args.amqp_url
            .as_deref()
            .map(|url| std::sync::Arc::new(Notifier::new(url))),
        engine.secrets().clone(),
        engine.policy().network,
        args.jobs.relay.settings(format!("{name}-relay")),
    );
    let relaying = tokio::spawn(relay.run(shutdown.wait()));
    let shared = std::sync::Arc::new(queue_worker::Shared {
        engine,
        metrics: carga_scheduler::metrics::Metrics::new(queue.clone()),
        catalog,
        queue,
        settings: args.jobs.worker_settings(name.clone()),
        stopping: tokio::sync::watch::Sender::new(false),
    });
    eprintln!("worker '{name}' taking jobs from '{}'", args.queue);
    take_loop::run(shared, shutdown.wait()).await?;
    let _ = relaying.await;
    eprintln!("worker '{name}' stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand says what it does and every flag what it means (`--help` is the manual).
    fn undescribed(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in command.get_arguments() {
            let builtin = matches!(arg.get_id().as_str(), "help" | "version");
            if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in command.get_subcommands() {
            let name = format!("{path} {}", sub.get_name());
            if sub.get_name() != "help" && sub.get_about().is_none() {
                missing.push(name.clone());
            }
            undescribed(sub, &name, missing);
        }
    }

    #[test]
    fn every_command_and_flag_is_described() {
        let mut missing = Vec::new();
        undescribed(
            &<Cli as clap::CommandFactory>::command(),
            "carga",
            &mut missing,
        );
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    #[test]
    fn the_version_names_the_commit() {
        assert!(VERSION.contains("(commit "), "{VERSION}");
        assert!(!env!("CARGA_COMMIT").is_empty());
    }
}
