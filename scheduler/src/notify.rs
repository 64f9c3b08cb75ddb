//! Messages to RabbitMQ: after each run, `dataset_ready` for the transformation engine when data
//! was committed, and a notification (`upload_success`, `validation_failed`,
//! `extraction_failed`) for people and audit consumers; after each file upload's validation,
//! `upload_success` or `validation_failed` with the upload's id.
//!
//! Everything goes to one durable topic exchange; the queues the consumers read are declared and
//! bound here too, so a message published before any consumer started is kept. Publishes wait
//! for the broker's confirm.

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::catalog::OutboxMessage;

pub const EXCHANGE: &str = "carga.events";
/// The transformation engine's queue (routing keys `transform.*`).
pub const TRANSFORM_QUEUE: &str = "carga.transform";
/// Notifications (routing keys `notification.*`).
pub const NOTIFICATION_QUEUE: &str = "carga.notifications";

#[derive(Debug, thiserror::Error)]
#[error("rabbitmq: {0}")]
pub struct NotifyError(#[from] lapin::Error);

/// What a notification says.
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    pub event: &'static str,
    pub dataset_id: String,
    pub run_id: String,
    pub at: chrono::DateTime<chrono::Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The upload the event is about (events of `POST /upload/dataset`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
    /// The validation report's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
}

impl Notification {
    /// This notification as an outbox message, routed `notification.<event>`, recorded once per
    /// `dedupe_key`; `webhook`: subscribers to its event get it too.
    pub fn message(&self, dedupe_key: String, webhook: bool) -> OutboxMessage {
        OutboxMessage {
            dedupe_key,
            event: webhook.then_some(self.event),
            routing_key: format!("notification.{}", self.event),
            dataset_id: self.dataset_id.clone(),
            run_id: Some(self.run_id.clone()),
            payload: serde_json::to_value(self).unwrap_or_default(),
        }
    }
}

pub struct Notifier {
    url: String,
    channel: Mutex<Option<(Connection, Channel)>>,
}

impl Notifier {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            channel: Mutex::new(None),
        }
    }

    /// Publishes one message (JSON) with a routing key and the id a consumer may drop a
    /// repeat by; waits for the broker's confirm, and reconnects once if the connection was
    /// lost.
    pub async fn publish(
        &self,
        routing_key: &str,
        payload: &[u8],
        message_id: i64,
    ) -> Result<(), NotifyError> {
        let mut guard = self.channel.lock().await;
        for attempt in 0..2 {
            if guard.as_ref().is_none_or(|(c, _)| !c.status().connected()) {
                *guard = Some(self.connect().await?);
            }
            let (_, channel) = guard.as_ref().expect("connected above");
            let result = async {
                channel
                    .basic_publish(
                        EXCHANGE,
                        routing_key,
                        BasicPublishOptions::default(),
                        payload,
                        BasicProperties::default()
                            .with_content_type("application/json".into())
                            .with_message_id(message_id.to_string().into())
                            .with_delivery_mode(2),
                    )
                    .await?
                    .await?;
                Ok::<_, lapin::Error>(())
            }
            .await;
            match result {
                Ok(()) => return Ok(()),
                Err(e) if attempt == 0 => {
                    tracing::warn!(error = %e, "publish failed; reconnecting");
                    *guard = None;
                }
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    async fn connect(&self) -> Result<(Connection, Channel), NotifyError> {
        let properties = ConnectionProperties::default()
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio::current());
        let connection = Connection::connect(&self.url, properties).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        declare_topology(&channel).await?;
        Ok((connection, channel))
    }
}

/// The exchange, the two consumer queues and their bindings (idempotent).
pub async fn declare_topology(channel: &Channel) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            EXCHANGE,
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    for (queue, pattern) in [
        (TRANSFORM_QUEUE, "transform.#"),
        (NOTIFICATION_QUEUE, "notification.#"),
    ] {
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(queue, options, FieldTable::default())
            .await?;
        channel
            .queue_bind(
                queue,
                EXCHANGE,
                pattern,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}
