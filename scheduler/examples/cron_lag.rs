//! Benchmark: N datasets scheduled every minute, two scheduler replicas, for M minutes. Reports
//! how late each job was enqueued after its cron time (the run history's enqueued_at minus
//! scheduled_for) and checks each (dataset, minute) was enqueued exactly once.
//!
//! `cargo run -p carga-scheduler --example cron_lag -- [datasets] [minutes] [redis|embedded]`:
//! `redis` (default) uses PostgreSQL and Redis on loopback; `embedded` the SQLite catalog and
//! queue of `carga serve` in a temporary folder (see benches/scheduler_lag.sh).

use std::collections::BTreeMap;
use std::time::Duration;

use carga_config::DatasetSpec;
use carga_scheduler::catalog::RunFilter;
use carga_scheduler::queue::SqliteQueue;
use carga_scheduler::{Catalog, JobQueue, QueueSettings, Scheduler, SchedulerSettings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let datasets: usize = args.next().map_or(Ok(1000), |a| a.parse())?;
    let minutes: u64 = args.next().map_or(Ok(2), |a| a.parse())?;
    let backend = args.next().unwrap_or_else(|| "redis".into());
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let state = tempfile::tempdir()?;
    let (catalog, queue) = match backend.as_str() {
        "embedded" => {
            let catalog = Catalog::open_sqlite(&state.path().join("carga.db")).await?;
            catalog.migrate().await?;
            let pool = catalog.sqlite_pool().expect("SQLite").clone();
            let queue = JobQueue::Embedded(SqliteQueue::new(pool, QueueSettings::default()));
            (catalog, queue)
        }
        "redis" => {
            let admin =
                sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres").await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE carga_bench_{unique}"
            )))
            .execute(&admin)
            .await?;
            let catalog = Catalog::connect(&format!(
                "postgres://postgres@127.0.0.1:5432/carga_bench_{unique}"
            ))
            .await?;
            catalog.migrate().await?;
            let queue = JobQueue::connect(&QueueSettings {
                name: format!("carga-bench:{unique}"),
                ..QueueSettings::default()
            })
            .await?;
            (catalog, queue)
        }
        other => anyhow::bail!("backend '{other}' is not redis or embedded"),
    };
    for i in 0..datasets {
        let spec = DatasetSpec::from_yaml(&format!(
            "id: ds{i:05}\nsource: {{format: csv, location: /data/ds{i:05}.csv}}\ntrigger: timed_pull\ncron: '* * * * *'\n"
        ))?;
        catalog.upsert_dataset(&spec, "bench", true).await?;
    }
    eprintln!("{datasets} datasets every minute, 2 scheduler replicas, {minutes} min, {backend}");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let scheduler =
            Scheduler::new(catalog.clone(), queue.clone(), SchedulerSettings::default());
        let mut rx = stop_rx.clone();
        replicas.push(tokio::spawn(scheduler.run(async move {
            let _ = rx.wait_for(|s| *s).await;
        })));
    }
    tokio::time::sleep(Duration::from_secs(60 * minutes + 5)).await;
    stop_tx.send(true)?;
    for replica in replicas {
        replica.await?;
    }
    let runs = catalog
        .search_runs(&RunFilter {
            limit: i64::try_from(datasets)? * (i64::try_from(minutes)? + 2) * 2,
            ..RunFilter::default()
        })
        .await?;
    // Per fire time: the lags in seconds and the datasets enqueued.
    let mut fires: BTreeMap<_, (Vec<f64>, Vec<String>)> = BTreeMap::new();
    for run in runs {
        let Some(at) = run.scheduled_for else {
            continue;
        };
        let lag = (run.enqueued_at - at).num_microseconds().unwrap_or(0) as f64 / 1e6;
        let fire = fires.entry(at).or_default();
        fire.0.push(lag);
        fire.1.push(run.dataset_id);
    }
    println!("fire time (UTC)        jobs  datasets  lag p50   lag p99   lag max");
    let mut all_once = true;
    for (at, (mut lags, mut ids)) in fires {
        lags.sort_by(f64::total_cmp);
        let jobs = ids.len();
        ids.sort();
        ids.dedup();
        all_once &= jobs == ids.len();
        let pick = |q: f64| lags[((lags.len() - 1) as f64 * q).round() as usize];
        println!(
            "{}  {jobs:>5}  {:>8}  {:>6.3} s  {:>6.3} s  {:>6.3} s",
            at.format("%Y-%m-%d %H:%M:%S"),
            ids.len(),
            pick(0.5),
            pick(0.99),
            pick(1.0),
        );
    }
    let stats = queue.stats().await?;
    println!(
        "queue holds {} jobs; every (dataset, time) enqueued once: {all_once}",
        stats.queued
    );
    Ok(())
}
