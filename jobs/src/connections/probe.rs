//! "Test connection" for a stored connection: log in and ask the server what it is (databases),
//! or reach every host the credentials may go to (REST, whose requests depend on the dataset's
//! spec). Errors are masked with the connection's own values.

use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::{Connection, MySqlConnection, PgConnection};

use super::{ConnectionKind, ConnectionProfile};
use crate::access::NetworkPolicy;
use crate::access::network::non_public;
use crate::error::{JobError, Result};
use crate::secrets::{ConnectionSecret, HostRule};

/// How long a test may take before it is reported as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    /// What answered: the server's version, or the hosts reached.
    pub server: String,
    pub elapsed_ms: u64,
}

/// Tests `secret` as a connection of `profile.kind`. REST hosts are checked against `network`
/// first (a test must not become a port scanner of the private network); databases are reached
/// as a run reaches them.
pub async fn probe(
    profile: &ConnectionProfile,
    secret: &ConnectionSecret,
    network: &NetworkPolicy,
) -> Result<ProbeReport> {
    let started = Instant::now();
    let failed = |e: &dyn std::fmt::Display| JobError::Database {
        context: format!("testing connection '{}'", secret.id()),
        message: secret.redact(&e.to_string()),
    };
    let work = async {
        match profile.kind {
            ConnectionKind::Postgres => {
                let mut conn = PgConnection::connect(&secret.database_url("postgres", 5432)?)
                    .await
                    .map_err(|e| failed(&e))?;
                let version: String = sqlx::query_scalar("SELECT version()")
                    .fetch_one(&mut conn)
                    .await
                    .map_err(|e| failed(&e))?;
                let _ = conn.close().await;
                Ok(version)
            }
            ConnectionKind::Mysql => {
                let mut conn = MySqlConnection::connect(&secret.database_url("mysql", 3306)?)
                    .await
                    .map_err(|e| failed(&e))?;
                let version: String = sqlx::query_scalar("SELECT CAST(VERSION() AS CHAR)")
                    .fetch_one(&mut conn)
                    .await
                    .map_err(|e| failed(&e))?;
                let _ = conn.close().await;
                Ok(format!("MySQL/MariaDB {version}"))
            }
            ConnectionKind::Mssql => crate::sources::mssql::server_version(secret).await,
            ConnectionKind::Mongodb => crate::sources::mongodb::ping(secret).await,
            ConnectionKind::Rest => reach_hosts(&profile.hosts, network).await,
        }
    };
    let server = tokio::time::timeout(PROBE_TIMEOUT, work)
        .await
        .map_err(|_| JobError::Database {
            context: format!("testing connection '{}'", secret.id()),
            message: format!("no answer within {} s", PROBE_TIMEOUT.as_secs()),
        })??;
    Ok(ProbeReport {
        server,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// Opens a TCP connection to every host (port 443 when none is given), each address checked
/// against the network policy before connecting.
async fn reach_hosts(hosts: &[HostRule], network: &NetworkPolicy) -> Result<String> {
    let mut reached = Vec::new();
    for rule in hosts {
        let port = rule.port.unwrap_or(443);
        let addresses: Vec<std::net::SocketAddr> =
            tokio::net::lookup_host((rule.host.as_str(), port))
                .await
                .map_err(|e| JobError::Http {
                    context: format!("resolving {rule}"),
                    message: e.to_string(),
                })?
                .collect();
        let allowed = addresses
            .iter()
            .find(|a| network.allow_private || non_public(a.ip()).is_none());
        let Some(address) = allowed else {
            let kind = addresses
                .first()
                .and_then(|a| non_public(a.ip()))
                .unwrap_or("no address");
            return Err(JobError::Denied {
                rule: "private network",
                message: format!(
                    "{rule} is {kind}, which this installation may not reach (sources.allow_private_networks)"
                ),
            });
        };
        tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| JobError::Http {
                context: format!("connecting to {rule}"),
                message: e.to_string(),
            })?;
        reached.push(format!("{}:{port}", rule.host));
    }
    Ok(format!("reached {}", reached.join(", ")))
}
