//! PostgreSQL source against the real server on loopback: type mapping, delta across runs,
//! complete snapshots, failures that leave the previous state, schema drift.

use crate::common::{Lab, column, service_available};
use serde_json::json;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};

fn url() -> String {
    std::env::var("CARGA_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A lab whose secrets file knows connection `pg`, and a fresh schema for this test's tables.
async fn setup(schema: &str) -> Option<(Lab, PgConnection)> {
    if !service_available("PostgreSQL", "127.0.0.1:5432") {
        return None;
    }
    let mut lab = Lab::new();
    let secrets = lab.write("secrets.json", json!({"pg": {"url": url()}}).to_string());
    lab.settings.secrets_file = secrets;
    let mut conn = PgConnection::connect(&url()).await.unwrap();
    let reset = format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}");
    conn.execute(AssertSqlSafe(reset)).await.unwrap();
    Some((lab, conn))
}

fn spec(lab: &Lab, id: &str, table: &str, extra: &str) -> carga_config::DatasetSpec {
    lab.spec(&format!(
        "id: {id}\nsource: {{format: postgres, table: {table}}}\nconnection_id: pg\ntrigger: callback\n{extra}"
    ))
}

#[tokio::test]
async fn every_mapped_type_round_trips() {
    let Some((lab, mut conn)) = setup("carga_types").await else {
        return;
    };
    conn.execute(
        "CREATE TYPE carga_types.mood AS ENUM ('ok', 'meh');
         CREATE TABLE carga_types.t (
            id int8 PRIMARY KEY, b bool, i2 int2, i4 int4, f4 real, f8 float8,
            price numeric(12,2), big numeric, t text, vc varchar(10), ch char(5),
            d date, ts timestamp, tstz timestamptz, tm time, iv interval,
            u uuid, j json, jb jsonb, raw bytea, arr int4[], m carga_types.mood);
         INSERT INTO carga_types.t VALUES
           (1, true, -32768, 2147483647, 1.5, -2.25, 12345.67, 123456789012345678901234567890.123456789,
            'ñandú', 'abc', 'ab', '2026-02-28', '2026-02-28 13:14:15.123456', '2026-02-28 13:14:15.5+02',
            '23:59:59.999999', '1 mon 2 days 00:00:03', '12345678-9abc-def0-1234-56789abcdef0',
            '{\"a\": [1, 2]}', '{\"b\": {\"c\": null}}', '\\x00ff10', '{1,NULL,3}', 'meh'),
           (2, NULL, NULL, NULL, 'NaN', 'Infinity', -0.01, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            NULL, NULL, NULL, NULL, NULL, NULL);",
    )
    .await
    .unwrap();
    let outcome = lab
        .engine()
        .run(&spec(&lab, "types", "carga_types.t", ""))
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
            "b:Boolean",
            "i2:Int16",
            "i4:Int32",
            "f4:Float32",
            "f8:Float64",
            "price:Decimal128(12, 2)",
            "big:Utf8",
            "t:Utf8",
            "vc:Utf8",
            "ch:Utf8",
            "d:Date32",
            "ts:Timestamp(µs)",
            "tstz:Timestamp(µs, \"+00:00\")",
            "tm:Time64(µs)",
            "iv:Utf8",
            "u:Utf8",
            "j:Utf8",
            "jb:Utf8",
            "raw:Binary",
            "arr:Utf8",
            "m:Utf8"
        ]
    );
    let rows = lab.rows("types").await;
    let first = &rows[0];
    assert_eq!(first["b"], json!(true));
    assert_eq!(first["i2"], json!(-32768));
    assert_eq!(first["i4"], json!(2147483647));
    assert_eq!(first["f4"], json!(1.5));
    assert_eq!(first["price"], json!(12345.67));
    assert_eq!(
        first["big"],
        json!("123456789012345678901234567890.123456789")
    );
    assert_eq!(first["t"], json!("ñandú"));
    assert_eq!(first["ch"], json!("ab   "), "char(n) keeps its padding");
    assert_eq!(first["d"], json!("2026-02-28"));
    assert_eq!(first["ts"], json!("2026-02-28T13:14:15.123456"));
    assert_eq!(first["tstz"], json!("2026-02-28T11:14:15.500Z"));
    assert_eq!(first["tm"], json!("23:59:59.999999"));
    assert_eq!(first["u"], json!("12345678-9abc-def0-1234-56789abcdef0"));
    assert_eq!(first["j"], json!("{\"a\": [1, 2]}"));
    assert_eq!(first["jb"], json!("{\"b\": {\"c\": null}}"));
    assert_eq!(first["raw"], json!("00ff10"));
    assert_eq!(first["arr"], json!("[1,null,3]"));
    assert_eq!(first["m"], json!("meh"));
    assert_eq!(rows[1]["price"], json!(-0.01));
    assert!(
        rows[1]["f4"].is_null() || rows[1]["f4"] == json!("NaN") || rows[1].get("f4").is_none()
    );
    // Exact decimal digits survive in the Parquet file, not only in JSON rendering.
    let batches = lab.batches("types").await;
    let price = batches[0]
        .column(6)
        .as_any()
        .downcast_ref::<arrow::array::Decimal128Array>()
        .unwrap();
    assert_eq!(price.value(0), 1_234_567);
    assert_eq!(first["iv"], json!("P1M2DT3S"));
}

#[tokio::test]
async fn delta_across_runs_with_inserts_updates_and_equal_timestamps() {
    let Some((lab, mut conn)) = setup("carga_delta").await else {
        return;
    };
    conn.execute(
        "CREATE TABLE carga_delta.orders (id int8 PRIMARY KEY, updated_at timestamp NOT NULL, state text);
         INSERT INTO carga_delta.orders VALUES
           (1, '2026-03-01 10:00:00', 'new'), (2, '2026-03-01 11:00:00', 'new'), (3, '2026-03-01 11:00:00', 'new');",
    )
    .await
    .unwrap();
    let delta = spec(
        &lab,
        "orders",
        "carga_delta.orders",
        "mode: delta\ntimestamp_column: updated_at\nkey: [id]\n",
    );
    assert_eq!(lab.engine().run(&delta).await.unwrap().manifest.rows, 3);

    // A row at the watermark's timestamp with a higher key, an update (new timestamp), a later insert.
    conn.execute(
        "INSERT INTO carga_delta.orders VALUES (4, '2026-03-01 11:00:00', 'new'), (5, '2026-03-01 12:00:00', 'new');
         UPDATE carga_delta.orders SET state = 'paid', updated_at = '2026-03-01 12:30:00' WHERE id = 1;",
    )
    .await
    .unwrap();
    let second = lab.engine().run(&delta).await.unwrap();
    assert_eq!(second.manifest.rows, 3);
    let third = lab.engine().run(&delta).await.unwrap();
    assert_eq!(third.manifest.rows, 0, "nothing new");

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
    assert_eq!(
        seen,
        [
            (1, "new".into()),
            (2, "new".into()),
            (3, "new".into()),
            (4, "new".into()),
            (5, "new".into()),
            (1, "paid".into())
        ],
        "every change once: the update arrives as a new version of id 1"
    );
}

#[tokio::test]
async fn complete_snapshot_replaces_the_previous_one() {
    let Some((lab, mut conn)) = setup("carga_complete").await else {
        return;
    };
    conn.execute("CREATE TABLE carga_complete.cat (id int4, name text); INSERT INTO carga_complete.cat VALUES (1, 'a'), (2, 'b');")
        .await
        .unwrap();
    let complete = spec(&lab, "cat", "carga_complete.cat", "");
    lab.engine().run(&complete).await.unwrap();
    conn.execute("DELETE FROM carga_complete.cat WHERE id = 1; INSERT INTO carga_complete.cat VALUES (3, 'c');").await.unwrap();
    lab.engine().run(&complete).await.unwrap();
    let mut ids: Vec<i64> = column(&lab.rows("cat").await, "id")
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, [2, 3]);
}

#[tokio::test]
async fn a_failing_extraction_leaves_the_previous_state() {
    let Some((mut lab, mut conn)) = setup("carga_fail").await else {
        return;
    };
    lab.settings.batch_rows = 100;
    lab.settings.rows_per_file = 200;
    conn.execute(
        "CREATE TABLE carga_fail.ev (id int8, at timestamp);
         INSERT INTO carga_fail.ev SELECT g, '2026-01-01'::timestamp + g * interval '1 second' FROM generate_series(1, 1000) g;",
    )
    .await
    .unwrap();
    let delta = spec(
        &lab,
        "ev",
        "carga_fail.ev",
        "mode: delta\ntimestamp_column: at\nkey: [id]\n",
    );
    lab.engine().run(&delta).await.unwrap();
    let before = lab.manifests("ev").await;

    // 1,000 good rows, then one Arrow cannot hold: parts get written, then the run fails.
    conn.execute(
        "INSERT INTO carga_fail.ev SELECT g, '2026-02-01'::timestamp + g * interval '1 second' FROM generate_series(1001, 2000) g;
         INSERT INTO carga_fail.ev VALUES (2001, 'infinity');",
    )
    .await
    .unwrap();
    let err = lab.engine().run(&delta).await.unwrap_err().to_string();
    assert!(
        err.contains("carga_fail.ev") && err.contains("'at'") && err.contains("infinity"),
        "{err}"
    );
    assert_eq!(
        lab.manifests("ev").await,
        before,
        "watermark and data unchanged"
    );
    let referenced: usize = before.iter().map(|m| m.files.len()).sum();
    assert_eq!(
        lab.parquet_files().len(),
        referenced,
        "the failed run's parts are gone"
    );

    conn.execute("DELETE FROM carga_fail.ev WHERE id = 2001")
        .await
        .unwrap();
    assert_eq!(lab.engine().run(&delta).await.unwrap().manifest.rows, 1000);
    assert_eq!(lab.rows("ev").await.len(), 2000);
}

#[tokio::test]
async fn schema_drift_both_ways_and_clear_configuration_errors() {
    let Some((lab, mut conn)) = setup("carga_drift").await else {
        return;
    };
    conn.execute("CREATE TABLE carga_drift.p (id int4, name text); INSERT INTO carga_drift.p VALUES (1, 'a');").await.unwrap();
    let ignore = spec(&lab, "p", "carga_drift.p", "new_columns: ignore\n");
    lab.engine().run(&ignore).await.unwrap();
    conn.execute(
        "ALTER TABLE carga_drift.p ADD COLUMN extra text; UPDATE carga_drift.p SET extra = 'x';",
    )
    .await
    .unwrap();
    let outcome = lab.engine().run(&ignore).await.unwrap();
    assert!(outcome.manifest.schema.field_with_name("extra").is_err());
    let add = spec(&lab, "p", "carga_drift.p", "new_columns: add\n");
    let outcome = lab.engine().run(&add).await.unwrap();
    assert!(outcome.manifest.schema.field_with_name("extra").is_ok());

    conn.execute("ALTER TABLE carga_drift.p ALTER COLUMN id TYPE text")
        .await
        .unwrap();
    let err = lab.engine().run(&add).await.unwrap_err().to_string();
    assert!(
        err.contains("'id'") && err.contains("int32") && err.contains("string"),
        "{err}"
    );

    let missing = spec(&lab, "x", "carga_drift.nope", "");
    let err = lab.engine().run(&missing).await.unwrap_err().to_string();
    assert!(
        err.contains("carga_drift.nope") && err.contains("does not exist"),
        "{err}"
    );
    let unknown = lab.spec("id: y\nsource: {format: postgres, table: carga_drift.p}\nconnection_id: other\ntrigger: callback\n");
    let err = lab.engine().run(&unknown).await.unwrap_err().to_string();
    assert!(err.contains("'other'") && err.contains("secrets"), "{err}");
    let no_cursor = "id: z\nsource: {format: postgres, table: carga_drift.p}\nconnection_id: pg\ntrigger: callback\nmode: delta\n";
    let err = carga_config::DatasetSpec::from_yaml(no_cursor)
        .unwrap_err()
        .to_string();
    assert!(err.contains("timestamp_column"), "{err}");
}

#[tokio::test]
async fn a_late_committed_row_is_caught_by_the_lookback_window_exactly_once() {
    let Some((lab, mut conn)) = setup("carga_late").await else {
        return;
    };
    conn.execute("CREATE TABLE carga_late.tx (id int8 PRIMARY KEY, at timestamp NOT NULL)")
        .await
        .unwrap();
    let delta = spec(
        &lab,
        "tx",
        "carga_late.tx",
        "mode: delta\ntimestamp_column: at\nkey: [id]\nlookback: 10m\n",
    );

    // Transaction A takes its timestamp first but commits last.
    let mut slow = PgConnection::connect(&url()).await.unwrap();
    slow.execute("BEGIN; INSERT INTO carga_late.tx VALUES (1, '2026-05-01 10:00:05')")
        .await
        .unwrap();
    conn.execute("INSERT INTO carga_late.tx VALUES (2, '2026-05-01 10:00:10')")
        .await
        .unwrap();
    let first = lab.engine().run(&delta).await.unwrap();
    assert_eq!(first.manifest.rows, 1, "only the committed row is visible");

    slow.execute("COMMIT").await.unwrap();
    conn.execute("INSERT INTO carga_late.tx VALUES (3, '2026-05-01 10:00:20')")
        .await
        .unwrap();
    let second = lab.engine().run(&delta).await.unwrap();
    assert_eq!(
        second.manifest.rows, 2,
        "the late row and the new one, not row 2 again"
    );
    let third = lab.engine().run(&delta).await.unwrap();
    assert_eq!(third.manifest.rows, 0);

    let mut ids: Vec<i64> = column(&lab.rows("tx").await, "id")
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, [1, 2, 3]);
    let to = third.manifest.watermark.unwrap().to.unwrap();
    assert_eq!(to.values["id"], "3");
    assert!(
        to.recent.is_empty(),
        "the window's tuples live beside the manifest"
    );
    assert_eq!(to.recent_files.iter().map(|f| f.rows).sum::<u64>(), 3);
}

/// The size of every manifest file of a dataset, in bytes.
fn manifest_sizes(lab: &Lab, dataset: &str) -> Vec<u64> {
    let dir = lab
        .dir
        .path()
        .join("bucket/raw")
        .join(dataset)
        .join("_manifests");
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".manifest.json"))
        .map(|e| e.metadata().unwrap().len())
        .collect()
}

#[tokio::test]
async fn a_bulk_update_inside_the_lookback_window_commits_and_keeps_manifests_small() {
    let Some((mut lab, mut conn)) = setup("carga_bulk").await else {
        return;
    };
    // Parts as large as by default, so the manifest's size is the window's business alone.
    lab.settings.rows_per_file = carga_config::Settings::default().rows_per_file;
    lab.settings.rows_per_row_group = carga_config::Settings::default().rows_per_row_group;
    conn.execute(
        "CREATE TABLE carga_bulk.t (id int8 PRIMARY KEY, at timestamp NOT NULL, v text);
         INSERT INTO carga_bulk.t SELECT g, timestamp '2026-05-01 10:00:00' + g * interval '1 ms', 'old'
             FROM generate_series(1, 250000) g;",
    )
    .await
    .unwrap();
    let delta = spec(
        &lab,
        "bulk",
        "carga_bulk.t",
        "mode: delta\ntimestamp_column: at\nkey: [id]\nlookback: 1h\n",
    );
    let first = lab.engine().run(&delta).await.unwrap();
    assert_eq!(first.manifest.rows, 250_000);

    // One statement touches every row: 250,000 new versions inside the next run's window.
    conn.execute(
        "UPDATE carga_bulk.t SET at = timestamp '2026-05-01 12:00:00' + id * interval '1 ms', v = 'new'",
    )
    .await
    .unwrap();
    let second = lab.engine().run(&delta).await.unwrap();
    assert_eq!(second.manifest.rows, 250_000, "every updated row, once");
    let window = &second
        .manifest
        .watermark
        .as_ref()
        .unwrap()
        .to
        .as_ref()
        .unwrap();
    assert_eq!(
        window.recent_files.iter().map(|f| f.rows).sum::<u64>(),
        250_000,
        "the whole window is vouched for"
    );

    // The next run re-reads the window: nothing repeated, the new rows (one of them late, inside
    // the window) delivered once.
    conn.execute(
        "INSERT INTO carga_bulk.t VALUES (250001, '2026-05-01 12:10:00', 'added'),
             (250002, '2026-05-01 11:59:00', 'late'), (250003, '2026-05-01 12:11:00', 'added')",
    )
    .await
    .unwrap();
    let third = lab.engine().run(&delta).await.unwrap();
    assert_eq!(third.manifest.rows, 3);
    let fourth = lab.engine().run(&delta).await.unwrap();
    assert_eq!(fourth.manifest.rows, 0);

    let rows = lab.rows("bulk").await;
    assert_eq!(rows.len(), 500_003);
    let newest: std::collections::BTreeMap<i64, &str> = rows
        .iter()
        .map(|r| (r["id"].as_i64().unwrap(), r["v"].as_str().unwrap()))
        .collect();
    assert_eq!(newest.len(), 250_003, "every id is there");
    let sizes = manifest_sizes(&lab, "bulk");
    assert_eq!(sizes.len(), 4);
    assert!(
        sizes.iter().all(|&bytes| bytes < 64 * 1024),
        "manifest sizes {sizes:?}"
    );
}

#[tokio::test]
async fn numerics_at_38_digits_and_scale_above_precision_round_trip_exactly() {
    let Some((lab, mut conn)) = setup("carga_num38").await else {
        return;
    };
    conn.execute(
        "CREATE TABLE carga_num38.t (id int8 PRIMARY KEY, a numeric(38,10), b numeric(38,2), c numeric(38,0), d numeric(2,5));
         INSERT INTO carga_num38.t VALUES
           (1, 1234567890123456789012345678.0123456789, 123456789012345678901234567890123456.78,
               99999999999999999999999999999999999999, 0.00012),
           (2, 9999999999999999999999999999.9999999999, 999999999999999999999999999999999999.99,
               -99999999999999999999999999999999999999, -0.00099),
           (3, -9999999999999999999999999999.9999999999, -999999999999999999999999999999999999.99,
               0, 0),
           (4, 0.0000000001, 123456789012345678901234567890123456.00, 1, 0.00001)",
    )
    .await
    .unwrap();
    let spec = spec(&lab, "num38", "carga_num38.t", "");
    lab.engine().run(&spec).await.unwrap();
    let batches = lab.batches("num38").await;
    let schema = batches[0].schema();
    use arrow::datatypes::DataType::Decimal128;
    assert_eq!(
        schema.field_with_name("a").unwrap().data_type(),
        &Decimal128(38, 10)
    );
    assert_eq!(
        schema.field_with_name("d").unwrap().data_type(),
        &Decimal128(5, 5)
    );
    let shown = |name: &str| -> Vec<String> {
        let options = arrow::util::display::FormatOptions::default();
        let mut out = Vec::new();
        for batch in &batches {
            let column = batch.column_by_name(name).unwrap();
            let f = arrow::util::display::ArrayFormatter::try_new(column, &options).unwrap();
            out.extend((0..batch.num_rows()).map(|i| f.value(i).to_string()));
        }
        out
    };
    assert_eq!(
        shown("a"),
        [
            "1234567890123456789012345678.0123456789",
            "9999999999999999999999999999.9999999999",
            "-9999999999999999999999999999.9999999999",
            "0.0000000001",
        ]
    );
    assert_eq!(
        shown("b"),
        [
            "123456789012345678901234567890123456.78",
            "999999999999999999999999999999999999.99",
            "-999999999999999999999999999999999999.99",
            "123456789012345678901234567890123456.00",
        ]
    );
    assert_eq!(
        shown("c"),
        [
            "99999999999999999999999999999999999999",
            "-99999999999999999999999999999999999999",
            "0",
            "1",
        ]
    );
    assert_eq!(shown("d"), ["0.00012", "-0.00099", "0.00000", "0.00001"]);
}

#[tokio::test]
async fn a_transforms_filters_run_in_postgresql_and_the_rest_in_datafusion() {
    let Some((lab, mut conn)) = setup("carga_tf").await else {
        return;
    };
    conn.execute(
        "CREATE TABLE carga_tf.c (id int8 PRIMARY KEY, email text, phone text, country text, amount numeric(10,2));
         INSERT INTO carga_tf.c SELECT g, 'User' || g || '@Mail.MX', '555-' || g,
             CASE WHEN g % 3 = 0 THEN 'MX' ELSE 'US' END, g * 1.5 FROM generate_series(1, 300) g;",
    )
    .await
    .unwrap();
    let spec = spec(
        &lab,
        "tf",
        "carga_tf.c",
        "transform: \"SELECT id, lower(email) AS email, sha256(phone) AS phone, CAST(amount AS DOUBLE) AS amount FROM source WHERE country = 'MX' AND id > 30 AND lower(email) LIKE 'user%'\"\nkey: [id]\n",
    );
    let outcome = lab.engine().run(&spec).await.unwrap();
    // Ids 33, 36, ..., 300: the filters hold.
    assert_eq!(outcome.manifest.rows, 90);
    // The plain comparisons went to PostgreSQL; `lower(...) LIKE` stayed in DataFusion.
    let sent = outcome.report.source_query.clone().unwrap();
    assert!(
        sent.contains("\"country\" = 'MX'") && sent.contains("\"id\" > 30"),
        "{sent}"
    );
    assert!(!sent.to_lowercase().contains("like"), "{sent}");
    // DataFusion may run the transform on several cores: order is not the table's.
    let rows = lab.rows("tf").await;
    let row33 = rows.iter().find(|r| r["id"] == 33).unwrap();
    assert_eq!(row33["email"], "user33@mail.mx");
    assert!(row33.get("country").is_none());
    let mut ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, (33..=300).step_by(3).collect::<Vec<i64>>());
    let batches = lab.batches("tf").await;
    assert_eq!(
        batches[0]
            .schema()
            .field_with_name("phone")
            .unwrap()
            .data_type(),
        &arrow::datatypes::DataType::Binary
    );
}

#[tokio::test]
async fn discovery_lists_tables_columns_types_and_primary_keys() {
    let Some((_lab, mut conn)) = setup("carga_disc").await else {
        return;
    };
    conn.execute(
        "CREATE TABLE carga_disc.orders (id int8, line int4, amount numeric(10,2), PRIMARY KEY (line, id));
         CREATE VIEW carga_disc.big_orders AS SELECT * FROM carga_disc.orders WHERE amount > 100;",
    )
    .await
    .unwrap();
    let secret = carga_jobs::secrets::ConnectionSecret::new(
        "pg",
        [("url".to_string(), json!(url()))].into(),
    );
    let tables = carga_jobs::sources::SourceRegistry::default()
        .discover("postgres", &secret, Some("carga_disc"))
        .await
        .unwrap();
    let names: Vec<(&str, &str)> = tables
        .iter()
        .map(|t| (t.name.as_str(), t.kind.as_str()))
        .collect();
    assert_eq!(names, [("big_orders", "view"), ("orders", "table")]);
    let orders = &tables[1];
    assert_eq!(orders.primary_key, ["line", "id"]);
    let amount = orders.columns.iter().find(|c| c.name == "amount").unwrap();
    assert_eq!(
        (amount.declared.as_str(), amount.arrow.as_str()),
        ("numeric(10,2)", "Decimal128(10, 2)")
    );
}

#[tokio::test]
async fn a_dataset_of_several_tables_commits_each_on_its_own() {
    let Some((lab, mut conn)) = setup("carga_multi").await else {
        return;
    };
    conn.execute(
        "CREATE TABLE carga_multi.pedidos (id int, at timestamptz);
         CREATE TABLE carga_multi.clientes (id int, at timestamptz);
         INSERT INTO carga_multi.pedidos VALUES (1, '2026-01-01'), (2, '2026-01-02');
         INSERT INTO carga_multi.clientes VALUES (7, '2026-01-01');",
    )
    .await
    .unwrap();
    let spec = lab.spec(
        "id: ventas\nsource: {format: postgres, tables: [carga_multi.pedidos, carga_multi.clientes, carga_multi.nope]}\nconnection_id: pg\ntrigger: callback\nmode: delta\ntimestamp_column: at\nkey: [id]\n",
    );
    let engine = lab.engine();
    assert!(
        engine.run(&spec).await.is_err(),
        "a multi-table spec runs per table"
    );
    let mut outcomes = Vec::new();
    for table in spec.per_table() {
        outcomes.push((table.id.clone(), engine.run(&table).await));
    }
    assert_eq!(outcomes[0].0, "ventas/carga_multi_pedidos");
    assert_eq!(outcomes[0].1.as_ref().unwrap().manifest.rows, 2);
    assert_eq!(outcomes[1].1.as_ref().unwrap().manifest.rows, 1);
    let err = outcomes[2].1.as_ref().unwrap_err().to_string();
    assert!(err.contains("carga_multi.nope"), "{err}");
    assert!(
        lab.dir
            .path()
            .join("bucket/raw/ventas/carga_multi_clientes/_manifests")
            .is_dir()
    );
    // Each table keeps its own watermark.
    conn.execute("INSERT INTO carga_multi.clientes VALUES (8, '2026-02-01')")
        .await
        .unwrap();
    let again: Vec<u64> = {
        let mut rows = Vec::new();
        for table in spec.per_table().iter().take(2) {
            rows.push(engine.run(table).await.unwrap().manifest.rows);
        }
        rows
    };
    assert_eq!(again, [0, 1]);
    assert_eq!(
        column(&lab.rows("ventas/carga_multi_clientes").await, "id"),
        [json!(7), json!(8)]
    );
}
