//! Benchmark: one partitioned PostgreSQL table read by 1, 2, 4, 8... `carga worker` processes
//! (`--concurrency 1` each) through the Redis queue, with `partitions.across_workers`: the run
//! that takes the job coordinates, the chunks are jobs any worker takes. Reports, per worker
//! count and repetition, the time from the enqueue to the run's recorded end, rows/s, the
//! chunks each worker read and the workers' peak RSS, as JSON lines on stdout.
//!
//! `scale_out <carga binary> <table> <partition column> <workers, e.g. 1,2,4,8> <chunks>
//! <repetitions>` against the local PostgreSQL (the table in `CARGA_BENCH_PG_URL`, default the
//! `test` database; a new catalog database) and Redis; see benches/scale_out.py.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use carga_config::DatasetSpec;
use carga_scheduler::{Catalog, ExtractionJob, JobQueue, QueueSettings, RunReason};

const PG: &str = "postgres://postgres@127.0.0.1:5432";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [carga, table, column, workers, chunks, repeat] = args.as_slice() else {
        anyhow::bail!(
            "usage: scale_out <carga binary> <table> <partition column> <workers 1,2,4> <chunks> <repetitions>"
        );
    };
    let source_url = std::env::var("CARGA_BENCH_PG_URL").unwrap_or_else(|_| format!("{PG}/test"));
    let counts: Vec<usize> = workers
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let chunks: u32 = chunks.parse()?;
    let repeat: usize = repeat.parse()?;
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let admin = sqlx::PgPool::connect(&format!("{PG}/postgres")).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE carga_scale_{unique}"
    )))
    .execute(&admin)
    .await?;
    let catalog_url = format!("{PG}/carga_scale_{unique}");
    let catalog = Catalog::connect(&catalog_url).await?;
    catalog.migrate().await?;
    let queue_settings = QueueSettings {
        name: format!("carga-bench-scale:{unique}"),
        ..QueueSettings::default()
    };
    let queue = JobQueue::connect(&queue_settings).await?;
    let state = tempfile::tempdir()?;
    let key_file = state.path().join("keys.json");
    carga_jobs::encryption::MasterKeyring::create_file(&key_file, "carga-master")?;
    let secrets_file = state.path().join("secrets.json");
    std::fs::write(
        &secrets_file,
        serde_json::json!({ "pg": { "url": source_url } }).to_string(),
    )?;
    let spec = DatasetSpec::from_yaml(&format!(
        "id: scale\nsource:\n  format: postgres\n  table: {table}\n  partitions: {{column: {column}, count: {chunks}, across_workers: true}}\n\
         connection_id: pg\nmode: complete\ntrigger: callback\n"
    ))?;
    catalog.upsert_dataset(&spec, "bench", true).await?;

    for round in 0..repeat {
        for &count in &counts {
            let bucket = state.path().join(format!("bucket-{count}-{round}"));
            let mut workers: Vec<(String, Child)> = (0..count)
                .map(|i| {
                    let name = format!("w{i}");
                    let child = Command::new(carga)
                        .args(["worker", "--name", &name, "--concurrency", "1"])
                        .env("CARGA_CATALOG_URL", &catalog_url)
                        .env("CARGA_REDIS_URL", &queue_settings.redis_url)
                        .env("CARGA_QUEUE", &queue_settings.name)
                        .env("CARGA_BUCKET", &bucket)
                        .env("CARGA_KEY_FILE", &key_file)
                        .env("CARGA_SECRETS_FILE", &secrets_file)
                        .env("RUST_LOG", "warn")
                        .env_remove("CARGA_SETTINGS")
                        .stdout(Stdio::null())
                        .stderr(std::fs::File::create(
                            state.path().join(format!("{name}.log")),
                        )?)
                        .spawn()?;
                    Ok((name, child))
                })
                .collect::<anyhow::Result<_>>()?;
            // Every worker registered before the job goes in, so each can take a chunk.
            let deadline = Instant::now() + Duration::from_secs(30);
            while queue.workers(Duration::from_secs(30)).await?.len() < count {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "workers did not start: {}",
                    std::fs::read_to_string(state.path().join("w0.log")).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let job = ExtractionJob::new("scale", RunReason::Trigger);
            catalog
                .insert_queued_runs(std::slice::from_ref(&job))
                .await?;
            let started = Instant::now();
            queue.enqueue(std::slice::from_ref(&job)).await?;
            let mut peak_rss_kib = 0u64;
            let run = loop {
                for (_, child) in &workers {
                    peak_rss_kib = peak_rss_kib.max(peak_rss(child.id()));
                }
                if let Some(run) = catalog.run(&job.run_id).await?
                    && ["succeeded", "failed", "dead"].contains(&run.state.as_str())
                {
                    break run;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let seconds = started.elapsed().as_secs_f64();
            for (_, child) in &workers {
                peak_rss_kib = peak_rss_kib.max(peak_rss(child.id()));
            }
            for (_, child) in &mut workers {
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = std::fs::remove_dir_all(&bucket);
            anyhow::ensure!(
                run.state == "succeeded",
                "run ended {}: {:?}",
                run.state,
                run.error
            );
            let rows = run.rows_written.unwrap_or(0);
            println!(
                "{}",
                serde_json::json!({
                    "workers": count,
                    "round": round,
                    "chunks": chunks,
                    "rows": rows,
                    "seconds": seconds,
                    "rows_per_second": rows as f64 / seconds,
                    "peak_worker_rss_mib": peak_rss_kib / 1024,
                    "coordinator": run.worker,
                })
            );
        }
    }
    drop(catalog);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS carga_scale_{unique} WITH (FORCE)"
    )))
    .execute(&admin)
    .await?;
    Ok(())
}

/// A process's peak resident memory so far (KiB), from /proc.
fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
