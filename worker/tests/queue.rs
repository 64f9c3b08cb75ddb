//! The scheduler, the Redis queue and `carga worker` processes against the real PostgreSQL,
//! Redis and RabbitMQ: a cron fires and the job commits; two schedulers enqueue a time once; a
//! worker killed with SIGKILL mid-job is replaced by another with no duplicate output; a failing
//! source lands in the dead set after its retries; twenty runs survive a Redis restart and a
//! killed worker with no one stepping in. Each test has its own catalog database and queue name,
//! so they run side by side.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod common;

use carga_config::{DatasetSpec, Settings};
use carga_jobs::manifest::ManifestLog;
use carga_jobs::storage::Bucket;
use carga_scheduler::catalog::{Catalog, RunRecord};
use carga_scheduler::{JobQueue, QueueSettings, Scheduler, SchedulerSettings};
use chrono::Utc;
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

const REQUIRE_ALL: &str = "CARGA_TEST_REQUIRE_ALL";
const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// True when `probe` runs; otherwise a skip notice, or a failure under `CARGA_TEST_REQUIRE_ALL`.
fn skip_unless_tool(name: &str, probe: &mut Command) -> bool {
    if probe
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        return true;
    }
    let why = format!("{name} is not installed");
    if std::env::var(REQUIRE_ALL).is_ok_and(|v| v == "1") {
        panic!("{why}, and {REQUIRE_ALL}=1 forbids skipping");
    }
    eprintln!("SKIPPED: {why} (set {REQUIRE_ALL}=1 to make this a failure)");
    false
}

fn services_available() -> bool {
    let down: Vec<&str> = [
        ("PostgreSQL", "127.0.0.1:5432"),
        ("Redis", "127.0.0.1:6379"),
        ("RabbitMQ", "127.0.0.1:5672"),
    ]
    .into_iter()
    .filter(|(_, addr)| {
        TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).is_err()
    })
    .map(|(name, _)| name)
    .collect();
    if down.is_empty() {
        return true;
    }
    let why = format!("{} not reachable on loopback", down.join(", "));
    if std::env::var(REQUIRE_ALL).is_ok_and(|v| v == "1") {
        panic!("{why}, and {REQUIRE_ALL}=1 forbids skipping");
    }
    eprintln!("SKIPPED: {why} (set {REQUIRE_ALL}=1 to make this a failure)");
    false
}

/// One test's world: a catalog database, a queue name, a bucket and key, a secrets file.
struct Lab {
    dir: tempfile::TempDir,
    catalog_url: String,
    catalog: Catalog,
    queue_settings: QueueSettings,
    queue: JobQueue,
    settings: Settings,
    workers: Vec<Child>,
    /// Extra environment for the workers started from now on.
    worker_env: Vec<(&'static str, &'static str)>,
}

impl Lab {
    async fn new(name: &str) -> Self {
        Self::with_redis(name, &QueueSettings::default().redis_url).await
    }

    /// A lab whose queue lives on the Redis at `redis_url`.
    async fn with_redis(name: &str, redis_url: &str) -> Self {
        let unique = format!("{name}_{}", uuid::Uuid::now_v7().simple());
        let admin = sqlx::PgPool::connect(ADMIN_URL).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE carga_q_{unique}"
        )))
        .execute(&admin)
        .await
        .unwrap();
        let catalog_url = format!("postgres://postgres@127.0.0.1:5432/carga_q_{unique}");
        let catalog = Catalog::connect(&catalog_url).await.unwrap();
        catalog.migrate().await.unwrap();
        let queue_settings = QueueSettings {
            redis_url: redis_url.to_owned(),
            name: format!("carga-test:{unique}"),
            heartbeat: Duration::from_secs(1),
            missed_heartbeats: 2,
            ..QueueSettings::default()
        };
        let queue = JobQueue::connect(&queue_settings).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            bucket: dir.path().join("bucket").display().to_string(),
            key_file: dir.path().join("keys.json"),
            secrets_file: dir.path().join("secrets.json"),
            ..Settings::default()
        };
        carga_jobs::encryption::MasterKeyring::create_file(&settings.key_file, "carga-master")
            .unwrap();
        let secrets = serde_json::json!({ "catalog-db": { "url": catalog_url } });
        std::fs::write(&settings.secrets_file, secrets.to_string()).unwrap();
        Self {
            dir,
            catalog_url,
            catalog,
            queue_settings,
            queue,
            settings,
            workers: Vec::new(),
            worker_env: Vec::new(),
        }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts a `carga worker` process.
    /// `public.slow_events`: `rows` rows of a view that sleeps 20 ms a row, in the catalog's
    /// database (which the `catalog-db` connection reads).
    async fn create_slow_view(&self, rows: u32) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE events (id BIGINT PRIMARY KEY, v TEXT);
             INSERT INTO events SELECT g, 'v' || g FROM generate_series(1, {rows}) g;
             CREATE FUNCTION slowly(i BIGINT) RETURNS BIGINT VOLATILE LANGUAGE plpgsql
                 AS $$ BEGIN PERFORM pg_sleep(0.02); RETURN i; END $$;
             CREATE VIEW slow_events AS SELECT slowly(e.id) AS id, e.v FROM events e;"
        )))
        .execute(self.catalog.postgres_pool().expect("a PostgreSQL catalog"))
        .await
        .unwrap();
    }

    fn start_worker(&mut self, name: &str, extra: &[&str]) -> usize {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_carga"))
            .args(["worker", "--name", name, "--concurrency", "1"])
            .args(["--heartbeat-seconds", "1", "--missed-heartbeats", "2"])
            .args(["--lock-ttl-seconds", "2", "--lock-wait-seconds", "20"])
            .args(extra)
            .env("CARGA_CATALOG_URL", &self.catalog_url)
            .env("CARGA_REDIS_URL", &self.queue_settings.redis_url)
            .env("CARGA_QUEUE", &self.queue_settings.name)
            .env("CARGA_AMQP_URL", AMQP_URL)
            .env("CARGA_BUCKET", &self.settings.bucket)
            .env("CARGA_KEY_FILE", &self.settings.key_file)
            .env("CARGA_SECRETS_FILE", &self.settings.secrets_file)
            // A worker reads files only under its data roots: the lab folder.
            .env("CARGA_LOCAL_ROOTS", self.dir.path())
            .env("RUST_LOG", "info")
            .envs(self.worker_env.iter().copied())
            .env_remove("CARGA_SETTINGS")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.workers.push(child);
        self.workers.len() - 1
    }

    /// Stops a worker with SIGTERM (it finishes its job and deregisters) and waits for it.
    fn stop_worker(&mut self, index: usize) {
        let child = &mut self.workers[index];
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        child.wait().unwrap();
    }

    fn worker_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    async fn add_dataset(&self, yaml: &str) -> DatasetSpec {
        let spec = DatasetSpec::from_yaml(yaml).unwrap();
        spec.validate().unwrap();
        self.catalog
            .upsert_dataset(&spec, "test", true)
            .await
            .unwrap();
        spec
    }

    /// Puts a job on the queue as the HTTP trigger does: the run row, then the task.
    async fn submit(&self, job: &carga_scheduler::ExtractionJob) {
        self.catalog
            .insert_queued_runs(std::slice::from_ref(job))
            .await
            .unwrap();
        self.queue.enqueue(std::slice::from_ref(job)).await.unwrap();
    }

    /// Waits until the run has ended, whichever way.
    async fn wait_for_end(&self, run_id: &str) -> RunRecord {
        self.wait_for_run(
            run_id,
            &["succeeded", "failed", "dead"],
            Duration::from_secs(60),
        )
        .await
    }

    /// Waits until the run reaches one of `states`.
    async fn wait_for_run(&self, run_id: &str, states: &[&str], within: Duration) -> RunRecord {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(run) = self.catalog.run(run_id).await.unwrap()
                && states.contains(&run.state.as_str())
            {
                return run;
            }
            if tokio::time::Instant::now() > deadline {
                let run = self.catalog.run(run_id).await.unwrap();
                panic!(
                    "run {run_id} did not reach {states:?} within {within:?}: {run:#?}\nworker logs:\n{}",
                    self.workers_logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn workers_logs(&self) -> String {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .map(|e| {
                format!(
                    "--- {}\n{}",
                    e.path().display(),
                    std::fs::read_to_string(e.path()).unwrap_or_default()
                )
            })
            .collect()
    }

    async fn manifests(&self, dataset: &str) -> Vec<carga_jobs::manifest::Manifest> {
        let bucket = Bucket::open(&self.settings).unwrap();
        let log = ManifestLog::new(&bucket, dataset);
        let mut out = Vec::new();
        for sequence in log.sequences().await.unwrap() {
            out.push(log.load(sequence).await.unwrap());
        }
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.workers {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A private RabbitMQ queue bound to every Carga event, to see what a run published.
struct Listener {
    _connection: lapin::Connection,
    channel: lapin::Channel,
    queue: String,
}

impl Listener {
    async fn new() -> Self {
        let connection = lapin::Connection::connect(AMQP_URL, amqp_properties())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel
            .exchange_declare(
                "carga.events",
                lapin::ExchangeKind::Topic,
                lapin::options::ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let queue = format!("carga-test-{}", uuid::Uuid::now_v7().simple());
        channel
            .queue_declare(
                queue.as_str(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.as_str(),
                "carga.events",
                "#",
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Self {
            _connection: connection,
            channel,
            queue,
        }
    }

    /// Waits up to ten seconds for at least `count` messages about `dataset`.
    async fn wait_for(&self, dataset: &str, count: usize) -> Vec<(String, serde_json::Value)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while tokio::time::Instant::now() < deadline && seen.len() < count {
            seen.extend(self.messages(dataset).await);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        seen
    }

    /// (routing key, body) of the messages about `dataset` received so far.
    async fn messages(&self, dataset: &str) -> Vec<(String, serde_json::Value)> {
        let mut out = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(self.queue.as_str(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let body: serde_json::Value = serde_json::from_slice(&message.delivery.data).unwrap();
            if body["dataset_id"]
                .as_str()
                .is_some_and(|d| d.starts_with(dataset))
            {
                out.push((message.delivery.routing_key.to_string(), body));
            }
        }
        out
    }
}

fn amqp_properties() -> lapin::ConnectionProperties {
    lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio::current())
}

fn csv_dataset(lab: &Lab, id: &str, rows: usize, cron: &str) -> String {
    let mut csv = String::from("id,name\n");
    for i in 0..rows {
        csv.push_str(&format!("{i},name-{i}\n"));
    }
    let path = lab.write(&format!("{id}.csv"), &csv);
    format!(
        "id: {id}\nsource: {{format: csv, location: '{}'}}\nmode: complete\ntrigger: timed_pull\ncron: '{cron}'\nkey: [id]\n",
        path.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_fires_and_the_job_commits_and_announces_itself() {
    if !services_available() {
        return;
    }
    let mut lab = Lab::new("cron").await;
    let listener = Listener::new().await;
    let yaml = csv_dataset(&lab, "orders", 250, "*/2 * * * * *");
    lab.add_dataset(&yaml).await;
    lab.start_worker("w1", &[]);

    let mut scheduler = Scheduler::new(
        lab.catalog.clone(),
        lab.queue.clone(),
        SchedulerSettings::default(),
    );
    // The next even second after the dataset was written, as the scheduler's clock would see it.
    let report = scheduler
        .tick(Utc::now() + chrono::Duration::seconds(3))
        .await
        .unwrap();
    assert_eq!(report.enqueued.len(), 1, "{report:?}");
    let job = &report.enqueued[0];
    assert_eq!(job.dataset_id, "orders");
    assert!(job.scheduled_for.is_some());

    let run = lab.wait_for_end(&job.run_id).await;
    assert_eq!(run.state, "succeeded", "{run:#?}");
    assert_eq!(run.rows_written, Some(250));
    assert_eq!(run.worker.as_deref(), Some("w1"));
    assert_eq!(run.attempts, 1);
    let manifests = lab.manifests("orders").await;
    assert_eq!(manifests.len(), 1);
    assert_eq!(
        manifests[0].run_id, job.run_id,
        "the job id is the run id in the bucket"
    );
    assert_eq!(manifests[0].rows, 250);

    // The transformation engine's message and the notification.
    // (From the outbox, recorded with the run's end; the worker's relay publishes them.)
    let seen = listener.wait_for("orders", 3).await;
    let keys: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys.len(), 3, "{seen:?}");
    assert!(keys.contains(&"transform.dataset_ready"), "{seen:?}");
    assert!(keys.contains(&"notification.upload_success"), "{seen:?}");
    assert!(keys.contains(&"notification.run_succeeded"), "{seen:?}");
    let ready = &seen
        .iter()
        .find(|(k, _)| k == "transform.dataset_ready")
        .unwrap()
        .1;
    assert_eq!(ready["rows"], 250);
    assert_eq!(ready["run_id"], job.run_id.as_str());

    // The same time again is not enqueued again.
    let again = scheduler
        .tick(Utc::now() + chrono::Duration::seconds(3))
        .await
        .unwrap();
    assert!(
        again
            .enqueued
            .iter()
            .all(|j| j.scheduled_for != job.scheduled_for)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_enqueue_each_time_once_and_an_outage_is_caught_up_once() {
    if !services_available() {
        return;
    }
    let lab = Lab::new("replicas").await;
    for i in 0..20 {
        let yaml = csv_dataset(&lab, &format!("ds{i:02}"), 1, "0 */3 * * *");
        lab.add_dataset(&yaml).await;
    }
    let settings = SchedulerSettings::default();
    let mut first = Scheduler::new(lab.catalog.clone(), lab.queue.clone(), settings.clone());
    let mut second = Scheduler::new(lab.catalog.clone(), lab.queue.clone(), settings);
    // Ten hours later: three or four fire times were missed while "nothing was running".
    let now = Utc::now() + chrono::Duration::hours(10);
    let (a, b) = tokio::join!(first.tick(now), second.tick(now));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(first.scheduled(), 20, "every dataset is scheduled");
    assert_eq!(
        a.enqueued.len() + b.enqueued.len(),
        20,
        "one job per dataset: {a:?} {b:?}"
    );
    let stats = lab.queue.stats().await.unwrap();
    assert_eq!(stats.queued, 20);
    let runs = lab.catalog.runs(None, Some("queued"), 1000).await.unwrap();
    assert_eq!(runs.len(), 20, "one queued run row per enqueued job");
    let mut datasets: Vec<&str> = runs.iter().map(|r| r.dataset_id.as_str()).collect();
    datasets.sort();
    datasets.dedup();
    assert_eq!(datasets.len(), 20);
    // A replica that computed its due times before the other recorded them (the race the
    // idempotency key settles): it pushes all twenty again and none is enqueued twice.
    let JobQueue::Redis(redis_queue) = &lab.queue else {
        panic!("these tests run on the Redis queue")
    };
    let mut conn = redis_queue.connection();
    let _: () = redis::AsyncCommands::del(
        &mut conn,
        format!("{}:scheduler:last_fired", lab.queue_settings.name),
    )
    .await
    .unwrap();
    let raced = second.tick(now).await.unwrap();
    assert_eq!(raced.enqueued.len(), 0, "{raced:?}");
    assert_eq!(raced.already_enqueued, 20);
    assert_eq!(lab.queue.stats().await.unwrap().queued, 20);
    // Same instant again, from either replica: nothing new.
    assert!(first.tick(now).await.unwrap().enqueued.is_empty());
    assert!(second.tick(now).await.unwrap().enqueued.is_empty());
    assert_eq!(lab.queue.stats().await.unwrap().queued, 20);
    // The next fire time is enqueued once more.
    let later = now + chrono::Duration::hours(3);
    let (a, b) = tokio::join!(first.tick(later), second.tick(later));
    assert_eq!(a.unwrap().enqueued.len() + b.unwrap().enqueued.len(), 20);
    // A disabled dataset is no longer scheduled once the catalog is re-read.
    lab.catalog
        .set_enabled("ds00", false, "test")
        .await
        .unwrap();
    first.invalidate();
    let report = first
        .tick(later + chrono::Duration::hours(3))
        .await
        .unwrap();
    assert_eq!(report.enqueued.len(), 19);
    assert!(report.enqueued.iter().all(|j| j.dataset_id != "ds00"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_is_replaced_and_nothing_is_written_twice() {
    if !services_available() {
        return;
    }
    let mut lab = Lab::new("kill").await;
    // A table read slowly, so the run lasts ~6 s.
    lab.create_slow_view(300).await;
    lab.add_dataset(
        "id: slow\nsource: {format: postgres, table: public.slow_events}\nconnection_id: catalog-db\n\
         mode: complete\ntrigger: callback\nkey: [id]\n",
    )
    .await;
    let victim = lab.start_worker("victim", &[]);
    let mut job = carga_scheduler::ExtractionJob::new("slow", carga_scheduler::RunReason::Trigger);
    job.requested_by = Some("test".into());
    lab.submit(&job).await;

    let running = lab
        .wait_for_run(&job.run_id, &["running"], Duration::from_secs(30))
        .await;
    assert_eq!(running.worker.as_deref(), Some("victim"));
    // Let it write part of the output, then SIGKILL it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    lab.workers[victim].kill().unwrap();
    lab.workers[victim].wait().unwrap();
    assert!(
        lab.manifests("slow").await.is_empty(),
        "nothing visible from the killed run"
    );

    lab.start_worker("rescuer", &[]);
    let run = lab.wait_for_end(&job.run_id).await;
    assert_eq!(run.state, "succeeded", "{run:#?}");
    assert_eq!(run.worker.as_deref(), Some("rescuer"));
    assert_eq!(run.rows_written, Some(300));
    let manifests = lab.manifests("slow").await;
    assert_eq!(manifests.len(), 1, "one commit, not two");
    assert_eq!(manifests[0].rows, 300);
    // Every row once in what a reader sees.
    let engine = carga_jobs::Engine::new(lab.settings.clone()).unwrap();
    let batches = carga_jobs::read::collect_dataset(engine.bucket(), engine.encryptor(), "slow")
        .await
        .unwrap();
    assert_eq!(common::ids_of(&batches), (1..=300).collect::<Vec<i64>>());
    assert!(lab.worker_log("rescuer").contains(&job.run_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_source_lands_in_the_dead_set_after_its_retries() {
    if !services_available() {
        return;
    }
    let mut lab = Lab::new("dead").await;
    let listener = Listener::new().await;
    let missing = lab.dir.path().join("not-there.csv");
    lab.add_dataset(&format!(
        "id: broken\nsource: {{format: csv, location: '{}'}}\nmode: complete\ntrigger: callback\n",
        missing.display()
    ))
    .await;
    lab.start_worker(
        "w1",
        &[
            "--max-attempts",
            "3",
            "--backoff-seconds",
            "0.2",
            "--max-backoff-seconds",
            "1",
        ],
    );
    let job = carga_scheduler::ExtractionJob::new("broken", carga_scheduler::RunReason::Trigger);
    lab.submit(&job).await;

    let run = lab.wait_for_end(&job.run_id).await;
    assert_eq!(run.state, "dead", "{run:#?}");
    assert_eq!(run.attempts, 3);
    assert!(
        run.error
            .as_deref()
            .unwrap_or_default()
            .contains("not-there.csv"),
        "{run:#?}"
    );
    // apalis records the end asynchronously; give it a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !lab.queue.is_dead(&job.run_id).await.unwrap() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "job not in the dead set: {}",
            lab.workers_logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(lab.queue.stats().await.unwrap().dead, 1);
    assert!(lab.manifests("broken").await.is_empty());
    let seen = listener.wait_for("broken", 1).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].0, "notification.extraction_failed");
    assert!(
        seen[0].1["reason"]
            .as_str()
            .unwrap()
            .contains("not-there.csv")
    );
}

/// `public.slow_chunks`: `rows` rows whose `v` takes 20 ms each (the id is a plain column, so a
/// chunk's key range is found by the index and only its rows are slow); reading id `broken`
/// fails in the database.
async fn create_slow_chunks(lab: &Lab, rows: u32, broken: Option<u32>) {
    let broken = broken.map_or("NULL".to_owned(), |b| b.to_string());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE chunk_rows (id BIGINT PRIMARY KEY, v TEXT);
         INSERT INTO chunk_rows SELECT g, 'v' || g FROM generate_series(1, {rows}) g;
         ANALYZE chunk_rows;
         CREATE FUNCTION slow_text(i BIGINT, v TEXT) RETURNS TEXT STABLE LANGUAGE plpgsql
             AS $$ BEGIN
                 IF i = {broken} THEN RAISE EXCEPTION 'row % is broken', i; END IF;
                 PERFORM pg_sleep(0.02); RETURN v;
             END $$;
         CREATE VIEW slow_chunks AS SELECT c.id, slow_text(c.id, c.v) AS v FROM chunk_rows c;"
    )))
    .execute(lab.catalog.postgres_pool().expect("a PostgreSQL catalog"))
    .await
    .unwrap();
}

/// Every file under the dataset's data folders (parts, notes), relative to the bucket.
fn dataset_files(lab: &Lab, dataset: &str) -> Vec<String> {
    let bucket = PathBuf::from(&lab.settings.bucket);
    let mut files: Vec<String> = common::files_under(&bucket.join("raw").join(dataset))
        .iter()
        .map(|p| p.strip_prefix(&bucket).unwrap().display().to_string())
        .filter(|p| !p.contains("/_manifests/"))
        .collect();
    files.sort();
    files
}

/// A partitioned table spread over worker processes (`partitions.across_workers`): the run
/// that takes the job plans the chunks and puts them on the queue; a worker reading a chunk is
/// killed with SIGKILL, its chunk is taken over, and the run commits every row once with only
/// the listed parts left in its folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spread_run_survives_a_chunk_worker_killed_mid_chunk() {
    if !services_available() {
        return;
    }
    let mut lab = Lab::new("spread").await;
    create_slow_chunks(&lab, 400, None).await;
    lab.add_dataset(
        "id: spread\nsource:\n  format: postgres\n  table: public.slow_chunks\n  \
         partitions: {column: id, count: 4, across_workers: true}\nconnection_id: catalog-db\n\
         mode: complete\ntrigger: callback\nkey: [id]\n",
    )
    .await;
    let names = ["w1", "w2", "w3"];
    for name in names {
        lab.start_worker(name, &[]);
    }
    let mut job =
        carga_scheduler::ExtractionJob::new("spread", carga_scheduler::RunReason::Trigger);
    job.requested_by = Some("test".into());
    lab.submit(&job).await;
    let running = lab
        .wait_for_run(&job.run_id, &["running"], Duration::from_secs(30))
        .await;
    let coordinator = running.worker.clone().unwrap();

    // A worker other than the coordinator, reading a chunk: kill it a moment into its chunk.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (victim, chunk_job) = loop {
        let workers = lab.queue.workers(Duration::from_secs(5)).await.unwrap();
        let reading = workers.iter().find_map(|w| {
            let chunk = w
                .running
                .iter()
                .find(|id| id.starts_with(&format!("{}:", job.run_id)))?;
            (w.name != coordinator).then(|| (w.name.clone(), chunk.clone()))
        });
        if let Some(found) = reading {
            break found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no worker took a chunk: {}",
            lab.workers_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    let index = names.iter().position(|n| *n == victim).unwrap();
    lab.workers[index].kill().unwrap();
    lab.workers[index].wait().unwrap();
    lab.start_worker("rescuer", &[]);

    let run = lab.wait_for_end(&job.run_id).await;
    assert_eq!(run.state, "succeeded", "{run:#?}\n{}", lab.workers_logs());
    assert_eq!(run.rows_written, Some(400));
    let manifests = lab.manifests("spread").await;
    assert_eq!(manifests.len(), 1, "one commit");
    assert!(manifests[0].files.len() >= 4, "{:?}", manifests[0].files);
    let engine = carga_jobs::Engine::new(lab.settings.clone()).unwrap();
    let batches = carga_jobs::read::collect_dataset(engine.bucket(), engine.encryptor(), "spread")
        .await
        .unwrap();
    assert_eq!(
        common::ids_of(&batches),
        (1..=400).collect::<Vec<i64>>(),
        "every row once"
    );
    // Nothing but the committed parts in the run's folder: no file of the killed take, no note.
    let mut listed: Vec<String> = manifests[0].files.iter().map(|f| f.path.clone()).collect();
    listed.sort();
    assert_eq!(dataset_files(&lab, "spread"), listed);
    // The killed worker's chunk was read by another worker, in a later take.
    let taken_over = names
        .iter()
        .filter(|n| **n != victim)
        .chain(std::iter::once(&"rescuer"))
        .any(|n| {
            lab.worker_log(n).lines().any(|l| {
                l.contains(&chunk_job) && l.contains("chunk job taken") && !l.contains("takes=1")
            })
        });
    assert!(
        taken_over,
        "{chunk_job} not taken over:\n{}",
        lab.workers_logs()
    );
    assert_eq!(lab.queue.stats().await.unwrap().dead, 0);
}

/// A worker stopped (SIGTERM) while its run waits for its chunks does not wait for chunks no
/// worker will take: it withdraws them, hands the run back to the queue and exits; another
/// worker coordinates the run again, to one commit with every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_while_coordinating_hands_the_run_back() {
    if !services_available() {
        return;
    }
    let mut lab = Lab::new("handback").await;
    create_slow_chunks(&lab, 300, None).await;
    lab.add_dataset(
        "id: handback\nsource:\n  format: postgres\n  table: public.slow_chunks\n  \
         partitions: {column: id, count: 4, across_workers: true}\nconnection_id: catalog-db\n\
         mode: complete\ntrigger: callback\nkey: [id]\n",
    )
    .await;
    let only = lab.start_worker("only", &[]);
    let job = carga_scheduler::ExtractionJob::new("handback", carga_scheduler::RunReason::Trigger);
    lab.submit(&job).await;
    lab.wait_for_run(&job.run_id, &["running"], Duration::from_secs(30))
        .await;
    // The run gave its slot back and the worker reads one of the run's chunks.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let workers = lab.queue.workers(Duration::from_secs(5)).await.unwrap();
        if workers.iter().any(|w| {
            w.running
                .iter()
                .any(|id| id.starts_with(&format!("{}:", job.run_id)))
        }) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            lab.workers_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = Command::new("kill")
        .args(["-TERM", &lab.workers[only].id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while lab.workers[only].try_wait().unwrap().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker did not stop within 15 s:\n{}",
            lab.workers_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        lab.worker_log("only")
            .contains("worker stopping while the run coordinates its chunks"),
        "{}",
        lab.workers_logs()
    );
    assert!(lab.manifests("handback").await.is_empty());

    lab.start_worker("next", &[]);
    let run = lab.wait_for_end(&job.run_id).await;
    assert_eq!(run.state, "succeeded", "{run:#?}\n{}", lab.workers_logs());
    assert_eq!(run.rows_written, Some(300));
    assert_eq!(run.worker.as_deref(), Some("next"));
    let manifests = lab.manifests("handback").await;
    assert_eq!(manifests.len(), 1);
    let engine = carga_jobs::Engine::new(lab.settings.clone()).unwrap();
    let batches =
        carga_jobs::read::collect_dataset(engine.bucket(), engine.encryptor(), "handback")
            .await
            .unwrap();
    assert_eq!(common::ids_of(&batches), (1..=300).collect::<Vec<i64>>());
    let mut listed: Vec<String> = manifests[0].files.iter().map(|f| f.path.clone()).collect();
    listed.sort();
    assert_eq!(dataset_files(&lab, "handback"), listed);
}

/// A chunk that fails on every attempt makes the spread run fail: no manifest, no part, no
/// note left, and the chunk jobs are not left in the dead set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spread_run_whose_chunk_keeps_failing_leaves_nothing() {
    if !services_available() {
        return;
    }
    let mut lab = Lab::new("spreadfail").await;
    create_slow_chunks(&lab, 200, Some(170)).await;
    lab.add_dataset(
        "id: spreadfail\nsource:\n  format: postgres\n  table: public.slow_chunks\n  \
         partitions: {column: id, count: 4, attempts: 2, across_workers: true}\n\
         connection_id: catalog-db\nmode: complete\ntrigger: callback\nkey: [id]\n",
    )
    .await;
    for name in ["w1", "w2"] {
        lab.start_worker(name, &["--max-attempts", "1"]);
    }
    let job =
        carga_scheduler::ExtractionJob::new("spreadfail", carga_scheduler::RunReason::Trigger);
    lab.submit(&job).await;
    let run = lab.wait_for_end(&job.run_id).await;
    assert_eq!(run.state, "dead", "{run:#?}");
    let error = run.error.clone().unwrap_or_default();
    assert!(
        error.contains("chunk 3 gave up after 2 attempt(s)") && error.contains("row 170 is broken"),
        "{error}"
    );
    assert!(lab.manifests("spreadfail").await.is_empty());
    // The other chunks are withdrawn or finish; then the run's folder is empty.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let files = dataset_files(&lab, "spreadfail");
        if files.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{files:?}\n{}",
            lab.workers_logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let dead = lab.queue.dead_jobs().await.unwrap();
    assert_eq!(
        dead,
        vec![job.run_id.clone()],
        "only the run is dead, not its chunks"
    );
}

/// Where the browser test's tools are; `None` (and a skip notice) when one is missing.
fn browser_tools() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("tests/browser/dashboard.mjs");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let missing = [
        (
            root.join("tests/browser/node_modules/playwright-core")
                .exists(),
            "playwright-core (npm ci --prefix tests/browser)",
        ),
        (
            PathBuf::from(&chromium).exists(),
            "chromium (apt-get install chromium)",
        ),
        (
            Command::new("node").arg("--version").output().is_ok(),
            "node",
        ),
    ]
    .into_iter()
    .filter(|(present, _)| !present)
    .map(|(_, what)| what)
    .collect::<Vec<_>>();
    if missing.is_empty() {
        return Some(script);
    }
    let why = format!("the browser test needs {}", missing.join(", "));
    if std::env::var(REQUIRE_ALL).is_ok_and(|v| v == "1") {
        panic!("{why}, and {REQUIRE_ALL}=1 forbids skipping");
    }
    eprintln!("SKIPPED: {why} (set {REQUIRE_ALL}=1 to make this a failure)");
    None
}

/// The dashboard in Chromium: a queued job moves to done, a dead job is retried and runs; then
/// the job actions' roles and audit, a kill of a queued job, and the run id on every JSON log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_jobs_moving_and_retries_a_dead_one() {
    if !services_available() {
        return;
    }
    let Some(script) = browser_tools() else {
        return;
    };
    let mut lab = Lab::new("dash").await;
    let source = lab.write("ventas.csv", "id,total\n1,10.5\n2,3.25\n3,7\n");
    lab.add_dataset(&format!(
        "id: ventas\nsource: {{format: csv, location: '{}'}}\ntrigger: callback\n",
        source.display()
    ))
    .await;
    let missing = lab.dir.path().join("missing.csv");
    lab.add_dataset(&format!(
        "id: roto\nsource: {{format: csv, location: '{}'}}\ntrigger: callback\n",
        missing.display()
    ))
    .await;
    // A table read slowly (~8 s), for the live progress.
    lab.create_slow_view(400).await;
    lab.add_dataset(
        "id: lento\nsource: {format: postgres, table: public.slow_events}\nconnection_id: catalog-db\n\
         mode: complete\ntrigger: callback\nkey: [id]\n",
    )
    .await;

    // A dead job: one attempt on a missing file.
    let first = lab.start_worker("w1", &["--max-attempts", "1"]);
    let dead = carga_scheduler::ExtractionJob::new("roto", carga_scheduler::RunReason::Trigger);
    lab.submit(&dead).await;
    assert_eq!(lab.wait_for_end(&dead.run_id).await.state, "dead");
    lab.stop_worker(first);
    std::fs::write(&missing, "id,total\n9,1\n").unwrap();

    // The API with the dashboard, on a real port.
    let state = std::sync::Arc::new(
        carga_api::ApiState::new(
            lab.catalog.clone(),
            lab.queue.clone(),
            carga_jobs::secrets::provider(&lab.settings).await,
            Bucket::open(&lab.settings).unwrap(),
            carga_jobs::access::AccessPolicy::for_server(
                &lab.settings,
                &[lab.dir.path().to_owned()],
                &[],
            ),
        )
        .with_engine(carga_jobs::Engine::new(lab.settings.clone()).unwrap()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(carga_api::serve(state, listener, std::future::pending()));
    let admin = lab.catalog.create_token("ada", "admin").await.unwrap();

    // A webhook on loopback for the dataset's successes: the dashboard shows its delivery.
    let hooks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hooks.clone();
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { axum::http::StatusCode::NO_CONTENT }
        }),
    );
    let hook_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", hook_listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(hook_listener, receiver).await.unwrap() });
    let subscription = carga_scheduler::catalog::WebhookSpec {
        url: hook_url,
        dataset_id: Some("ventas".into()),
        events: vec!["run_succeeded".into()],
        enabled: true,
    };
    // Its signing secret, where the API would have put it.
    carga_jobs::secrets::provider(&lab.settings)
        .await
        .store(
            &carga_scheduler::webhook::secret_name("ops"),
            &[("secret".to_owned(), "dashboard-test-secret".into())].into(),
            true,
        )
        .await
        .unwrap();
    lab.catalog
        .put_webhook("ops", &subscription, "ada")
        .await
        .unwrap();

    // The browser session; it asks for a worker once its job is queued.
    let shots = std::env::var("CARGA_SCREENSHOTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| lab.dir.path().join("shots"));
    std::fs::create_dir_all(&shots).unwrap();
    let mut browser = Command::new("node")
        .arg(&script)
        .args([
            &base,
            &admin,
            &shots.display().to_string(),
            "ventas",
            "roto",
            &dead.run_id,
            "lento",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = browser.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    // Small batches and frequent progress writes, so the slow run's progress moves visibly.
    // The webhook receiver is on loopback: this worker may reach private addresses.
    lab.worker_env = vec![
        ("CARGA_LOG_FORMAT", "json"),
        ("CARGA_BATCH_ROWS", "10"),
        ("CARGA_ALLOW_PRIVATE_NETWORKS", "true"),
    ];
    let mut done = None;
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(180), lines.recv()).await {
        if line == "START_WORKER" {
            lab.start_worker("w2", &["--max-attempts", "1", "--progress-seconds", "0.3"]);
        } else if let Some(run_id) = line.strip_prefix("DONE ") {
            done = Some(run_id.to_owned());
        }
    }
    let output = browser.wait_with_output().unwrap();
    let run_id = done.unwrap_or_else(|| {
        panic!(
            "the browser test did not finish: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            lab.workers_logs()
        )
    });
    assert!(output.status.success());
    assert!(shots.join("dashboard-runs.png").exists());
    assert!(shots.join("dashboard-webhooks.png").exists());
    assert_eq!(
        hooks.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one run of the dataset, one delivery"
    );

    // What the browser did is what the catalog holds.
    assert_eq!(
        lab.catalog.run(&run_id).await.unwrap().unwrap().state,
        "succeeded"
    );
    let retried = lab.catalog.run(&dead.run_id).await.unwrap().unwrap();
    let replacement = retried
        .retried_as
        .clone()
        .expect("the dead run was retried");
    let again = lab.catalog.run(&replacement).await.unwrap().unwrap();
    assert_eq!(
        (again.state.as_str(), again.reason.as_str()),
        ("succeeded", "retry")
    );
    assert_eq!(again.requested_by.as_deref(), Some("ada"));
    assert!(!lab.queue.is_dead(&dead.run_id).await.unwrap());

    // Every log line of the job carries its run id (JSON logs).
    let log = lab.worker_log("w2");
    let mut job_lines = 0;
    for line in log.lines().filter(|l| l.contains(&run_id)) {
        let entry: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(entry["span"]["run_id"], run_id.as_str(), "{line}");
        job_lines += 1;
    }
    let messages: Vec<String> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["span"]["run_id"] == run_id.as_str())
        .map(|e| {
            e["fields"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    for expected in ["job taken", "run started", "run committed", "job succeeded"] {
        assert!(
            messages.iter().any(|m| m == expected),
            "{expected}: {messages:?}"
        );
    }
    assert!(job_lines >= 4);

    // Job actions through the API: each only for its roles; a queued job killed leaves the queue.
    lab.stop_worker(1);
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: String, token: String| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let response = http
                .request(method, format!("{base}{path}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body = response.bytes().await.unwrap();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default(),
            )
        }
    };
    // Rows per source reach /metrics (the Grafana dashboard's rows/s panel).
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("carga_source_rows_total{source=\"csv\"}")
            && metrics.contains("carga_source_seconds_total{source=\"csv\"}"),
        "{metrics}"
    );
    let viewer = lab.catalog.create_token("vera", "viewer").await.unwrap();
    let editor = lab.catalog.create_token("eddie", "editor").await.unwrap();
    let approver = lab.catalog.create_token("april", "approver").await.unwrap();
    let (status, body) = call(
        reqwest::Method::POST,
        "/datasets/ventas/runs".into(),
        editor.clone(),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let queued = body["run_id"].as_str().unwrap().to_owned();
    assert_eq!(lab.queue.stats().await.unwrap().queued, 1);
    let kill = format!("/runs/{queued}/kill");
    assert_eq!(
        call(reqwest::Method::POST, kill.clone(), viewer.clone())
            .await
            .0,
        403
    );
    assert_eq!(
        call(reqwest::Method::POST, kill.clone(), editor.clone())
            .await
            .0,
        403
    );
    let (status, body) = call(reqwest::Method::POST, kill.clone(), approver.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["removed_from_queue"], true);
    assert_eq!(
        lab.catalog.run(&queued).await.unwrap().unwrap().state,
        "killed"
    );
    assert_eq!(lab.queue.stats().await.unwrap().queued, 0);
    assert_eq!(
        call(reqwest::Method::POST, kill, approver.clone()).await.0,
        409
    );
    let retry = format!("/runs/{run_id}/retry");
    assert_eq!(
        call(reqwest::Method::POST, retry, editor.clone()).await.0,
        409,
        "a succeeded run is not retried"
    );
    let delete = format!("/runs/{queued}");
    assert_eq!(
        call(reqwest::Method::DELETE, delete.clone(), approver.clone())
            .await
            .0,
        403
    );
    assert_eq!(
        call(reqwest::Method::DELETE, delete, admin.clone()).await.0,
        200
    );
    assert!(lab.catalog.run(&queued).await.unwrap().is_none());

    // Each action, allowed or not, is in the audit log.
    let audit = lab.catalog.audit_log(None, 200).await.unwrap();
    let count = |action: &str, result: &str| {
        audit
            .iter()
            .filter(|e| e.entry.action == action && e.entry.result == result)
            .count()
    };
    assert_eq!(count("retry_job", "ok"), 1, "the browser's retry");
    assert_eq!(count("retry_job", "rejected"), 1);
    assert_eq!(count("kill_job", "ok"), 1);
    assert_eq!(count("kill_job", "denied"), 2);
    assert_eq!(count("kill_job", "rejected"), 1);
    assert_eq!(count("delete_job", "denied"), 1);
    assert_eq!(count("delete_job", "ok"), 1);
}

/// A Redis of the test's own on a free port, keeping its data on disk (AOF, fsync always) as a
/// production queue's Redis must, so it can be stopped and started again under the workers.
struct OwnRedis {
    dir: tempfile::TempDir,
    port: u16,
    process: Option<Child>,
}

impl OwnRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Self {
            dir: tempfile::tempdir().unwrap(),
            port,
            process: None,
        };
        redis.up();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn up(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.process = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM (Redis writes what it holds and exits), and wait for it.
    fn down(&mut self) {
        let mut child = self.process.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_runs_survive_a_redis_restart_and_a_killed_worker() {
    if !services_available()
        || !skip_unless_tool(
            "redis-server",
            Command::new("redis-server").arg("--version"),
        )
    {
        return;
    }
    let mut redis = OwnRedis::start();
    let mut lab = Lab::with_redis("faults", &redis.url()).await;
    // A source that takes about a second a run: 50 rows, 20 ms each.
    lab.create_slow_view(50).await;
    let mut jobs = Vec::new();
    for i in 0..20 {
        lab.add_dataset(&format!(
            "id: f{i}\nsource: {{format: postgres, table: public.slow_events}}\nconnection_id: catalog-db\n\
             mode: complete\ntrigger: callback\nkey: [id]\n"
        ))
        .await;
        jobs.push(carga_scheduler::ExtractionJob::new(
            &format!("f{i}"),
            carga_scheduler::RunReason::Trigger,
        ));
    }
    let retry = [
        "--max-attempts",
        "10",
        "--backoff-seconds",
        "0.5",
        "--max-backoff-seconds",
        "2",
    ];
    let w1 = lab.start_worker("w1", &retry);
    let w2 = lab.start_worker("w2", &retry);
    for job in &jobs {
        lab.submit(job).await;
    }
    // Two runs in, Redis goes away for five seconds and comes back.
    lab.wait_for_run(&jobs[0].run_id, &["running"], Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.down();
    tokio::time::sleep(Duration::from_secs(5)).await;
    redis.up();
    // Then one worker dies while it holds a job.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let held = lab
            .catalog
            .runs(None, Some("running"), 100)
            .await
            .unwrap()
            .iter()
            .any(|r| r.worker.as_deref() == Some("w1"));
        if held {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "w1 took no job after the restart:\n{}",
            lab.workers_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    lab.workers[w1].kill().unwrap();
    lab.workers[w1].wait().unwrap();

    // Nobody steps in: w2 alone finishes everything, each run committed once, every row once.
    for job in &jobs {
        let run = lab
            .wait_for_run(
                &job.run_id,
                &["succeeded", "failed", "dead"],
                Duration::from_secs(120),
            )
            .await;
        assert_eq!(run.state, "succeeded", "{run:#?}\n{}", lab.workers_logs());
        let manifests = lab.manifests(&job.dataset_id).await;
        assert_eq!(
            manifests.len(),
            1,
            "{} committed {} times",
            job.dataset_id,
            manifests.len()
        );
        assert_eq!(manifests[0].rows, 50);
        assert_eq!(manifests[0].run_id, job.run_id);
    }
    assert!(
        lab.workers[w2].try_wait().unwrap().is_none(),
        "the surviving worker is still running:\n{}",
        lab.workers_logs()
    );
    // The worker saw the outage (calls failed, or stalled while the client reconnected).
    let log = lab.worker_log("w2");
    assert!(
        log.contains("retrying until the queue answers") || log.contains("the queue stalled"),
        "{log}"
    );
    // The test's own connection saw the restart too: its first call after it may fail once.
    let stats = match lab.queue.stats().await {
        Ok(stats) => stats,
        Err(_) => lab.queue.stats().await.unwrap(),
    };
    assert_eq!((stats.dead, stats.queued, stats.running), (0, 0, 0));
}
