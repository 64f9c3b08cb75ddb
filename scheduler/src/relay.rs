//! The outbox relay: publishes pending messages to RabbitMQ and delivers due webhooks.
//!
//! Messages are written to the outbox in the same catalog transaction as the run's end (or an
//! upload's validation), so a process that dies after the commit loses none: any relay (every
//! worker and `carga serve` runs one) takes them up under a lease. Delivery is at least once: a
//! relay that dies between the broker's confirm and marking the row sends it again, with the same
//! `message_id` (the outbox id) and `Carga-Delivery` header, so a consumer can drop the repeat.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use carga_jobs::access::NetworkPolicy;
use carga_jobs::retry::Backoff;
use carga_jobs::secrets::SecretsProvider;
use chrono::Utc;

use crate::catalog::{BrokerState, Catalog, CatalogError, DeliveryOutcome, DueDelivery};
use crate::notify::Notifier;
use crate::webhook;

/// How the relay works.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Names this relay's leases.
    pub name: String,
    /// How often it looks for work.
    pub poll: Duration,
    /// How long a taken message or delivery is this relay's before another may take it.
    pub lease: Duration,
    /// Pauses between a webhook's attempts.
    pub webhook_backoff: Backoff,
    /// Attempts of a delivery in all before it is given up (`failed` in the log).
    pub webhook_attempts: u32,
    pub webhook_timeout: Duration,
    /// Settled messages and deliveries are forgotten after this.
    pub retention: Duration,
    /// Whether no process has a broker (a single-process `carga serve` without `--amqp-url`):
    /// then a relay without one marks messages `skipped` rather than leaving them for one.
    pub no_broker_anywhere: bool,
}

/// The defaults, shared by `RelaySettings::new` and the flags.
const POLL_SECONDS: f64 = 1.0;
const WEBHOOK_ATTEMPTS: u32 = 8;
const WEBHOOK_BACKOFF_SECONDS: f64 = 5.0;
const WEBHOOK_MAX_BACKOFF_SECONDS: f64 = 600.0;

impl RelaySettings {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            poll: Duration::from_secs_f64(POLL_SECONDS),
            lease: Duration::from_secs(60),
            webhook_backoff: Backoff::new(
                Duration::from_secs_f64(WEBHOOK_BACKOFF_SECONDS),
                Duration::from_secs_f64(WEBHOOK_MAX_BACKOFF_SECONDS),
            ),
            webhook_attempts: WEBHOOK_ATTEMPTS,
            webhook_timeout: Duration::from_secs(10),
            retention: Duration::from_secs(7 * 24 * 3600),
            no_broker_anywhere: false,
        }
    }
}

/// The relay's flags, shared by `carga worker`, `carga serve` and `carga-scheduler serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct RelayArgs {
    /// Attempts of a webhook delivery in all before it is given up (shown as failed).
    #[arg(long, env = "CARGA_WEBHOOK_ATTEMPTS", default_value_t = WEBHOOK_ATTEMPTS)]
    pub webhook_attempts: u32,
    /// Pause before a webhook's second attempt; doubles for each later one.
    #[arg(long, env = "CARGA_WEBHOOK_BACKOFF_SECONDS", default_value_t = WEBHOOK_BACKOFF_SECONDS)]
    pub webhook_backoff_seconds: f64,
    /// The longest pause between a webhook's attempts.
    #[arg(
        long,
        env = "CARGA_WEBHOOK_MAX_BACKOFF_SECONDS",
        default_value_t = WEBHOOK_MAX_BACKOFF_SECONDS
    )]
    pub webhook_max_backoff_seconds: f64,
    /// Seconds between the outbox relay's looks for messages to publish and deliver.
    #[arg(long, env = "CARGA_RELAY_POLL_SECONDS", default_value_t = POLL_SECONDS)]
    pub relay_poll_seconds: f64,
}

impl RelayArgs {
    pub fn settings(&self, name: impl Into<String>) -> RelaySettings {
        RelaySettings {
            poll: Duration::from_secs_f64(self.relay_poll_seconds.max(0.05)),
            webhook_backoff: Backoff::new(
                Duration::from_secs_f64(self.webhook_backoff_seconds.max(0.0)),
                Duration::from_secs_f64(self.webhook_max_backoff_seconds.max(0.0)),
            ),
            webhook_attempts: self.webhook_attempts.max(1),
            ..RelaySettings::new(name)
        }
    }
}

/// Messages and deliveries one pass handled.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayPass {
    pub published: usize,
    pub delivered: usize,
    pub retried: usize,
    pub failed: usize,
}

pub struct Relay {
    catalog: Catalog,
    notifier: Option<Arc<Notifier>>,
    /// Where the subscriptions' signing secrets are (`webhook::secret_name`).
    secrets: Arc<dyn SecretsProvider>,
    http: reqwest::Client,
    network: NetworkPolicy,
    settings: RelaySettings,
}

/// Messages taken per pass.
const BATCH: i64 = 100;
/// Deliveries taken per pass: each may take up to the webhook timeout, all within one lease.
const DELIVERY_BATCH: u32 = 10;
/// How often settled rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

impl Relay {
    /// A relay publishing through `notifier` (none: it delivers webhooks only, and the messages
    /// wait for a relay with a broker, or are marked `skipped` where there is no broker anywhere)
    /// and delivering webhooks to the addresses `network` allows.
    pub fn new(
        catalog: Catalog,
        notifier: Option<Arc<Notifier>>,
        secrets: Arc<dyn SecretsProvider>,
        network: NetworkPolicy,
        settings: RelaySettings,
    ) -> Self {
        // No redirects: a webhook goes to the address its subscription names and nowhere else.
        let http = network
            .client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.webhook_timeout)
            .user_agent(concat!("carga-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Self {
            catalog,
            notifier,
            secrets,
            http,
            network,
            settings,
        }
    }

    /// Relays until `shutdown` resolves; a catalog fault is logged and tried again next pass.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut last_prune: Option<tokio::time::Instant> = None;
        let mut failing = false;
        loop {
            match self.pass().await {
                Ok(_) if failing => {
                    tracing::info!("the outbox relay reaches the catalog again");
                    failing = false;
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "the outbox relay cannot reach the catalog; retrying");
                    failing = true;
                }
                Err(_) => {}
            }
            if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                let before = Utc::now()
                    - chrono::Duration::from_std(self.settings.retention).unwrap_or_default();
                match self.catalog.prune_outbox(before).await {
                    Ok(pruned) if pruned > 0 => {
                        tracing::info!(pruned, "settled outbox rows pruned")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "outbox not pruned"),
                }
                last_prune = Some(tokio::time::Instant::now());
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(self.settings.poll) => {}
            }
        }
    }

    /// One pass: publish what is pending, deliver what is due.
    pub async fn pass(&self) -> Result<RelayPass, CatalogError> {
        let mut pass = RelayPass::default();
        // A relay with no broker delivers webhooks only; the messages wait for one that has,
        // unless there is none anywhere.
        let pending = if self.notifier.is_some() || self.settings.no_broker_anywhere {
            self.catalog
                .claim_outbox(&self.settings.name, self.settings.lease, BATCH)
                .await?
        } else {
            Vec::new()
        };
        for message in pending {
            let Some(notifier) = &self.notifier else {
                self.catalog
                    .outbox_sent(message.id, BrokerState::Skipped)
                    .await?;
                continue;
            };
            match notifier
                .publish(&message.routing_key, message.payload.as_bytes(), message.id)
                .await
            {
                Ok(()) => {
                    self.catalog
                        .outbox_sent(message.id, BrokerState::Published)
                        .await?;
                    pass.published += 1;
                }
                // Its lease runs out and a later pass (of this relay or another) sends it.
                Err(e) => {
                    tracing::warn!(error = %e, message = message.id, "message not published; it stays in the outbox");
                    break;
                }
            }
        }
        // Long enough for every taken delivery to time out twice over, so no other relay takes
        // one while this one is still sending it.
        let lease = self
            .settings
            .lease
            .max(self.settings.webhook_timeout * DELIVERY_BATCH * 2);
        let due = self
            .catalog
            .claim_deliveries(lease, i64::from(DELIVERY_BATCH))
            .await?;
        // Each subscription's secret is read once per pass, however many of its deliveries are due.
        let mut secrets: HashMap<String, Result<String, String>> = HashMap::new();
        for delivery in due {
            let attempt = delivery.attempts + 1;
            let secret = match secrets.get(&delivery.webhook_id) {
                Some(secret) => secret.clone(),
                None => {
                    let secret = self.secret(&delivery.webhook_id).await;
                    secrets.insert(delivery.webhook_id.clone(), secret.clone());
                    secret
                }
            };
            let outcome = self.deliver(&delivery, attempt, secret).await;
            match &outcome {
                DeliveryOutcome::Delivered { .. } => pass.delivered += 1,
                DeliveryOutcome::Retry { error, .. } => {
                    tracing::warn!(webhook = %delivery.webhook_id, delivery = delivery.id, attempt, error = %error, "webhook not delivered; retrying later");
                    pass.retried += 1;
                }
                DeliveryOutcome::Failed { error, .. } => {
                    tracing::error!(webhook = %delivery.webhook_id, delivery = delivery.id, attempt, error = %error, "webhook delivery given up");
                    pass.failed += 1;
                }
            }
            self.catalog
                .delivery_attempted(delivery.id, attempt, &outcome)
                .await?;
        }
        Ok(pass)
    }

    /// POSTs one delivery, signed with `secret` (or why it could not be read); what the
    /// attempt came to.
    async fn deliver(
        &self,
        delivery: &DueDelivery,
        attempt: i32,
        secret: Result<String, String>,
    ) -> DeliveryOutcome {
        let sent = match secret {
            Ok(secret) => self.post(delivery, &secret).await,
            Err(error) => Err(error),
        };
        let (status, error) = match sent {
            Ok(status) if (200..300).contains(&status) => {
                return DeliveryOutcome::Delivered {
                    status: i32::from(status),
                };
            }
            Ok(status) => (Some(i32::from(status)), format!("HTTP {status}")),
            Err(error) => (None, error),
        };
        if attempt >= self.settings.webhook_attempts as i32 {
            return DeliveryOutcome::Failed {
                status,
                error: format!("{error} (after {attempt} attempts)"),
            };
        }
        let pause = self.settings.webhook_backoff.pause(attempt as u32);
        DeliveryOutcome::Retry {
            status,
            error,
            next: Utc::now() + chrono::Duration::from_std(pause).unwrap_or_default(),
        }
    }

    /// The HTTP status the receiver answered, or why there was none. Errors never carry the
    /// URL (its query may hold a token) nor the secret.
    async fn post(&self, delivery: &DueDelivery, secret: &str) -> Result<u16, String> {
        let url = url::Url::parse(&delivery.url).map_err(|e| format!("not a URL: {e}"))?;
        self.network.check_url(&url)?;
        let body = delivery.payload.as_bytes().to_vec();
        let signature = webhook::sign(secret, Utc::now().timestamp(), &body);
        let response = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(webhook::EVENT_HEADER, &delivery.event)
            .header(webhook::DELIVERY_HEADER, delivery.outbox_id.to_string())
            .header(webhook::SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        Ok(response.status().as_u16())
    }

    /// The subscription's signing secret, or why it could not be read (said without the
    /// provider's message, which names where secrets live; that goes to the log).
    async fn secret(&self, webhook_id: &str) -> Result<String, String> {
        let name = webhook::secret_name(webhook_id);
        match self.secrets.connection(&name).await {
            Ok(entry) => entry
                .field(webhook::SECRET_FIELD)
                .ok_or_else(|| format!("the secrets provider's '{name}' has no `secret` field")),
            Err(e) => {
                tracing::warn!(webhook = webhook_id, error = %e, "webhook secret not read");
                Err(format!("the signing secret '{name}' could not be read"))
            }
        }
    }
}
