//! What the scheduler's test files share: the check that the servers a test needs are up.
#![allow(dead_code)]

use std::net::TcpStream;
use std::time::Duration;

pub const REQUIRE_ALL: &str = "CARGA_TEST_REQUIRE_ALL";

/// True when every `(name, address)` accepts connections. Otherwise the test is skipped with a
/// message, unless `CARGA_TEST_REQUIRE_ALL=1` (CI), where that is a failure.
pub fn services_available(services: &[(&str, &str)]) -> bool {
    let down: Vec<&str> = services
        .iter()
        .filter(|(_, address)| {
            TcpStream::connect_timeout(&address.parse().unwrap(), Duration::from_secs(2)).is_err()
        })
        .map(|(name, _)| *name)
        .collect();
    if down.is_empty() {
        return true;
    }
    let why = format!("{} not reachable on loopback", down.join(", "));
    if std::env::var(REQUIRE_ALL).is_ok_and(|v| v == "1") {
        panic!("{why}, and {REQUIRE_ALL}=1 forbids skipping");
    }
    eprintln!("SKIPPED: {why} (set {REQUIRE_ALL}=1 to make this a failure)");
    false
}

/// Creates an empty PostgreSQL database on the local server for one test; its name and URL.
pub async fn fresh_postgres_database(prefix: &str) -> (String, String) {
    let name = format!("{prefix}_{}", uuid::Uuid::now_v7().simple());
    let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    (name, url)
}
