//! Connection credentials from AWS Secrets Manager (moto_server on loopback), end to end: an
//! RDS-shaped secret drives a PostgreSQL extraction; unknown ids fail clearly; no value leaks.

use crate::common::{Lab, service_available};
use carga_config::SecretsProvider as ProviderKind;
use carga_jobs::secrets::{AwsSecretsManager, SecretsProvider};
use serde_json::json;
use sqlx::{Connection, Executor, PgConnection};

fn endpoint() -> String {
    std::env::var("CARGA_TEST_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5000".into())
}

#[test]
fn connections_come_from_aws_secrets_manager() {
    let address = endpoint().trim_start_matches("http://").to_owned();
    if !service_available("moto server (Secrets Manager)", &address)
        || !service_available("PostgreSQL", "127.0.0.1:5432")
    {
        return;
    }
    crate::common::aws_test_credentials();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(scenario());
}

async fn scenario() {
    let id = format!("rds/carga-{}", uuid::Uuid::new_v4().simple());
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint())
        .region(aws_config::Region::new("us-east-1"))
        .load()
        .await;
    let admin = aws_sdk_secretsmanager::Client::new(&config);
    let rds_shape = json!({"engine": "postgres", "host": "127.0.0.1", "port": 5432, "username": "postgres",
                           "password": "not-checked-by-trust-auth", "dbname": "test"});
    admin
        .create_secret()
        .name(&id)
        .secret_string(rds_shape.to_string())
        .send()
        .await
        .unwrap();

    let provider = AwsSecretsManager::new(Some(&endpoint()), Some("us-east-1")).await;
    let secret = provider.connection(&id).await.unwrap();
    assert_eq!(
        secret.database_url("postgres", 5432).unwrap(),
        "postgres://postgres:not-checked-by-trust-auth@127.0.0.1:5432/test"
    );
    assert!(!format!("{secret:?}").contains("not-checked"));
    let err = provider
        .connection("rds/nope")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("'rds/nope'") && err.contains("Secrets Manager"),
        "{err}"
    );

    // A whole run with the provider chosen by settings.
    let mut conn = PgConnection::connect("postgres://postgres@127.0.0.1:5432/test")
        .await
        .unwrap();
    conn.execute("DROP SCHEMA IF EXISTS carga_sm CASCADE; CREATE SCHEMA carga_sm; CREATE TABLE carga_sm.t (id int4); INSERT INTO carga_sm.t VALUES (1), (2);")
        .await
        .unwrap();
    let mut lab = Lab::new();
    lab.settings.secrets_provider = ProviderKind::AwsSecretsManager;
    lab.settings.secrets_endpoint = Some(endpoint());
    lab.settings.s3.region = Some("us-east-1".into());
    let spec = lab.spec(&format!("id: sm\nsource: {{format: postgres, table: carga_sm.t}}\nconnection_id: '{id}'\ntrigger: callback\n"));
    let engine = carga_jobs::Engine::from_settings(lab.settings.clone())
        .await
        .unwrap();
    assert_eq!(engine.run(&spec).await.unwrap().manifest.rows, 2);
}
