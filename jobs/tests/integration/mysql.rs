//! MySQL / MariaDB source against the real MariaDB on loopback: type mapping, delta across runs,
//! late commits with a lookback window, complete snapshots, failures that leave the previous state.

use crate::common::{Lab, column, service_available};
use serde_json::json;
use sqlx::{AssertSqlSafe, Connection, Executor, MySqlConnection};

fn url() -> String {
    std::env::var("CARGA_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// A lab whose secrets file knows connection `my`, and a fresh table name for this test.
async fn setup(table: &str, ddl: &str) -> Option<(Lab, MySqlConnection)> {
    if !service_available("MariaDB/MySQL", "127.0.0.1:3306") {
        return None;
    }
    let mut lab = Lab::new();
    lab.settings.secrets_file =
        lab.write("secrets.json", json!({"my": {"url": url()}}).to_string());
    let mut conn = MySqlConnection::connect(&url()).await.unwrap();
    conn.execute(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
        .await
        .unwrap();
    conn.execute(AssertSqlSafe(ddl.to_owned())).await.unwrap();
    Some((lab, conn))
}

fn spec(lab: &Lab, id: &str, table: &str, extra: &str) -> carga_config::DatasetSpec {
    lab.spec(&format!(
        "id: {id}\nsource: {{format: mariadb, table: {table}}}\nconnection_id: my\ntrigger: callback\n{extra}"
    ))
}

#[tokio::test]
async fn every_mapped_type_round_trips() {
    let ddl = "CREATE TABLE test.carga_types (
        id BIGINT PRIMARY KEY, ti TINYINT, us INT UNSIGNED, ub BIGINT UNSIGNED, price DECIMAL(12,2),
        wide DECIMAL(50,10), f FLOAT, d DOUBLE, b BIT(3), name VARCHAR(20), body TEXT, e ENUM('a','b'),
        raw VARBINARY(8), day DATE, at DATETIME(6), ts TIMESTAMP(3) NULL, tm TIME, yr YEAR, doc JSON)";
    let Some((lab, mut conn)) = setup("test.carga_types", ddl).await else {
        return;
    };
    conn.execute(
        "INSERT INTO test.carga_types VALUES
         (1, -128, 4294967295, 18446744073709551615, 12345.67, 12345678901234567890123456789.0123456789, 1.5, -2.25,
          b'101', 'ñandú', 'texto largo', 'b', X'00FF10', '2026-02-28', '2026-02-28 13:14:15.123456',
          '2026-02-28 13:14:15.500', '-01:02:03', 2026, '{\"a\": [1, 2]}'),
         (2, NULL, NULL, NULL, -0.01, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    )
    .await
    .unwrap();
    let outcome = lab
        .engine()
        .run(&spec(&lab, "types", "test.carga_types", ""))
        .await
        .unwrap();
    let types: Vec<String> = outcome
        .manifest
        .schema
        .fields()
        .iter()
        .map(|f| format!("{}:{}", f.name(), f.data_type()))
        .collect();
    assert_eq!(
        types,
        [
            "id:Int64",
            "ti:Int8",
            "us:UInt32",
            "ub:UInt64",
            "price:Decimal128(12, 2)",
            "wide:Utf8",
            "f:Float32",
            "d:Float64",
            "b:UInt64",
            "name:Utf8",
            "body:Utf8",
            "e:Utf8",
            "raw:Binary",
            "day:Date32",
            "at:Timestamp(µs)",
            "ts:Timestamp(µs, \"+00:00\")",
            "tm:Utf8",
            "yr:Int16",
            "doc:Utf8"
        ]
    );
    let rows = lab.rows("types").await;
    let first = &rows[0];
    assert_eq!(first["ti"], json!(-128));
    assert_eq!(first["ub"], json!(18446744073709551615u64));
    assert_eq!(first["price"], json!(12345.67));
    assert_eq!(
        first["wide"],
        json!("12345678901234567890123456789.0123456789")
    );
    assert_eq!(first["b"], json!(5));
    assert_eq!(first["name"], json!("ñandú"));
    assert_eq!(first["raw"], json!("00ff10"));
    assert_eq!(first["day"], json!("2026-02-28"));
    assert_eq!(first["at"], json!("2026-02-28T13:14:15.123456"));
    assert_eq!(first["ts"], json!("2026-02-28T13:14:15.500Z"));
    assert_eq!(first["tm"], json!("-01:02:03"));
    assert_eq!(first["yr"], json!(2026));
    assert_eq!(rows[1]["price"], json!(-0.01));
    let batches = lab.batches("types").await;
    let price = batches[0]
        .column(4)
        .as_any()
        .downcast_ref::<arrow::array::Decimal128Array>()
        .unwrap();
    assert_eq!(price.value(0), 1_234_567);
}

#[tokio::test]
async fn delta_across_runs_with_updates_equal_timestamps_and_a_late_commit() {
    let ddl = "CREATE TABLE test.carga_orders (id BIGINT PRIMARY KEY, at DATETIME(6) NOT NULL, state VARCHAR(10)) ENGINE=InnoDB";
    let Some((lab, mut conn)) = setup("test.carga_orders", ddl).await else {
        return;
    };
    conn.execute("INSERT INTO test.carga_orders VALUES (1, '2026-03-01 10:00:00', 'new'), (2, '2026-03-01 11:00:00', 'new'), (3, '2026-03-01 11:00:00', 'new')")
        .await
        .unwrap();
    let delta = spec(
        &lab,
        "orders",
        "test.carga_orders",
        "mode: delta\ntimestamp_column: at\nkey: [id]\nlookback: 1h\n",
    );
    assert_eq!(lab.engine().run(&delta).await.unwrap().manifest.rows, 3);

    // A transaction that took its timestamp before the next commit but commits after the next run.
    let mut slow = MySqlConnection::connect(&url()).await.unwrap();
    slow.execute("START TRANSACTION").await.unwrap();
    slow.execute("INSERT INTO test.carga_orders VALUES (9, '2026-03-01 11:40:00', 'late')")
        .await
        .unwrap();
    conn.execute("INSERT INTO test.carga_orders VALUES (4, '2026-03-01 11:00:00', 'new'), (5, '2026-03-01 12:00:00', 'new')")
        .await
        .unwrap();
    conn.execute(
        "UPDATE test.carga_orders SET state = 'paid', at = '2026-03-01 12:30:00' WHERE id = 1",
    )
    .await
    .unwrap();
    assert_eq!(
        lab.engine().run(&delta).await.unwrap().manifest.rows,
        3,
        "4, 5 and the new version of 1"
    );
    slow.execute("COMMIT").await.unwrap();
    assert_eq!(
        lab.engine().run(&delta).await.unwrap().manifest.rows,
        1,
        "the late row, once"
    );
    assert_eq!(lab.engine().run(&delta).await.unwrap().manifest.rows, 0);

    let rows = lab.rows("orders").await;
    let seen: Vec<(i64, String)> = rows
        .iter()
        .map(|r| {
            (
                r["id"].as_i64().unwrap(),
                r["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            (1, "new".into()),
            (1, "paid".into()),
            (2, "new".into()),
            (3, "new".into()),
            (4, "new".into()),
            (5, "new".into()),
            (9, "late".into())
        ]
    );
}

#[tokio::test]
async fn complete_snapshots_and_failures_keep_the_committed_state() {
    let ddl = "CREATE TABLE test.carga_cat (id INT, day DATE)";
    let Some((lab, mut conn)) = setup("test.carga_cat", ddl).await else {
        return;
    };
    conn.execute("INSERT INTO test.carga_cat VALUES (1, '2026-01-01'), (2, '2026-01-02')")
        .await
        .unwrap();
    let complete = spec(&lab, "cat", "test.carga_cat", "");
    lab.engine().run(&complete).await.unwrap();
    let before = lab.manifests("cat").await;

    // A zero date cannot become an Arrow date: the run fails naming row and column, nothing moves.
    conn.execute("SET SESSION sql_mode = ''").await.unwrap();
    conn.execute("INSERT INTO test.carga_cat VALUES (3, '0000-00-00')")
        .await
        .unwrap();
    let err = lab.engine().run(&complete).await.unwrap_err().to_string();
    assert!(
        err.contains("carga_cat") && err.contains("'day'") && err.contains("0000-00-00"),
        "{err}"
    );
    assert_eq!(lab.manifests("cat").await, before);

    conn.execute("DELETE FROM test.carga_cat WHERE id IN (1, 3)")
        .await
        .unwrap();
    lab.engine().run(&complete).await.unwrap();
    assert_eq!(column(&lab.rows("cat").await, "id"), [json!(2)]);

    let missing = spec(&lab, "x", "test.nope", "");
    let err = lab.engine().run(&missing).await.unwrap_err().to_string();
    assert!(
        err.contains("test.nope") && err.contains("does not exist"),
        "{err}"
    );
}

#[tokio::test]
async fn discovery_lists_tables_columns_types_and_primary_keys() {
    let ddl = "CREATE TABLE test.carga_disc (id BIGINT UNSIGNED, line INT, note TEXT, PRIMARY KEY (line, id))";
    let Some((_lab, _conn)) = setup("test.carga_disc", ddl).await else {
        return;
    };
    let secret = carga_jobs::secrets::ConnectionSecret::new(
        "my",
        [("url".to_string(), json!(url()))].into(),
    );
    let tables = carga_jobs::sources::SourceRegistry::default()
        .discover("mariadb", &secret, Some("test"))
        .await
        .unwrap();
    let table = tables.iter().find(|t| t.name == "carga_disc").unwrap();
    assert_eq!(table.primary_key, ["line", "id"]);
    let id = table.columns.iter().find(|c| c.name == "id").unwrap();
    assert_eq!(id.arrow, "UInt64");
}

/// Key ranges from the data (a skewed decimal key and null keys), read in several connections:
/// every row once, the same rows as one pass; a delta run after it reads only the new rows.
#[tokio::test]
async fn partitioned_reads_cover_every_row_once() {
    let ddl = "CREATE TABLE test.carga_parts (id BIGINT PRIMARY KEY, k DECIMAL(10,2) NULL,
        at DATETIME(6) NOT NULL)";
    let Some((lab, mut conn)) = setup("test.carga_parts", ddl).await else {
        return;
    };
    let values: Vec<String> = (1..=6000)
        .map(|n: i64| {
            let k = match n {
                n if n % 500 == 7 => "NULL".to_owned(),
                n if n % 2 == 0 => format!("{}", (n % 3) as f64 / 4.0),
                n => format!("{}", n as f64 / 4.0),
            };
            format!("({n}, {k}, TIMESTAMP('2026-01-01') + INTERVAL {n} SECOND)")
        })
        .collect();
    conn.execute(AssertSqlSafe(format!(
        "INSERT INTO test.carga_parts VALUES {}",
        values.join(", ")
    )))
    .await
    .unwrap();
    let partitioned = |id: &str| {
        lab.spec(&format!(
            "id: {id}\nsource:\n  format: mariadb\n  table: test.carga_parts\n  partitions: {{column: k, count: 4}}\n\
             connection_id: my\ntrigger: callback\nmode: delta\ntimestamp_column: at\nkey: [id]\n"
        ))
    };
    let outcome = lab.engine().run(&partitioned("parts")).await.unwrap();
    assert_eq!(outcome.manifest.rows, 6000);
    let chunks: std::collections::BTreeSet<String> = outcome
        .manifest
        .files
        .iter()
        .map(|f| f.path.rsplit('/').next().unwrap()[..11].to_owned())
        .collect();
    assert!(chunks.len() >= 3, "{chunks:?}");
    let keys = outcome.report.duplicate_keys.as_ref().unwrap();
    assert_eq!((keys.duplicate_rows, keys.checked_rows), (0, 6000));
    let ids = |rows: Vec<serde_json::Value>| {
        let mut ids: Vec<i64> = column(&rows, "id")
            .iter()
            .filter_map(|v| v.as_i64())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(lab.rows("parts").await), (1..=6000).collect::<Vec<_>>());
    let single = spec(&lab, "single", "test.carga_parts", "key: [id]\n");
    lab.engine().run(&single).await.unwrap();
    assert_eq!(ids(lab.rows("single").await), ids(lab.rows("parts").await));

    conn.execute(
        "INSERT INTO test.carga_parts VALUES (6001, 0.25, '2026-06-01'), (6002, NULL, '2026-06-02')",
    )
    .await
    .unwrap();
    let outcome = lab.engine().run(&partitioned("parts")).await.unwrap();
    assert_eq!(outcome.manifest.rows, 2);

    let err = lab
        .engine()
        .run(&lab.spec(
            "id: nope\nsource:\n  format: mariadb\n  table: test.carga_parts\n  partitions: {column: nope, count: 3}\n\
             connection_id: my\ntrigger: callback\n",
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("partition column 'nope'"), "{err}");
}
