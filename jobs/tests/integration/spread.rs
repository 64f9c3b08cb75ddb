//! A partitioned run spread over workers, its coordinator against stand-in workers: each chunk
//! order the run sends is read by `Engine::run_chunk` on a task of its own, as a worker that
//! took the chunk job would. (The same with real worker processes, a real queue and a `kill -9`
//! is in the worker's `queue` tests.)

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use carga_jobs::{ChunkDispatch, ChunkOrder, Engine, JobError};
use sqlx::Executor;

use crate::common::{Lab, column};
use crate::partitioned::{setup, spec};

/// What the stand-in workers do with one chunk.
#[derive(Clone, Copy, PartialEq)]
enum Twist {
    None,
    /// A first take died after writing a file; the second take reads the chunk.
    DeadFirstTake(usize),
    /// The chunk gives up (its last attempt failed) after the others wrote theirs.
    GivesUp(usize),
    /// The chunk's job leaves the queue without a note.
    Lost(usize),
}

struct Inner {
    engine: Engine,
    spec: carga_config::DatasetSpec,
    bucket: std::path::PathBuf,
    twist: Twist,
    queued: Mutex<HashSet<String>>,
    withdrawn: Mutex<Vec<String>>,
    waited: AtomicBool,
}

struct StandIns(Arc<Inner>);

impl StandIns {
    fn new(lab: &Lab, spec: &carga_config::DatasetSpec, twist: Twist) -> Arc<Self> {
        Arc::new(Self(Arc::new(Inner {
            engine: lab.engine(),
            spec: spec.clone(),
            bucket: lab.dir.path().join("bucket"),
            twist,
            queued: Mutex::default(),
            withdrawn: Mutex::default(),
            waited: AtomicBool::new(false),
        })))
    }
}

async fn work(inner: Arc<Inner>, order: ChunkOrder) {
    let index = order.chunk.index;
    let id = order.job_id();
    match inner.twist {
        Twist::GivesUp(i) if i == index => {
            // After the others wrote theirs: the run has files to remove.
            while inner.queued.lock().unwrap().len() > 1 {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            let error = JobError::Database {
                context: format!("chunk {index}"),
                message: "the server went away".into(),
            };
            inner.engine.chunk_gave_up(&order, &error).await;
        }
        Twist::Lost(i) if i == index => {}
        Twist::DeadFirstTake(i) if i == index => {
            // What a take killed mid-write leaves: a file under its own prefix, and no note.
            let dir = inner.bucket.join(format!(
                "raw/{}/ingest_date={}/{}",
                order.dataset, order.ingest_date, order.run_id
            ));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join(format!("{}00000.parquet", order.part_prefix(1))),
                b"half a file",
            )
            .unwrap();
            inner
                .engine
                .run_chunk(&inner.spec, &order, 2, "stand-in")
                .await
                .unwrap();
        }
        _ => {
            inner
                .engine
                .run_chunk(&inner.spec, &order, 1, "stand-in")
                .await
                .unwrap();
        }
    }
    inner.queued.lock().unwrap().remove(&id);
}

#[async_trait::async_trait]
impl ChunkDispatch for StandIns {
    async fn send(&self, orders: &[ChunkOrder]) -> carga_jobs::Result<()> {
        for order in orders {
            self.0.queued.lock().unwrap().insert(order.job_id());
            tokio::spawn(work(self.0.clone(), order.clone()));
        }
        Ok(())
    }

    async fn gone(&self, job_ids: &[String]) -> carga_jobs::Result<Vec<String>> {
        let queued = self.0.queued.lock().unwrap();
        Ok(job_ids
            .iter()
            .filter(|id| !queued.contains(*id))
            .cloned()
            .collect())
    }

    async fn withdraw(&self, job_ids: &[String]) {
        self.0
            .withdrawn
            .lock()
            .unwrap()
            .extend(job_ids.iter().cloned());
    }

    fn waiting(&self) {
        self.0.waited.store(true, Ordering::SeqCst);
    }
}

async fn run_spread(
    spec: &carga_config::DatasetSpec,
    workers: &Arc<StandIns>,
    engine: &Engine,
) -> Result<carga_jobs::RunOutcome, carga_jobs::RunFailure> {
    let dispatch: Arc<dyn ChunkDispatch> = workers.clone();
    engine
        .run_watched(
            spec,
            &uuid::Uuid::now_v7().to_string(),
            Some(dispatch),
            std::time::Duration::from_secs(60),
            |_, _| async {},
        )
        .await
}

fn sorted_ids(rows: &[serde_json::Value]) -> Vec<i64> {
    let mut ids: Vec<i64> = column(rows, "id")
        .iter()
        .filter_map(|v| v.as_i64())
        .collect();
    ids.sort();
    ids
}

/// Every row once, a key two chunks share found, the files of a dead take swept, the delta
/// watermark folded from the chunks, and the same rows as a run read in one process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spread_run_commits_every_row_once_and_sweeps_a_dead_takes_files() {
    let Some((lab, mut conn)) = setup("carga_spread").await else {
        return;
    };
    conn.execute(
        "CREATE TABLE carga_spread.t (id bigint, k int, at timestamptz NOT NULL);
         INSERT INTO carga_spread.t SELECT g, g % 997, '2026-01-01'::timestamptz + g * interval '1 s'
           FROM generate_series(1, 12000) g;
         -- id 5 again, in another chunk's range of k: a duplicate key across chunks.
         INSERT INTO carga_spread.t VALUES (5, 990, '2026-01-01');
         ANALYZE carga_spread.t;",
    )
    .await
    .unwrap();
    let spread = spec(
        &lab,
        "spread",
        "carga_spread.t",
        "  partitions: {column: k, count: 4, across_workers: true}\nmode: delta\ntimestamp_column: at\nkey: [id]\n",
    );
    let engine = lab.engine();
    let workers = StandIns::new(&lab, &spread, Twist::DeadFirstTake(1));
    let outcome = run_spread(&spread, &workers, &engine).await.unwrap();
    assert!(
        workers.0.waited.load(Ordering::SeqCst),
        "the coordinator gave its slot back"
    );
    assert_eq!(outcome.manifest.rows, 12001);
    let keys = outcome.report.duplicate_keys.as_ref().unwrap();
    assert_eq!(
        (keys.duplicate_rows, keys.checked_rows, keys.complete),
        (1, 12001, true),
        "the key two chunks share is found"
    );
    let mut ids = sorted_ids(&lab.rows("spread").await);
    assert_eq!(ids.len(), 12001);
    ids.dedup();
    assert_eq!(ids, (1..=12000).collect::<Vec<_>>());
    // Only the listed parts stay: the dead take's file and the notes are gone.
    let files = lab.parquet_files();
    assert_eq!(files.len(), outcome.manifest.files.len(), "{files:?}");
    assert!(
        files.iter().all(|f| !f.to_string_lossy().contains("-t1-")
            || !f.to_string_lossy().contains("part-c0001"))
    );
    let notes: Vec<_> = lab
        .bucket_files()
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("_chunks"))
        .collect();
    assert!(notes.is_empty(), "{notes:?}");
    let watermark = outcome
        .manifest
        .watermark
        .as_ref()
        .unwrap()
        .to
        .as_ref()
        .unwrap();
    assert_eq!(watermark.values["id"], "12000");

    // Delta: only the new rows, from whichever chunk holds them.
    conn.execute(
        "INSERT INTO carga_spread.t VALUES (20001, 3, '2026-06-01'), (20002, 500, '2026-06-02')",
    )
    .await
    .unwrap();
    let workers = StandIns::new(&lab, &spread, Twist::None);
    let outcome = run_spread(&spread, &workers, &engine).await.unwrap();
    assert_eq!(outcome.manifest.rows, 2);
    assert_eq!(
        outcome.manifest.watermark.unwrap().to.unwrap().values["id"],
        "20002"
    );

    // The same table read in one process gives the same rows.
    let single = spec(&lab, "single", "carga_spread.t", "key: [id]\n");
    engine.run(&single).await.unwrap();
    let mut all = sorted_ids(&lab.rows("spread").await);
    all.sort();
    assert_eq!(all, sorted_ids(&lab.rows("single").await));
}

/// A chunk that gives up, or whose job leaves the queue without a note, stops the run: the
/// other jobs are withdrawn and no manifest and no file of the run remain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_that_gives_up_or_vanishes_leaves_no_manifest_and_no_parts() {
    let Some((lab, mut conn)) = setup("carga_spread_fail").await else {
        return;
    };
    conn.execute(
        "CREATE TABLE carga_spread_fail.t (id bigint PRIMARY KEY);
         INSERT INTO carga_spread_fail.t SELECT g FROM generate_series(1, 9000) g;
         ANALYZE carga_spread_fail.t;",
    )
    .await
    .unwrap();
    let spread = spec(
        &lab,
        "fails",
        "carga_spread_fail.t",
        "  partitions: {column: id, count: 3, across_workers: true}\nkey: [id]\n",
    );
    let engine = lab.engine();
    let workers = StandIns::new(&lab, &spread, Twist::GivesUp(2));
    let failure = run_spread(&spread, &workers, &engine).await.unwrap_err();
    let message = failure.to_string();
    assert!(
        message.contains("chunk 2 gave up") && message.contains("the server went away"),
        "{message}"
    );
    assert!(
        !failure.error.is_validation(),
        "a transient cause: the run may try again"
    );
    assert_eq!(workers.0.withdrawn.lock().unwrap().len(), 3);
    assert!(lab.manifests("fails").await.is_empty());
    assert!(lab.parquet_files().is_empty(), "{:?}", lab.parquet_files());

    let workers = StandIns::new(&lab, &spread, Twist::Lost(0));
    let message = run_spread(&spread, &workers, &engine)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("left the queue without a result"),
        "{message}"
    );
    assert!(lab.manifests("fails").await.is_empty());
    assert!(lab.parquet_files().is_empty(), "{:?}", lab.parquet_files());
}
