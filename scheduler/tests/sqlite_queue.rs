//! The embedded mode's queue (SQLite) keeps the promises the Redis queue keeps: a scheduled time
//! is enqueued once, one taker per job, a stopped worker's jobs go back, dead jobs stay with their
//! reason, kills, locks, counters, and two schedulers over one file. Needs no server.

use std::time::Duration;

use carga_config::DatasetSpec;
use carga_scheduler::queue::sqlite::Settlement;
use carga_scheduler::queue::{JobQueue, QueueSettings, SqliteQueue};
use carga_scheduler::{Catalog, ExtractionJob, RunReason, Scheduler, SchedulerSettings};
use chrono::Utc;

struct Embedded {
    _dir: tempfile::TempDir,
    catalog: Catalog,
    queue: SqliteQueue,
}

async fn embedded(heartbeat: Duration) -> Embedded {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open_sqlite(&dir.path().join("carga.db"))
        .await
        .unwrap();
    catalog.migrate().await.unwrap();
    let queue = SqliteQueue::new(
        catalog.sqlite_pool().unwrap().clone(),
        QueueSettings {
            heartbeat,
            missed_heartbeats: 2,
            ..QueueSettings::default()
        },
    );
    Embedded {
        _dir: dir,
        catalog,
        queue,
    }
}

fn scheduled_job(dataset: &str, at: i64) -> ExtractionJob {
    let mut job = ExtractionJob::new(dataset, RunReason::Schedule);
    job.scheduled_for = chrono::DateTime::from_timestamp(at, 0);
    job
}

#[tokio::test]
async fn a_scheduled_time_is_enqueued_once_and_taken_by_one_worker() {
    let lab = embedded(Duration::from_secs(10)).await;
    let (first, again) = (
        scheduled_job("orders", 1_800_000_000),
        scheduled_job("orders", 1_800_000_000),
    );
    let on_demand = ExtractionJob::new("orders", RunReason::Trigger);
    assert_eq!(
        lab.queue
            .enqueue(&[first.clone(), on_demand.clone()])
            .await
            .unwrap(),
        [true, true]
    );
    assert_eq!(
        lab.queue.enqueue(&[again]).await.unwrap(),
        [false],
        "same time, other run id"
    );
    assert_eq!(
        lab.queue
            .enqueue(std::slice::from_ref(&first))
            .await
            .unwrap(),
        [false]
    );
    let stats = lab.queue.stats().await.unwrap();
    assert_eq!((stats.queued, stats.running), (2, 0));

    // Oldest first, each job to one taker, with its take count.
    let (taken, count) = lab.queue.take("w1").await.unwrap().unwrap();
    assert_eq!((taken.run_id.as_str(), count), (first.run_id.as_str(), 1));
    assert_eq!(taken, first);
    let (second, _) = lab.queue.take("w2").await.unwrap().unwrap();
    assert_eq!(second.run_id, on_demand.run_id);
    assert!(lab.queue.take("w3").await.unwrap().is_none());
    lab.queue.heartbeat("w1").await.unwrap();
    lab.queue.heartbeat("w2").await.unwrap();
    let stats = lab.queue.stats().await.unwrap();
    assert_eq!((stats.queued, stats.running, stats.workers), (0, 2, 2));
    let workers = lab.queue.workers(Duration::from_secs(30)).await.unwrap();
    assert_eq!(workers.len(), 2);
    assert_eq!(workers[0].running, std::slice::from_ref(&first.run_id));
    assert!(workers.iter().all(|w| w.alive));

    // Done leaves the queue; put back waits its delay; dead keeps the reason until forgotten.
    lab.queue
        .settle(&first.run_id, &Settlement::Done)
        .await
        .unwrap();
    lab.queue
        .settle(
            &on_demand.run_id,
            &Settlement::Later {
                delay: Duration::from_millis(300),
                reason: "dataset busy".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(lab.queue.stats().await.unwrap().scheduled, 1);
    assert!(lab.queue.take("w1").await.unwrap().is_none(), "not due yet");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (back, count) = lab.queue.take("w1").await.unwrap().unwrap();
    assert_eq!(
        (back.run_id.as_str(), count),
        (on_demand.run_id.as_str(), 2)
    );
    lab.queue
        .settle(&back.run_id, &Settlement::Dead("source missing".into()))
        .await
        .unwrap();
    assert!(lab.queue.is_dead(&back.run_id).await.unwrap());
    assert_eq!(
        lab.queue.dead_jobs().await.unwrap(),
        std::slice::from_ref(&back.run_id)
    );
    assert_eq!(
        JobQueue::Embedded(lab.queue.clone())
            .stats()
            .await
            .unwrap()
            .dead,
        1
    );
    lab.queue.forget(&back.run_id).await.unwrap();
    assert!(lab.queue.dead_jobs().await.unwrap().is_empty());
    let stats = lab.queue.stats().await.unwrap();
    assert_eq!(
        (stats.queued, stats.scheduled, stats.running, stats.dead),
        (0, 0, 0, 0)
    );
}

#[tokio::test]
async fn the_jobs_of_a_worker_that_stopped_beating_go_back_to_the_queue() {
    let lab = embedded(Duration::from_millis(100)).await;
    let job = ExtractionJob::new("orders", RunReason::Trigger);
    lab.queue.enqueue(std::slice::from_ref(&job)).await.unwrap();
    lab.queue.heartbeat("victim").await.unwrap();
    lab.queue.take("victim").await.unwrap().unwrap();
    // Alive: nothing to recover.
    assert!(lab.queue.recover_orphans().await.unwrap().is_empty());
    // Killed: no heartbeat for more than two intervals.
    tokio::time::sleep(Duration::from_millis(300)).await;
    lab.queue.heartbeat("rescuer").await.unwrap();
    assert_eq!(
        lab.queue.recover_orphans().await.unwrap(),
        std::slice::from_ref(&job.run_id)
    );
    let (again, count) = lab.queue.take("rescuer").await.unwrap().unwrap();
    assert_eq!((again.run_id, count), (job.run_id, 2));
    let workers = lab.queue.workers(Duration::from_millis(200)).await.unwrap();
    let victim = workers.iter().find(|w| w.name == "victim").unwrap();
    assert!(!victim.alive && victim.running.is_empty());
    lab.queue.deregister("victim").await.unwrap();
    assert_eq!(
        lab.queue
            .workers(Duration::from_secs(1))
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn kills_locks_counters_and_fire_times_are_kept_in_the_file() {
    let lab = embedded(Duration::from_secs(10)).await;
    let queue = JobQueue::Embedded(lab.queue.clone());
    // A queued job is removed once; a taken one is not removable, only cancellable.
    let jobs = [
        ExtractionJob::new("a", RunReason::Trigger),
        ExtractionJob::new("b", RunReason::Trigger),
    ];
    queue.enqueue(&jobs).await.unwrap();
    assert!(queue.remove_queued(&jobs[0].run_id).await.unwrap());
    assert!(!queue.remove_queued(&jobs[0].run_id).await.unwrap());
    lab.queue.take("w").await.unwrap().unwrap();
    assert!(!queue.remove_queued(&jobs[1].run_id).await.unwrap());
    assert!(!queue.is_cancelled(&jobs[1].run_id).await.unwrap());
    queue.request_cancel(&jobs[1].run_id).await.unwrap();
    assert!(queue.is_cancelled(&jobs[1].run_id).await.unwrap());

    // One holder per lock; only the holder renews or releases; an expired lock is free.
    let ttl = Duration::from_millis(300);
    assert!(queue.try_lock("ds", "one", ttl).await.unwrap());
    assert!(!queue.try_lock("ds", "two", ttl).await.unwrap());
    assert!(!queue.renew_lock("ds", "two", ttl).await.unwrap());
    queue.release_lock("ds", "two").await.unwrap();
    assert!(!queue.try_lock("ds", "two", ttl).await.unwrap());
    assert!(queue.renew_lock("ds", "one", ttl).await.unwrap());
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(queue.try_lock("ds", "two", ttl).await.unwrap(), "expired");
    assert!(!queue.renew_lock("ds", "one", ttl).await.unwrap(), "lost");
    queue.release_lock("ds", "two").await.unwrap();
    assert!(queue.try_lock("ds", "three", ttl).await.unwrap());

    // Counters add up; fire times overwrite.
    queue
        .add_counters("g", &[("rows".into(), 10.0), ("secs".into(), 0.5)])
        .await
        .unwrap();
    queue
        .add_counters("g", &[("rows".into(), 5.0)])
        .await
        .unwrap();
    let counters = queue.counters("g").await.unwrap();
    assert_eq!((counters["rows"], counters["secs"]), (15.0, 0.5));
    assert!(queue.counters("other").await.unwrap().is_empty());
    queue.record_fired(&[("a", 100), ("b", 200)]).await.unwrap();
    queue.record_fired(&[("a", 300)]).await.unwrap();
    let fired = queue.last_fired().await.unwrap();
    assert_eq!((fired["a"], fired["b"]), (300, 200));
    queue.ping().await.unwrap();
}

#[tokio::test]
async fn two_schedulers_over_one_file_enqueue_each_time_once_and_catch_up_once() {
    let lab = embedded(Duration::from_secs(10)).await;
    for i in 0..10 {
        let spec = DatasetSpec::from_yaml(&format!(
            "id: ds{i}\nsource: {{format: csv, location: /x.csv}}\nmode: complete\n\
             trigger: timed_pull\ncron: '0 */3 * * *'\n"
        ))
        .unwrap();
        lab.catalog
            .upsert_dataset(&spec, "test", true)
            .await
            .unwrap();
    }
    let queue = JobQueue::Embedded(lab.queue.clone());
    let settings = SchedulerSettings::default();
    let mut first = Scheduler::new(lab.catalog.clone(), queue.clone(), settings.clone());
    let mut second = Scheduler::new(lab.catalog.clone(), queue.clone(), settings);
    // Ten hours with nothing running: three or four fire times missed, one run each.
    let now = Utc::now() + chrono::Duration::hours(10);
    let (a, b) = tokio::join!(first.tick(now), second.tick(now));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.enqueued.len() + b.enqueued.len(), 10, "{a:?} {b:?}");
    assert_eq!(queue.stats().await.unwrap().queued, 10);
    assert_eq!(
        lab.catalog
            .runs(None, Some("queued"), 100)
            .await
            .unwrap()
            .len(),
        10
    );
    assert!(first.tick(now).await.unwrap().enqueued.is_empty());
    // A replica that computed its due times before the other recorded them (the race the
    // idempotency rows settle): it pushes all ten again and none is enqueued twice.
    sqlx::query("DELETE FROM scheduler_fired")
        .execute(lab.catalog.sqlite_pool().unwrap())
        .await
        .unwrap();
    let raced = second.tick(now).await.unwrap();
    assert_eq!((raced.enqueued.len(), raced.already_enqueued), (0, 10));
    let later = now + chrono::Duration::hours(3);
    let (a, b) = tokio::join!(first.tick(later), second.tick(later));
    assert_eq!(a.unwrap().enqueued.len() + b.unwrap().enqueued.len(), 10);
    assert_eq!(queue.stats().await.unwrap().queued, 20);
}
