//! Both queues (Redis in production, SQLite in the embedded mode) keep the same promises: a
//! scheduled time is enqueued once, one taker per job, a retry waits in the queue, a stopped
//! worker's jobs go back once, dead jobs stay with their reason; and the SQLite file's kills,
//! locks, counters, and two schedulers over one file. The SQLite half needs no server.

use std::time::Duration;

use carga_config::DatasetSpec;
use carga_scheduler::queue::{JobQueue, QueueSettings, Settlement, SqliteQueue};
use carga_scheduler::{Catalog, ExtractionJob, RunReason, Scheduler, SchedulerSettings};
use chrono::Utc;

mod common;

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

/// The production queue on the local Redis, under a name of its own.
async fn redis(heartbeat: Duration) -> JobQueue {
    JobQueue::connect(&QueueSettings {
        name: format!("carga-test:queues-{}", uuid::Uuid::now_v7().simple()),
        heartbeat,
        missed_heartbeats: 2,
        ..QueueSettings::default()
    })
    .await
    .unwrap()
}

fn redis_available() -> bool {
    common::services_available(&[("Redis", "127.0.0.1:6379")])
}

#[tokio::test]
async fn a_scheduled_time_is_enqueued_once_and_taken_by_one_worker() {
    let lab = embedded(Duration::from_secs(10)).await;
    enqueue_take_and_settle(JobQueue::Embedded(lab.queue.clone())).await;
}

#[tokio::test]
async fn on_redis_a_scheduled_time_is_enqueued_once_and_taken_by_one_worker() {
    if !redis_available() {
        return;
    }
    enqueue_take_and_settle(redis(Duration::from_secs(10)).await).await;
}

#[tokio::test]
async fn the_jobs_of_a_worker_that_stopped_beating_go_back_to_the_queue() {
    let lab = embedded(Duration::from_millis(500)).await;
    hand_over(JobQueue::Embedded(lab.queue.clone())).await;
}

#[tokio::test]
async fn on_redis_the_jobs_of_a_worker_that_stopped_beating_go_back_to_the_queue() {
    if !redis_available() {
        return;
    }
    hand_over(redis(Duration::from_millis(500)).await).await;
}

/// One taker per job, oldest first; done leaves the queue; a job put back (busy dataset, or a
/// retry with its next attempt) waits out its delay in the queue; dead keeps the reason.
async fn enqueue_take_and_settle(queue: JobQueue) {
    let (first, again) = (
        scheduled_job("orders", 1_800_000_000),
        scheduled_job("orders", 1_800_000_000),
    );
    let on_demand = ExtractionJob::new("orders", RunReason::Trigger);
    assert_eq!(
        queue
            .enqueue(&[first.clone(), on_demand.clone()])
            .await
            .unwrap(),
        [true, true]
    );
    assert_eq!(
        queue.enqueue(&[again]).await.unwrap(),
        [false],
        "same time, other run id"
    );
    assert_eq!(
        queue.enqueue(std::slice::from_ref(&first)).await.unwrap(),
        [false]
    );
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.queued, stats.running), (2, 0));
    assert!(queue.contains(&first.run_id).await.unwrap());

    // Oldest first, each job to one taker, with its take count.
    let taken = queue.take("w1").await.unwrap().unwrap();
    assert_eq!((&taken.job, taken.takes), (&first, 1));
    let second = queue.take("w2").await.unwrap().unwrap();
    assert_eq!(second.job.run_id, on_demand.run_id);
    assert!(queue.take("w3").await.unwrap().is_none());
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.queued, stats.running, stats.workers), (0, 2, 3));
    let workers = queue.workers(Duration::from_secs(30)).await.unwrap();
    let w1 = workers.iter().find(|w| w.name == "w1").unwrap();
    assert_eq!(w1.running, std::slice::from_ref(&first.run_id));
    assert!(workers.iter().all(|w| w.alive));

    // Done leaves the queue; a retry waits its delay with its next attempt's number.
    queue
        .settle("w1", &first.run_id, &Settlement::Done)
        .await
        .unwrap();
    assert!(!queue.contains(&first.run_id).await.unwrap());
    queue
        .settle(
            "w2",
            &on_demand.run_id,
            &Settlement::Later {
                delay: Duration::from_millis(1500),
                reason: "connection refused".into(),
                job: Some(Box::new(on_demand.next_attempt())),
            },
        )
        .await
        .unwrap();
    let stats = queue.stats().await.unwrap();
    assert_eq!(
        (stats.scheduled, stats.running),
        (1, 0),
        "waiting, not running"
    );
    assert!(queue.take("w1").await.unwrap().is_none(), "not due yet");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let back = queue.take("w1").await.unwrap().unwrap();
    assert_eq!(back.job.run_id, on_demand.run_id);
    assert_eq!((back.job.attempt, back.takes), (2, 2));
    // A worker that lost the job (it was handed to another) cannot settle it.
    queue
        .settle("w2", &back.job.run_id, &Settlement::Done)
        .await
        .unwrap();
    assert!(
        queue.contains(&back.job.run_id).await.unwrap(),
        "w1 holds it"
    );
    queue
        .settle(
            "w1",
            &back.job.run_id,
            &Settlement::Dead("source missing".into()),
        )
        .await
        .unwrap();
    assert!(queue.is_dead(&back.job.run_id).await.unwrap());
    assert_eq!(
        queue.dead_jobs().await.unwrap(),
        std::slice::from_ref(&back.job.run_id)
    );
    assert_eq!(queue.stats().await.unwrap().dead, 1);
    queue.forget(&back.job.run_id).await.unwrap();
    assert!(queue.dead_jobs().await.unwrap().is_empty());
    let stats = queue.stats().await.unwrap();
    assert_eq!(
        (stats.queued, stats.scheduled, stats.running, stats.dead),
        (0, 0, 0, 0)
    );
}

/// A worker that stops beating (killed) loses its jobs to the others, each handed back once; a
/// worker the queue forgot (a Redis restart) is registered again by its next heartbeat.
async fn hand_over(queue: JobQueue) {
    let job = ExtractionJob::new("orders", RunReason::Trigger);
    queue.enqueue(std::slice::from_ref(&job)).await.unwrap();
    queue.take("victim").await.unwrap().unwrap();
    queue.heartbeat("rescuer").await.unwrap();
    // Alive: nothing to recover.
    assert!(queue.recover_orphans("rescuer").await.unwrap().is_empty());
    // Killed: no heartbeat for more than two intervals.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    queue.heartbeat("rescuer").await.unwrap();
    assert_eq!(
        queue.recover_orphans("rescuer").await.unwrap(),
        std::slice::from_ref(&job.run_id)
    );
    assert!(
        queue.recover_orphans("other").await.unwrap().is_empty(),
        "handed back once"
    );
    let again = queue.take("rescuer").await.unwrap().unwrap();
    assert_eq!((again.job.run_id, again.takes), (job.run_id, 2));
    let workers = queue.workers(Duration::from_millis(1000)).await.unwrap();
    assert!(
        workers
            .iter()
            .filter(|w| w.name == "victim")
            .all(|w| !w.alive && w.running.is_empty())
    );
    queue.deregister("victim").await.unwrap();
    // A heartbeat after the queue forgot the worker registers it again.
    queue.heartbeat("victim").await.unwrap();
    assert!(
        queue
            .workers(Duration::from_secs(5))
            .await
            .unwrap()
            .iter()
            .any(|w| w.name == "victim" && w.alive)
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
