//! `carga serve`, the embedded single-process mode, as a user runs it: no PostgreSQL, Redis or
//! RabbitMQ, only the binary, a state folder and a local bucket. A cron fires and commits; the
//! HTTP trigger runs a callback dataset; a process killed with SIGKILL mid-job is started again
//! and the job is finished once, with every row once; a failing source ends dead after its
//! retries; SIGTERM stops it cleanly. Needs no service, so it always runs (except the spread
//! run's test, which reads a PostgreSQL table in chunks through the embedded queue).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

mod common;

use carga_config::Settings;
use common::ids_of;
use serde_json::Value;

/// One `carga serve` installation: its folder, its port, its process when running.
struct Embedded {
    dir: tempfile::TempDir,
    port: u16,
    process: Option<Child>,
    starts: usize,
    /// How jobs are retried (`carga serve`'s job flags).
    retry_args: Vec<&'static str>,
    /// Whether never-run datasets run at start (off: the tests trigger what they follow).
    initial_runs: bool,
    /// `RUST_LOG`, or the binary's own default when `None`.
    log_filter: Option<&'static str>,
    /// More environment for the next start (a drill, the relay's pace).
    env: Vec<(&'static str, String)>,
}

impl Embedded {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::create_dir_all(dir.path().join("specs")).unwrap();
        std::fs::write(dir.path().join("secrets.json"), "{}").unwrap();
        Self {
            dir,
            port,
            process: None,
            starts: 0,
            retry_args: vec!["--max-attempts", "2", "--backoff-seconds", "0.2"],
            initial_runs: false,
            log_filter: Some("info"),
            env: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn add_spec(&self, name: &str, yaml: &str) {
        std::fs::write(self.path("specs").join(format!("{name}.yaml")), yaml).unwrap();
    }

    fn settings(&self) -> Settings {
        Settings {
            bucket: self.path("bucket").display().to_string(),
            key_file: self.path("keys.json"),
            secrets_file: self.path("secrets.json"),
            ..Settings::default()
        }
    }

    fn start(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.path(&format!("serve-{}.log", self.starts))).unwrap();
        let out = std::fs::File::create(self.path(&format!("serve-{}.out", self.starts))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_carga"))
            .arg("serve")
            .args(["--state-dir", &self.path("state").display().to_string()])
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--datasets", &self.path("specs").display().to_string()])
            .args(["--heartbeat-seconds", "0.5", "--missed-heartbeats", "2"])
            .args(["--lock-ttl-seconds", "2", "--lock-wait-seconds", "20"])
            .args(&self.retry_args)
            .args(["--refresh-seconds", "1"])
            .args(["--initial-runs", &self.initial_runs.to_string()])
            .current_dir(self.dir.path())
            .env("CARGA_BUCKET", self.path("bucket"))
            .env("CARGA_KEY_FILE", self.path("keys.json"))
            .env("CARGA_SECRETS_FILE", self.path("secrets.json"))
            // The slow REST source is a listener on loopback: tests opt in to private networks.
            .env("CARGA_ALLOW_PRIVATE_NETWORKS", "true")
            .env_remove("RUST_LOG")
            .envs(self.log_filter.map(|filter| ("RUST_LOG", filter)))
            .env_remove("CARGA_SETTINGS")
            .env_remove("CARGA_AMQP_URL")
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(out)
            .stderr(log)
            .spawn()
            .unwrap();
        self.process = Some(child);
    }

    fn logs(&self) -> String {
        (1..=self.starts)
            .map(|i| {
                let read = |ext: &str| {
                    std::fs::read_to_string(self.path(&format!("serve-{i}.{ext}")))
                        .unwrap_or_default()
                };
                format!(
                    "--- start {i} stdout:\n{}--- stderr:\n{}",
                    read("out"),
                    read("log")
                )
            })
            .collect()
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.path("state/admin-token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// The logs once they hold `text`: a job's closing line is written just after the run is
    /// recorded, so it may come a moment after the API shows the run.
    async fn logs_once_they_hold(&self, text: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let logs = self.logs();
            if logs.contains(text) || tokio::time::Instant::now() >= deadline {
                return logs;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_until_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let ready = reqwest::get(format!("http://127.0.0.1:{}/readyz", self.port)).await;
            if ready.is_ok_and(|r| r.status().is_success())
                && self.path("state/admin-token").exists()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "carga serve not ready:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        self.call_with(method, path, None).await
    }

    /// A call with a JSON body.
    async fn call_with(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .request(method, format!("http://127.0.0.1:{}{path}", self.port))
            .bearer_auth(self.token());
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into())),
        )
    }

    async fn text(&self, path: &str) -> String {
        reqwest::get(format!("http://127.0.0.1:{}{path}", self.port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits until the run is in one of `states`.
    async fn wait_for_run(&self, run_id: &str, states: &[&str], within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (status, run) = self
                .call(reqwest::Method::GET, &format!("/runs/{run_id}"))
                .await;
            if status == 200 && states.contains(&run["state"].as_str().unwrap_or_default()) {
                return run;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "run {run_id} not {states:?} within {within:?}: {run}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The run once it has ended (succeeded, failed or dead), a minute at most.
    async fn wait_for_end(&self, run_id: &str) -> Value {
        self.wait_for_run(
            run_id,
            &["succeeded", "failed", "dead"],
            Duration::from_secs(60),
        )
        .await
    }

    /// The dataset's first succeeded run, waited for (30 s at most) without triggering it.
    async fn first_success(&self, dataset: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (_, runs) = self
                .call(reqwest::Method::GET, &format!("/datasets/{dataset}/runs"))
                .await;
            if let Some(run) = runs
                .as_array()
                .and_then(|runs| runs.iter().find(|r| r["state"] == "succeeded"))
            {
                return run.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no run of '{dataset}' succeeded: {runs}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn trigger(&self, dataset: &str) -> String {
        let (status, body) = self
            .call(reqwest::Method::POST, &format!("/datasets/{dataset}/runs"))
            .await;
        assert_eq!(status, 202, "{body}\n{}", self.logs());
        body["run_id"].as_str().unwrap().to_owned()
    }

    async fn manifests(&self, dataset: &str) -> Vec<carga_jobs::manifest::Manifest> {
        let bucket = carga_jobs::storage::Bucket::open(&self.settings()).unwrap();
        let log = carga_jobs::manifest::ManifestLog::new(&bucket, dataset);
        let mut out = Vec::new();
        for sequence in log.sequences().await.unwrap() {
            out.push(log.load(sequence).await.unwrap());
        }
        out
    }

    /// SIGTERM, then waits for the process; its exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.process.take().unwrap();
        let term = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(term.success());
        child.wait().unwrap()
    }

    fn kill(&mut self) {
        let mut child = self.process.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        if let Some(child) = &mut self.process {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A REST API that serves 300 records in six pages, slowly (400 ms a page); counts requests.
async fn slow_api() -> (String, Arc<AtomicUsize>) {
    use axum::extract::Query;
    use std::collections::HashMap;
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    let app = axum::Router::new().route(
        "/records",
        axum::routing::get(move |Query(query): Query<HashMap<String, String>>| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(400)).await;
                let page: u64 = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
                let records: Vec<Value> = if page <= 6 {
                    ((page - 1) * 50 + 1..=page * 50)
                        .map(|id| serde_json::json!({ "id": id, "name": format!("record-{id}") }))
                        .collect()
                } else {
                    Vec::new()
                };
                axum::Json(records)
            }
        }),
    );
    (format!("http://{}", serve_on_loopback(app).await), requests)
}

/// Serves `app` on a free loopback port for the rest of the test; its address.
async fn serve_on_loopback(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_service_schedules_triggers_recovers_a_killed_job_and_stops_cleanly() {
    let mut carga = Embedded::new();
    let mut csv = String::from("id,name\n");
    for i in 1..=120 {
        csv.push_str(&format!("{i},name-{i}\n"));
    }
    std::fs::write(carga.path("specs/orders.csv"), csv).unwrap();
    // Relative to the spec file, as `carga run` reads it.
    carga.add_spec(
        "orders",
        "id: orders\nsource: {format: csv, location: orders.csv}\nmode: complete\n\
         trigger: timed_pull\ncron: '*/2 * * * * *'\nkey: [id]\n",
    );
    let (api, requests) = slow_api().await;
    carga.add_spec(
        "slow",
        &format!(
            "id: slow\nsource:\n  format: rest\n  location: {api}/records\n  rest: {{pagination: {{style: page}}}}\n\
             mode: complete\ntrigger: callback\nkey: [id]\n"
        ),
    );
    carga.add_spec(
        "broken",
        "id: broken\nsource: {format: csv, location: not-there.csv}\nmode: complete\ntrigger: callback\n",
    );
    carga.start();
    carga.wait_until_ready().await;

    // The cron fires and the scheduled run commits, with no server anywhere.
    let scheduled = carga.first_success("orders").await;
    assert_eq!(scheduled["reason"], "schedule");
    assert_eq!(scheduled["rows_written"], 120);
    assert!(scheduled["scheduled_for"].is_string());
    assert!(!carga.manifests("orders").await.is_empty());

    // The trigger runs the callback dataset; kill the process in the middle of it.
    let run_id = carga.trigger("slow").await;
    carga
        .wait_for_run(&run_id, &["running"], Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let asked_before_kill = requests.load(Ordering::SeqCst);
    assert!(
        (1..7).contains(&asked_before_kill),
        "killed mid-job: {asked_before_kill} pages asked"
    );
    carga.kill();
    assert!(
        carga.manifests("slow").await.is_empty(),
        "nothing visible from the killed run"
    );

    // Started again: the held job goes back to the queue and runs to one commit.
    carga.start();
    carga.wait_until_ready().await;
    let run = carga.wait_for_end(&run_id).await;
    assert_eq!(run["state"], "succeeded", "{run}\n{}", carga.logs());
    assert_eq!(run["rows_written"], 300);
    let manifests = carga.manifests("slow").await;
    assert_eq!(manifests.len(), 1, "one commit, not two");
    assert_eq!(manifests[0].run_id, run_id);
    let engine = carga_jobs::Engine::new(carga.settings()).unwrap();
    let batches = carga_jobs::read::collect_dataset(engine.bucket(), engine.encryptor(), "slow")
        .await
        .unwrap();
    assert_eq!(ids_of(&batches), (1..=300).collect::<Vec<i64>>());
    assert!(
        carga.logs().contains("put back in the queue"),
        "{}",
        carga.logs()
    );

    // A failing source ends dead after its two attempts, with the reason.
    let broken = carga.trigger("broken").await;
    let run = carga
        .wait_for_run(&broken, &["dead", "failed"], Duration::from_secs(30))
        .await;
    assert_eq!(run["state"], "dead", "{run}");
    assert_eq!(run["attempts"], 2);
    assert!(
        run["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not-there.csv"),
        "{run}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, queue) = carga.call(reqwest::Method::GET, "/queue").await;
        if queue["dead"] == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{queue}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Operators see the same numbers as on Redis and PostgreSQL.
    let metrics = carga.text("/metrics").await;
    assert!(metrics.contains("carga_jobs_dead_total 1"), "{metrics}");
    assert!(
        metrics.contains("carga_source_rows_total{source=\"rest\"} 300"),
        "{metrics}"
    );
    let (status, overview) = carga.call(reqwest::Method::GET, "/overview").await;
    assert_eq!(status, 200, "{overview}");
    let (_, audit) = carga.call(reqwest::Method::GET, "/audit").await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["action"].as_str())
        .collect();
    assert_eq!(
        actions.iter().filter(|a| **a == "load_dataset").count(),
        3,
        "{audit}"
    );
    assert!(actions.contains(&"trigger"), "{audit}");

    // SIGTERM: a clean exit.
    let status = carga.stop();
    assert!(status.success(), "{status:?}\n{}", carga.logs());
    assert!(carga.logs().contains("carga stopped"), "{}", carga.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_spec_stops_the_start_with_the_file_and_the_reason() {
    let mut carga = Embedded::new();
    carga.add_spec(
        "late",
        "id: late\nsource: {format: csv, location: x.csv}\nmode: complete\ntrigger: timed_pull\ncron: 'not a cron'\n",
    );
    carga.start();
    let status = carga.process.as_mut().unwrap().wait().unwrap();
    assert!(!status.success());
    let logs = carga.logs();
    assert!(logs.contains("late.yaml"), "{logs}");
    assert!(logs.contains("not a cron"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_that_never_ran_runs_once_at_start_and_not_again_after_a_restart() {
    let mut carga = Embedded::new();
    carga.initial_runs = true;
    carga.log_filter = None;
    std::fs::write(carga.path("specs/clientes.csv"), "id,name\n1,ana\n2,bea\n").unwrap();
    carga.add_spec(
        "clientes",
        "id: clientes\nsource: {format: csv, location: clientes.csv}\nmode: complete\ntrigger: callback\n",
    );
    carga.start();
    carga.wait_until_ready().await;
    let first = carga.first_success("clientes").await;
    assert_eq!(first["rows_written"], 2);
    assert_eq!(first["requested_by"], "carga-serve (initial run)");
    // Services say what each job did at the default level (no RUST_LOG).
    let logs = carga.logs_once_they_hold("job succeeded").await;
    assert!(
        logs.contains("initial run queued") && logs.contains("job succeeded"),
        "{logs}"
    );

    assert_eq!(carga.stop().code(), Some(0));
    carga.start();
    carga.wait_until_ready().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, runs) = carga
        .call(reqwest::Method::GET, "/datasets/clientes/runs")
        .await;
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_is_private_and_survives_a_restart() {
    use std::os::unix::fs::PermissionsExt;
    let mut carga = Embedded::new();
    carga.start();
    carga.wait_until_ready().await;
    let mode = std::fs::metadata(carga.path("state/admin-token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let first = carga.token();
    assert_eq!(carga.stop().code(), Some(0));
    carga.start();
    carga.wait_until_ready().await;
    assert_eq!(carga.token(), first);
    let (status, _) = carga.call(reqwest::Method::GET, "/datasets").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrying_job_waits_in_the_queue_not_in_a_worker_slot() {
    let mut lab = Embedded::new();
    // Two slots; two datasets whose API is down back off for a minute between attempts.
    lab.retry_args = vec![
        "--concurrency",
        "2",
        "--max-attempts",
        "5",
        "--backoff-seconds",
        "60",
    ];
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for name in ["down1", "down2"] {
        lab.add_spec(
            name,
            &format!(
                "id: {name}\nsource:\n  format: rest\n  location: http://127.0.0.1:{closed}/items\n  rest: {{max_attempts: 1}}\ntrigger: callback\n"
            ),
        );
    }
    // Beside the specs: the folder `--datasets` names is the data root.
    let csv = lab.path("specs").join("ok.csv");
    std::fs::write(&csv, "id,v\n1,a\n2,b\n").unwrap();
    lab.add_spec(
        "ok",
        &format!(
            "id: ok\nsource: {{format: csv, location: '{}'}}\ntrigger: callback\n",
            csv.display()
        ),
    );
    lab.start();
    lab.wait_until_ready().await;
    let down: Vec<String> = vec![lab.trigger("down1").await, lab.trigger("down2").await];
    for run_id in &down {
        let run = lab
            .wait_for_run(run_id, &["retrying"], Duration::from_secs(30))
            .await;
        assert_eq!(
            (run["attempts"].as_i64(), run["max_attempts"].as_i64()),
            (Some(1), Some(5))
        );
        assert!(run["next_attempt_at"].is_string(), "{run}");
        assert!(run["worker"].is_null(), "no worker holds it: {run}");
        assert!(
            run["error"]
                .as_str()
                .unwrap_or_default()
                .contains("connection"),
            "{run}"
        );
    }
    let (_, queue) = lab.call(reqwest::Method::GET, "/queue").await;
    assert_eq!(
        (queue["running"].as_u64(), queue["scheduled"].as_u64()),
        (Some(0), Some(2)),
        "{queue}"
    );

    // Both slots are free: a third dataset's run starts at once.
    let ok = lab.trigger("ok").await;
    let run = lab
        .wait_for_run(&ok, &["succeeded"], Duration::from_secs(10))
        .await;
    let at =
        |field: &str| chrono::DateTime::parse_from_rfc3339(run[field].as_str().unwrap()).unwrap();
    let waited = at("started_at") - at("enqueued_at");
    assert!(
        waited < chrono::Duration::seconds(3),
        "waited {waited} in the queue"
    );
    assert_eq!(lab.stop().code(), Some(0), "{}", lab.logs());
}

/// One request a webhook receiver got.
#[derive(Debug, Clone)]
struct Received {
    event: String,
    delivery: String,
    signature: String,
    body: Vec<u8>,
}

/// A webhook receiver on loopback: answers 500 to the first `failures` requests, then 200; keeps
/// every request.
async fn webhook_receiver(failures: usize) -> (String, Arc<std::sync::Mutex<Vec<Received>>>) {
    use axum::http::{HeaderMap, StatusCode};
    let received = Arc::new(std::sync::Mutex::new(Vec::<Received>::new()));
    let kept = received.clone();
    let app = axum::Router::new().route(
        "/hooks/carga",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let mut kept = kept.lock().unwrap();
                kept.push(Received {
                    event: header("carga-event"),
                    delivery: header("carga-delivery"),
                    signature: header("carga-signature"),
                    body: body.to_vec(),
                });
                if kept.len() <= failures {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let url = format!("http://{}/hooks/carga", serve_on_loopback(app).await);
    (url, received)
}

/// The outbox: a worker killed with SIGKILL right after a run's data committed, before its end
/// and messages were recorded, loses no message: started again, the run is found committed, its
/// end and its `run_succeeded` message are recorded once, and the webhook is delivered (signed,
/// after two 500 answers, with the same delivery id each time) exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_survives_a_kill_after_the_commit_and_arrives_once_after_two_500s() {
    const SECRET: &str = "a-webhook-secret-of-some-length";
    let (url, received) = webhook_receiver(2).await;
    let mut carga = Embedded::new();
    std::fs::write(
        carga.path("specs/ventas.csv"),
        "id,total\n1,10\n2,20\n3,30\n",
    )
    .unwrap();
    carga.add_spec(
        "ventas",
        "id: ventas\nsource: {format: csv, location: ventas.csv}\nmode: complete\n\
         trigger: callback\nkey: [id]\n",
    );
    let marker = carga.path("committed.marker");
    carga.env = vec![
        (
            "CARGA_DRILL_HOLD_AFTER_COMMIT",
            marker.display().to_string(),
        ),
        ("CARGA_RELAY_POLL_SECONDS", "0.1".into()),
        ("CARGA_WEBHOOK_BACKOFF_SECONDS", "0.2".into()),
        ("CARGA_WEBHOOK_MAX_BACKOFF_SECONDS", "0.5".into()),
    ];
    carga.start();
    carga.wait_until_ready().await;

    // An admin subscribes; a short secret, an unknown event and a user in the URL are refused.
    let api = &carga;
    let put = |body: Value| async move {
        api.call_with(reqwest::Method::PUT, "/webhooks/ops", Some(&body))
            .await
    };
    for (bad, why) in [
        (
            serde_json::json!({"url": url, "events": ["run_succeeded"], "secret": "short"}),
            "secret",
        ),
        (
            serde_json::json!({"url": url, "events": ["run_exploded"], "secret": SECRET}),
            "run_exploded",
        ),
        (
            serde_json::json!({"url": url.replace("http://", "http://u:p@"), "events": ["run_succeeded"], "secret": SECRET}),
            "user or password",
        ),
    ] {
        let (status, problem) = put(bad).await;
        assert_eq!(status, 422, "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(why),
            "{problem}"
        );
        assert!(!problem.to_string().contains(SECRET), "{problem}");
    }
    let (status, hook) = put(serde_json::json!({
        "url": url, "events": ["run_succeeded", "extraction_failed"], "dataset_id": "ventas", "secret": SECRET,
    }))
    .await;
    assert_eq!(status, 200, "{hook}");
    assert!(
        hook.get("secret").is_none() && !hook.to_string().contains(SECRET),
        "{hook}"
    );

    // The run commits its data, then the worker is held (the drill) and killed there.
    let run_id = carga.trigger("ventas").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(tokio::time::Instant::now() < deadline, "{}", carga.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    carga.kill();
    assert_eq!(
        carga.manifests("ventas").await.len(),
        1,
        "the data committed"
    );
    assert!(
        received.lock().unwrap().is_empty(),
        "nothing sent before the end was recorded"
    );

    // Started again (no drill): the run is found committed, ends once, and its message goes out.
    carga
        .env
        .retain(|(name, _)| *name != "CARGA_DRILL_HOLD_AFTER_COMMIT");
    carga.start();
    carga.wait_until_ready().await;
    let run = carga.wait_for_end(&run_id).await;
    assert_eq!(run["state"], "succeeded", "{run}\n{}", carga.logs());
    assert_eq!(run["rows_written"], 3);
    assert_eq!(carga.manifests("ventas").await.len(), 1, "not run again");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, log) = carga
            .call(reqwest::Method::GET, "/webhooks/deliveries")
            .await;
        if log
            .as_array()
            .is_some_and(|l| l.iter().any(|d| d["state"] == "delivered"))
        {
            let log = log.as_array().unwrap();
            assert_eq!(log.len(), 1, "{log:?}");
            assert_eq!(log[0]["event"], "run_succeeded");
            assert_eq!(log[0]["run_id"], run_id.as_str());
            assert_eq!(log[0]["attempts"], 3, "{log:?}");
            assert_eq!(log[0]["last_status"], 200, "{log:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not delivered: {log}\n{}",
            carga.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing more comes: one message, three requests (two 500s, one 200).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 3, "{got:?}");
    let now = chrono::Utc::now().timestamp();
    for request in &got {
        assert_eq!(request.event, "run_succeeded");
        assert_eq!(request.delivery, got[0].delivery, "one message, retried");
        assert!(
            carga_scheduler::webhook::verify(
                SECRET,
                &request.signature,
                &request.body,
                now,
                Duration::from_secs(300)
            ),
            "bad signature {request:?}"
        );
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["event"], "run_succeeded");
        assert_eq!(body["run_id"], run_id.as_str());
        assert_eq!(body["rows"], 3);
    }
    let metrics = carga.text("/metrics").await;
    assert!(
        metrics.contains("carga_webhook_deliveries{state=\"delivered\"} 1")
            && metrics.contains("carga_outbox_pending_messages 0"),
        "{metrics}"
    );
    assert!(!carga.logs().contains(SECRET), "the secret is never logged");
    // It is in the secrets provider (here the local secrets file), not in the catalog.
    let secrets: Value =
        serde_json::from_str(&std::fs::read_to_string(carga.path("secrets.json")).unwrap())
            .unwrap();
    assert_eq!(secrets["webhooks/ops"]["secret"], SECRET);
    let catalog = std::fs::read(carga.path("state/carga.db")).unwrap();
    assert!(
        !catalog
            .windows(SECRET.len())
            .any(|w| w == SECRET.as_bytes()),
        "the catalog file holds no secret"
    );
    let (_, audit) = carga.call(reqwest::Method::GET, "/audit").await;
    assert!(!audit.to_string().contains(SECRET));
    let refused = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "put_webhook" && a["result"] == "rejected")
        .count();
    assert_eq!(refused, 3, "every refusal is audited: {audit}");
    assert_eq!(carga.stop().code(), Some(0), "{}", carga.logs());
}

/// A partitioned PostgreSQL table with `across_workers` in `carga serve`: the chunks are jobs on
/// the embedded SQLite queue, read by the process's own worker slots while the run that planned
/// them waits with its slot given back (with one slot, the run could not finish otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spread_run_reads_its_chunks_through_the_embedded_queue() {
    const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
    if std::net::TcpStream::connect_timeout(
        &"127.0.0.1:5432".parse().unwrap(),
        Duration::from_secs(2),
    )
    .is_err()
    {
        if std::env::var("CARGA_TEST_REQUIRE_ALL").is_ok_and(|v| v == "1") {
            panic!("PostgreSQL not reachable, and CARGA_TEST_REQUIRE_ALL=1 forbids skipping");
        }
        eprintln!("SKIPPED: PostgreSQL not reachable on loopback");
        return;
    }
    let pool = sqlx::PgPool::connect(PG).await.unwrap();
    sqlx::raw_sql(
        "DROP SCHEMA IF EXISTS carga_serve_spread CASCADE; CREATE SCHEMA carga_serve_spread;
         CREATE TABLE carga_serve_spread.t (id bigint PRIMARY KEY, v text);
         INSERT INTO carga_serve_spread.t SELECT g, 'v' || g FROM generate_series(1, 5000) g;
         ANALYZE carga_serve_spread.t;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut carga = Embedded::new();
    carga.retry_args.extend(["--concurrency", "1"]);
    std::fs::write(
        carga.path("secrets.json"),
        serde_json::json!({ "pg": { "url": PG } }).to_string(),
    )
    .unwrap();
    carga.add_spec(
        "spread",
        "id: spread\nsource:\n  format: postgres\n  table: carga_serve_spread.t\n  \
         partitions: {column: id, count: 4, across_workers: true}\nconnection_id: pg\n\
         mode: complete\ntrigger: callback\nkey: [id]\n",
    );
    carga.start();
    carga.wait_until_ready().await;
    let run_id = carga.trigger("spread").await;
    let run = carga.wait_for_end(&run_id).await;
    assert_eq!(run["state"], "succeeded", "{run}\n{}", carga.logs());
    assert_eq!(run["rows_written"], 5000);
    let manifests = carga.manifests("spread").await;
    assert_eq!(manifests.len(), 1);
    assert!(
        manifests[0]
            .files
            .iter()
            .all(|f| f.path.contains("/part-c000")),
        "{:?}",
        manifests[0].files
    );
    let logs = carga.logs();
    assert_eq!(logs.matches("chunk job taken").count(), 4, "{logs}");
    let engine = carga_jobs::Engine::new(carga.settings()).unwrap();
    let batches = carga_jobs::read::collect_dataset(engine.bucket(), engine.encryptor(), "spread")
        .await
        .unwrap();
    assert_eq!(ids_of(&batches), (1..=5000).collect::<Vec<i64>>());
}
