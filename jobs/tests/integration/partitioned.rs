//! Partitioned extraction against the real PostgreSQL: key ranges from the data, one snapshot for
//! all chunks, per-chunk retries, and a run that commits only when every chunk is written.

use std::collections::BTreeSet;

use crate::common::{Lab, column, service_available};
use serde_json::json;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};

fn url() -> String {
    std::env::var("CARGA_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub(crate) async fn setup(schema: &str) -> Option<(Lab, PgConnection)> {
    if !service_available("PostgreSQL", "127.0.0.1:5432") {
        return None;
    }
    let mut lab = Lab::new();
    lab.settings.secrets_file =
        lab.write("secrets.json", json!({"pg": {"url": url()}}).to_string());
    lab.settings.batch_rows = 1024;
    let mut conn = PgConnection::connect(&url()).await.unwrap();
    let reset = format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}");
    conn.execute(AssertSqlSafe(reset)).await.unwrap();
    Some((lab, conn))
}

pub(crate) fn spec(lab: &Lab, id: &str, table: &str, extra: &str) -> carga_config::DatasetSpec {
    lab.spec(&format!(
        "id: {id}\nsource:\n  format: postgres\n  table: {table}\n{extra}connection_id: pg\ntrigger: callback\n"
    ))
}

fn ids(rows: &[serde_json::Value], name: &str) -> Vec<i64> {
    let mut ids: Vec<i64> = column(rows, name)
        .iter()
        .filter_map(|v| v.as_i64())
        .collect();
    ids.sort();
    ids
}

/// Skewed keys (half the rows on a few values), some null keys, several chunks.
#[tokio::test]
async fn chunks_cover_every_row_once_with_bounds_from_the_data() {
    let Some((lab, mut conn)) = setup("carga_chunks").await else {
        return;
    };
    conn.execute(
        "CREATE TABLE carga_chunks.t (id bigint PRIMARY KEY, k int, note text);
         INSERT INTO carga_chunks.t SELECT g, CASE WHEN g % 2 = 0 THEN g % 3 ELSE g END, 'n' || g
           FROM generate_series(1, 20000) g;
         UPDATE carga_chunks.t SET k = NULL WHERE id % 1000 = 7;
         ANALYZE carga_chunks.t;",
    )
    .await
    .unwrap();
    let partitioned = spec(
        &lab,
        "chunked",
        "carga_chunks.t",
        "  partitions: {column: k, count: 4, parallel: 2}\nkey: [id]\n",
    );
    let outcome = lab.engine().run(&partitioned).await.unwrap();
    assert_eq!(outcome.manifest.rows, 20000);
    let chunk_names: BTreeSet<String> = outcome
        .manifest
        .files
        .iter()
        .map(|f| f.path.rsplit('/').next().unwrap()[..11].to_owned())
        .collect();
    assert!(chunk_names.len() >= 3, "{chunk_names:?}");
    let keys = outcome.report.duplicate_keys.as_ref().unwrap();
    assert_eq!(
        (keys.duplicate_rows, keys.checked_rows, keys.complete),
        (0, 20000, true),
        "no key duplicated across chunks"
    );
    let rows = lab.rows("chunked").await;
    assert_eq!(ids(&rows, "id"), (1..=20000).collect::<Vec<_>>());
    assert_eq!(
        rows.iter().filter(|r| r.get("k").is_none()).count(),
        20,
        "null keys are read once, by the first chunk"
    );
    // Same rows as an unpartitioned read.
    let single = spec(&lab, "single", "carga_chunks.t", "");
    lab.engine().run(&single).await.unwrap();
    assert_eq!(ids(&lab.rows("single").await, "id"), ids(&rows, "id"));
}

#[tokio::test]
async fn a_failing_chunk_is_retried_alone_and_the_run_commits_once() {
    let Some((lab, mut conn)) = setup("carga_retry").await else {
        return;
    };
    conn.execute(
        "CREATE TABLE carga_retry.t (id bigint PRIMARY KEY, at timestamptz NOT NULL);
         INSERT INTO carga_retry.t SELECT g, '2026-01-01'::timestamptz + g * interval '1 s'
           FROM generate_series(1, 8000) g;",
    )
    .await
    .unwrap();
    let partitioned = spec(
        &lab,
        "retry",
        "carga_retry.t",
        "  partitions: {column: id, count: 4, attempts: 3}\nmode: delta\ntimestamp_column: at\nkey: [id]\n",
    );
    let engine = lab.engine().inject_chunk_faults(1, 2);
    let outcome = engine.run(&partitioned).await.unwrap();
    assert_eq!(outcome.manifest.rows, 8000);
    assert_eq!(
        ids(&lab.rows("retry").await, "id"),
        (1..=8000).collect::<Vec<_>>()
    );
    // The failed attempts' parts are gone: every Parquet file in the bucket is committed.
    assert_eq!(lab.parquet_files().len(), outcome.manifest.files.len());
    let watermark = outcome.manifest.watermark.unwrap().to.unwrap();
    assert_eq!(watermark.values["id"], "8000");

    // Delta after a partitioned run: only the new rows, from whichever chunk holds them.
    conn.execute(
        "INSERT INTO carga_retry.t VALUES (8001, '2026-06-01'), (0, '2026-06-01'), (4000, '2026-06-02')
         ON CONFLICT (id) DO UPDATE SET at = excluded.at",
    )
    .await
    .unwrap();
    let outcome = lab.engine().run(&partitioned).await.unwrap();
    assert_eq!(outcome.manifest.rows, 3);
    assert_eq!(
        lab.engine().run(&partitioned).await.unwrap().manifest.rows,
        0
    );
}

#[tokio::test]
async fn a_chunk_that_keeps_failing_fails_the_run_and_leaves_nothing() {
    let Some((lab, mut conn)) = setup("carga_giveup").await else {
        return;
    };
    conn.execute(
        "CREATE TABLE carga_giveup.t (id bigint);
         INSERT INTO carga_giveup.t SELECT g FROM generate_series(1, 6000) g;",
    )
    .await
    .unwrap();
    let partitioned = spec(
        &lab,
        "giveup",
        "carga_giveup.t",
        "  partitions: {column: id, count: 3, attempts: 2}\n",
    );
    let err = lab
        .engine()
        .inject_chunk_faults(2, 5)
        .run(&partitioned)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("chunk 2") && err.contains("injected fault"),
        "{err}"
    );
    assert!(lab.manifests("giveup").await.is_empty());
    assert!(lab.parquet_files().is_empty(), "{:?}", lab.parquet_files());

    let err = lab
        .engine()
        .run(&spec(
            &lab,
            "giveup",
            "carga_giveup.t",
            "  partitions: {column: nope, count: 3}\n",
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("partition column 'nope'"), "{err}");
}

/// Pairs of rows committed together at both ends of the key space while a sequential
/// partitioned read runs: chunks read at different times, but in one snapshot every pair is
/// either wholly in the output or wholly absent.
#[tokio::test]
async fn all_chunks_read_one_snapshot() {
    let Some((lab, mut conn)) = setup("carga_snap").await else {
        return;
    };
    conn.execute(
        "CREATE TABLE carga_snap.t (k bigint PRIMARY KEY, pad text);
         INSERT INTO carga_snap.t SELECT g, repeat('x', 40) FROM generate_series(1, 60000) g;
         ANALYZE carga_snap.t;",
    )
    .await
    .unwrap();
    let partitioned = spec(
        &lab,
        "snap",
        "carga_snap.t",
        "  partitions: {column: k, count: 4, parallel: 1}\n",
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut conn = PgConnection::connect(&url()).await.unwrap();
            let mut pairs = 0i64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                pairs += 1;
                let sql = format!(
                    "INSERT INTO carga_snap.t VALUES (-{pairs}, 'low'), ({}, 'high')",
                    1_000_000 + pairs
                );
                conn.execute(AssertSqlSafe(sql)).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            pairs
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let outcome = lab.engine().run(&partitioned).await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let written_pairs = writer.await.unwrap();

    let keys = ids(&lab.rows("snap").await, "k");
    let low: Vec<i64> = keys.iter().filter(|k| **k < 0).map(|k| -k).collect();
    let high: Vec<i64> = keys
        .iter()
        .filter(|k| **k > 1_000_000)
        .map(|k| k - 1_000_000)
        .collect();
    let mut low_sorted = low.clone();
    low_sorted.sort();
    assert_eq!(low_sorted, high, "every pair whole or absent");
    assert!(
        (high.len() as i64) < written_pairs,
        "pairs were committed during the run ({} seen of {written_pairs})",
        high.len()
    );
    assert_eq!(outcome.manifest.rows as usize, 60000 + 2 * high.len());
}
