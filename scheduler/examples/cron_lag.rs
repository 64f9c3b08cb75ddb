//! Benchmark: N datasets scheduled every minute, two scheduler replicas, for M minutes. Reports
//! how late each job was enqueued after its cron time (from `dataset_runs`: enqueued_at minus
//! scheduled_for) and checks each (dataset, minute) was enqueued exactly once.
//!
//! `cargo run -p carga-scheduler --example cron_lag -- [datasets] [minutes]` with PostgreSQL and
//! Redis on loopback (see benches/scheduler_lag.sh).

use std::time::Duration;

use carga_config::DatasetSpec;
use carga_scheduler::{Catalog, JobQueue, QueueSettings, Scheduler, SchedulerSettings};
use sqlx::Row;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let datasets: usize = args.next().map_or(Ok(1000), |a| a.parse())?;
    let minutes: u64 = args.next().map_or(Ok(2), |a| a.parse())?;
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres").await?;
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
    for i in 0..datasets {
        let spec = DatasetSpec::from_yaml(&format!(
            "id: ds{i:05}\nsource: {{format: csv, location: /data/ds{i:05}.csv}}\ntrigger: timed_pull\ncron: '* * * * *'\n"
        ))?;
        catalog.upsert_dataset(&spec, "bench", true).await?;
    }
    let queue = JobQueue::connect(&QueueSettings {
        name: format!("carga-bench:{unique}"),
        ..QueueSettings::default()
    })
    .await?;
    eprintln!("{datasets} datasets every minute, 2 scheduler replicas, {minutes} min");
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
    // Start just after a minute boundary so every measured minute is whole.
    tokio::time::sleep(Duration::from_secs(60 * minutes + 5)).await;
    stop_tx.send(true)?;
    for replica in replicas {
        replica.await?;
    }
    let rows = sqlx::query(
        "SELECT scheduled_for, count(*) AS jobs, count(DISTINCT dataset_id) AS datasets,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM enqueued_at - scheduled_for)) AS p50,
                percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM enqueued_at - scheduled_for)) AS p99,
                max(extract(epoch FROM enqueued_at - scheduled_for))::float8 AS max
         FROM dataset_runs GROUP BY scheduled_for ORDER BY scheduled_for",
    )
    .fetch_all(catalog.postgres_pool().expect("a PostgreSQL catalog"))
    .await?;
    println!("fire time (UTC)        jobs  datasets  lag p50   lag p99   lag max");
    let mut all_once = true;
    for row in &rows {
        let at: chrono::DateTime<chrono::Utc> = row.get("scheduled_for");
        let jobs: i64 = row.get("jobs");
        let distinct: i64 = row.get("datasets");
        all_once &= jobs == distinct;
        println!(
            "{}  {jobs:>5}  {distinct:>8}  {:>6.3} s  {:>6.3} s  {:>6.3} s",
            at.format("%Y-%m-%d %H:%M:%S"),
            row.get::<f64, _>("p50"),
            row.get::<f64, _>("p99"),
            row.get::<f64, _>("max"),
        );
    }
    let stats = queue.stats().await?;
    println!(
        "queue holds {} jobs; every (dataset, time) enqueued once: {all_once}",
        stats.queued
    );
    Ok(())
}
