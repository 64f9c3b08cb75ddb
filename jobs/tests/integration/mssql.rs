//! SQL Server end to end. No SQL Server runs on the development machines or in CI here, so these
//! tests run only when `CARGO_TEST_MSSQL_URL` is set, to an ADO.NET connection string such as
//! `server=tcp:127.0.0.1,1433;user=sa;password=...;TrustServerCertificate=true;database=master`
//! (this variable's absence is not a failure, even under CARGA_TEST_REQUIRE_ALL).

use crate::common::{Lab, column};
use futures::TryStreamExt;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_util::compat::TokioAsyncWriteCompatExt;

fn ado() -> Option<String> {
    let url = std::env::var("CARGO_TEST_MSSQL_URL").ok();
    if url.is_none() {
        eprintln!(
            "SKIPPED: CARGO_TEST_MSSQL_URL is not set (SQL Server tests run only against a server you provide)"
        );
    }
    url
}

async fn execute(ado: &str, sql: &str) {
    let config = tiberius::Config::from_ado_string(ado).unwrap();
    let tcp = TcpStream::connect(config.get_addr()).await.unwrap();
    let mut client = tiberius::Client::connect(config, tcp.compat_write())
        .await
        .unwrap();
    let mut stream = client.simple_query(sql).await.unwrap();
    while stream.try_next().await.unwrap().is_some() {}
}

#[tokio::test]
async fn types_round_trip_and_delta_runs_once_per_row() {
    let Some(ado) = ado() else { return };
    execute(
        &ado,
        "IF OBJECT_ID('dbo.carga_orders') IS NOT NULL DROP TABLE dbo.carga_orders;
         CREATE TABLE dbo.carga_orders (id bigint PRIMARY KEY, at datetime2(6) NOT NULL, price decimal(12,2),
            name nvarchar(20), flag bit, guid uniqueidentifier, day date, raw varbinary(8), at_tz datetimeoffset(3));
         INSERT INTO dbo.carga_orders VALUES
            (1, '2026-03-01 10:00:00.123456', 12345.67, N'ñandú', 1, '12345678-9ABC-DEF0-1234-56789ABCDEF0',
             '2026-02-28', 0x00FF10, '2026-02-28 13:14:15.500 +02:00'),
            (2, '2026-03-01 11:00:00', NULL, NULL, NULL, NULL, NULL, NULL, NULL),
            (3, '2026-03-01 11:00:00', -0.01, N'x', 0, NULL, NULL, NULL, NULL);",
    )
    .await;
    let mut lab = Lab::new();
    lab.settings.secrets_file = lab.write("secrets.json", json!({"ms": {"url": ado}}).to_string());
    let spec = lab.spec(
        "id: orders\nsource: {format: mssql, table: dbo.carga_orders}\nconnection_id: ms\ntrigger: callback\nmode: delta\ntimestamp_column: at\nkey: [id]\n",
    );
    assert_eq!(lab.engine().run(&spec).await.unwrap().manifest.rows, 3);
    let rows = lab.rows("orders").await;
    assert_eq!(rows[0]["price"], json!(12345.67));
    assert_eq!(rows[0]["name"], json!("ñandú"));
    assert_eq!(
        rows[0]["guid"],
        json!("12345678-9abc-def0-1234-56789abcdef0")
    );
    assert_eq!(rows[0]["at"], json!("2026-03-01T10:00:00.123456"));
    assert_eq!(rows[0]["at_tz"], json!("2026-02-28T11:14:15.500Z"));

    execute(&ado, "INSERT INTO dbo.carga_orders (id, at) VALUES (4, '2026-03-01 11:00:00'), (5, '2026-03-01 12:00:00')").await;
    assert_eq!(lab.engine().run(&spec).await.unwrap().manifest.rows, 2);
    assert_eq!(lab.engine().run(&spec).await.unwrap().manifest.rows, 0);
    let mut ids: Vec<i64> = column(&lab.rows("orders").await, "id")
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn discovery_lists_tables_columns_and_primary_keys() {
    let Some(ado) = ado() else { return };
    execute(
        &ado,
        "IF OBJECT_ID('dbo.carga_disc') IS NOT NULL DROP TABLE dbo.carga_disc;
         CREATE TABLE dbo.carga_disc (line int, id bigint, note nvarchar(max), PRIMARY KEY (line, id));",
    )
    .await;
    let secret =
        carga_jobs::secrets::ConnectionSecret::new("ms", [("url".to_string(), json!(ado))].into());
    let tables = carga_jobs::sources::SourceRegistry::default()
        .discover("mssql", &secret, Some("dbo"))
        .await
        .unwrap();
    let table = tables.iter().find(|t| t.name == "carga_disc").unwrap();
    assert_eq!(table.primary_key, ["line", "id"]);
    let id = table.columns.iter().find(|c| c.name == "id").unwrap();
    assert_eq!(id.arrow, "Int64");
}
