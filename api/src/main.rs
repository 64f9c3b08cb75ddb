//! `carga-scheduler`: the scheduler daemon and the HTTP API (one process or either alone), the
//! catalog migrations, and API token creation.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use carga_api::{self as api, ApiState, auth::Role};
use carga_config::Settings;
use carga_jobs::access::AccessPolicy;
use carga_jobs::storage::Bucket;
use carga_scheduler::notify::Notifier;
use carga_scheduler::relay::{Relay, RelayArgs};
use carga_scheduler::shutdown::Shutdown;
use carga_scheduler::{Catalog, JobQueue, QueueSettings, Scheduler, SchedulerSettings};
use clap::{Parser, Subcommand};

/// `carga-scheduler --version`: the release and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CARGA_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "carga-scheduler",
    version = VERSION,
    about = "Carga's scheduler daemon and HTTP API",
    after_help = "Exit codes: 0 success; 1 failure (a server unreachable, a stopped service); 2 usage error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The catalog every subcommand migrates first.
#[derive(clap::Args)]
struct CatalogArgs {
    /// PostgreSQL catalog (migrated at start).
    #[arg(
        long,
        env = "CARGA_CATALOG_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    catalog_url: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the scheduler and the API until SIGTERM or Ctrl-C.
    Serve {
        #[command(flatten)]
        catalog: CatalogArgs,
        /// Settings file (YAML) for the bucket, keys and secrets provider; CARGA_* variables
        /// override it.
        #[arg(long, env = "CARGA_SETTINGS")]
        settings: Option<PathBuf>,
        /// Redis holding the queue.
        #[arg(
            long,
            env = "CARGA_REDIS_URL",
            default_value = "redis://127.0.0.1:6379"
        )]
        redis_url: String,
        /// Queue name (the prefix of its Redis keys).
        #[arg(long, env = "CARGA_QUEUE", default_value = "carga:extractions")]
        queue: String,
        /// Address the API listens on.
        #[arg(long, env = "CARGA_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Serve the API only (another replica schedules).
        #[arg(long)]
        no_scheduler: bool,
        /// Schedule only.
        #[arg(long)]
        no_api: bool,
        /// Seconds between catalog re-reads.
        #[arg(long, env = "CARGA_REFRESH_SECONDS", default_value_t = 10)]
        refresh_seconds: u64,
        /// RabbitMQ for the outbox's messages (runs' ends, upload events); none published when
        /// absent (webhooks are still delivered).
        #[arg(long, env = "CARGA_AMQP_URL")]
        amqp_url: Option<String>,
        #[command(flatten)]
        api: api::ApiArgs,
        #[command(flatten)]
        relay: RelayArgs,
    },
    /// Apply the catalog migrations and exit.
    Migrate {
        #[command(flatten)]
        catalog: CatalogArgs,
    },
    /// Create an API token and print it (only its hash is stored).
    Token {
        #[command(flatten)]
        catalog: CatalogArgs,
        /// Who the token is for (named in the audit log).
        #[arg(long)]
        subject: String,
        /// viewer, editor, approver or admin.
        #[arg(long)]
        role: String,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    carga_scheduler::logging::init("info");
    let cli = Cli::parse();
    let (Command::Serve { catalog, .. }
    | Command::Migrate { catalog }
    | Command::Token { catalog, .. }) = &cli.command;
    let catalog = Catalog::connect(&catalog.catalog_url)
        .await
        .context("connecting to the catalog")?;
    catalog.migrate().await.context("migrating the catalog")?;
    match cli.command {
        Command::Migrate { .. } => {
            println!("catalog migrated");
            Ok(())
        }
        Command::Token { subject, role, .. } => {
            let role = Role::parse(&role).with_context(|| {
                format!("unknown role '{role}' (viewer, editor, approver, admin)")
            })?;
            let token = catalog.create_token(&subject, role.as_str()).await?;
            println!("{token}");
            Ok(())
        }
        Command::Serve {
            settings,
            redis_url,
            queue,
            listen,
            no_scheduler,
            no_api,
            refresh_seconds,
            amqp_url,
            api: api_args,
            relay: relay_args,
            ..
        } => {
            let queue = JobQueue::connect(&QueueSettings {
                redis_url,
                name: queue,
                ..QueueSettings::default()
            })
            .await
            .context("connecting to Redis")?;
            let shutdown = Shutdown::on_signals();
            let mut tasks = tokio::task::JoinSet::new();
            let settings = Settings::load(settings.as_deref())?;
            // Specs come from editors: only the roots and networks the settings open.
            let access = AccessPolicy::for_server(&settings, &[], &[]);
            // The uploads' messages (and any left pending by a worker), to RabbitMQ and webhooks.
            let secrets = carga_jobs::secrets::provider(&settings).await;
            let relay = Relay::new(
                catalog.clone(),
                amqp_url.as_deref().map(|url| Arc::new(Notifier::new(url))),
                secrets.clone(),
                access.network,
                relay_args.settings(format!("scheduler-{}", std::process::id())),
            );
            tasks.spawn(relay.run(shutdown.wait()));
            if !no_scheduler {
                let scheduler = Scheduler::new(
                    catalog.clone(),
                    queue.clone(),
                    SchedulerSettings {
                        refresh: Duration::from_secs(refresh_seconds),
                        ..SchedulerSettings::default()
                    },
                );
                tasks.spawn(scheduler.run(shutdown.wait()));
            }
            if !no_api {
                let state = ApiState::new(
                    catalog.clone(),
                    queue.clone(),
                    secrets,
                    Bucket::open(&settings)?,
                    access,
                );
                // `POST /sql` decrypts with the workers' key when this process has it.
                let state = match carga_jobs::Engine::new(Settings {
                    create_key_if_missing: false,
                    ..settings.clone()
                }) {
                    Ok(engine) => state.with_engine(engine),
                    Err(e) => {
                        tracing::warn!(error = %e, "no master key: POST /sql and uploads are unavailable");
                        state
                    }
                };
                let state = Arc::new(api_args.apply(state).map_err(anyhow::Error::msg)?);
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("listening on {listen}"))?;
                tracing::info!(%listen, "API listening");
                let stopped = shutdown.wait();
                tasks.spawn(async move {
                    if let Err(e) = api::serve(state, listener, stopped).await {
                        tracing::error!(error = %e, "API stopped");
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_and_flag_is_described_and_each_lists_only_its_own() {
        let command = <Cli as clap::CommandFactory>::command();
        let mut missing = Vec::new();
        for sub in command.get_subcommands() {
            if sub.get_name() != "help" && sub.get_about().is_none() {
                missing.push(sub.get_name().to_owned());
            }
            for arg in sub.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() {
                    missing.push(format!("{} {}", sub.get_name(), arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "no help text: {missing:?}");
        let migrate = command.find_subcommand("migrate").unwrap();
        let flags: Vec<&str> = migrate
            .get_arguments()
            .map(|a| a.get_id().as_str())
            .filter(|id| *id != "help")
            .collect();
        assert_eq!(flags, ["catalog_url"]);
    }
}
