//! The catalog's behaviour, the same on both of its databases: SQLite (the embedded mode; always
//! runs) and PostgreSQL (production; needs the local server).

mod common;

use carga_config::DatasetSpec;
use carga_jobs::validation::ProgressSnapshot;
use carga_scheduler::catalog::{
    AuditEntry, BrokerState, Catalog, DeliveryOutcome, OutboxMessage, RunFilter, RunProgress,
    RunResult, WebhookSpec,
};
use carga_scheduler::{ExtractionJob, RunReason};
use chrono::{Duration, Utc};

fn spec(yaml: &str) -> DatasetSpec {
    DatasetSpec::from_yaml(yaml).unwrap()
}

fn scheduled(id: &str) -> DatasetSpec {
    spec(&format!(
        "id: {id}\nsource: {{format: postgres, tables: [public.a, public.b]}}\nconnection_id: db\n\
         mode: delta\ntimestamp_column: ts\nkey: [id]\ntrigger: timed_pull\ncron: '0 7 * * *'\n\
         time_zone: America/Bogota\n"
    ))
}

fn callback(id: &str) -> DatasetSpec {
    spec(&format!(
        "id: {id}\nsource: {{format: csv, location: /data/{id}.csv}}\nmode: complete\ntrigger: callback\n"
    ))
}

/// Everything the scheduler, workers and API ask of the catalog, in one life story.
async fn exercise(catalog: &Catalog) {
    catalog.migrate().await.unwrap();
    catalog.migrate().await.unwrap();
    catalog.ping().await.unwrap();

    // Configuration: an editor's write waits for approval; approving and disabling bump the
    // version the scheduler watches.
    let first = catalog
        .upsert_dataset(&scheduled("orders_eu"), "ana", false)
        .await
        .unwrap();
    assert_eq!(
        (first.version, first.approved, first.enabled),
        (1, false, true)
    );
    assert_eq!(first.spec, scheduled("orders_eu"));
    assert!(catalog.scheduled_datasets().await.unwrap().is_empty());
    let approved = catalog.approve("orders_eu", "bea").await.unwrap().unwrap();
    assert_eq!(
        (approved.version, approved.approved_by.as_deref()),
        (2, Some("bea"))
    );
    assert!(approved.updated_at >= first.updated_at);
    catalog
        .upsert_dataset(&scheduled("ordersxeu"), "bea", true)
        .await
        .unwrap();
    catalog
        .upsert_dataset(&callback("invoices"), "bea", true)
        .await
        .unwrap();
    let ids = |records: Vec<carga_scheduler::catalog::DatasetRecord>| {
        records
            .into_iter()
            .map(|r| r.dataset_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(catalog.scheduled_datasets().await.unwrap()),
        ["orders_eu", "ordersxeu"]
    );
    let disabled = catalog
        .set_enabled("ordersxeu", false, "carl")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((disabled.version, disabled.enabled), (2, false));
    assert_eq!(
        ids(catalog.scheduled_datasets().await.unwrap()),
        ["orders_eu"]
    );
    assert_eq!(
        ids(catalog.datasets().await.unwrap()),
        ["invoices", "orders_eu", "ordersxeu"]
    );
    // A rewrite by an editor needs approval again.
    let rewritten = catalog
        .upsert_dataset(&scheduled("orders_eu"), "ana", false)
        .await
        .unwrap();
    assert_eq!((rewritten.version, rewritten.approved), (3, false));
    assert_eq!(rewritten.created_at, first.created_at);
    assert!(catalog.approve("nope", "bea").await.unwrap().is_none());

    // Runs: queued once whatever the repeats, then started, retried, finished.
    let mut jobs = vec![
        ExtractionJob::new("orders_eu", RunReason::Schedule),
        ExtractionJob::new("ordersxeu", RunReason::Trigger),
        ExtractionJob::new("invoices", RunReason::Trigger),
    ];
    jobs[0].scheduled_for = Some(Utc::now() - Duration::minutes(1));
    jobs[1].requested_by = Some("ana".into());
    catalog.insert_queued_runs(&jobs).await.unwrap();
    catalog.insert_queued_runs(&jobs).await.unwrap();
    let queued = catalog.runs(None, Some("queued"), 100).await.unwrap();
    assert_eq!(queued.len(), 3);
    assert!(catalog.oldest_queued().await.unwrap().is_some());
    let run = catalog.run(&jobs[1].run_id).await.unwrap().unwrap();
    assert_eq!(run.requested_by.as_deref(), Some("ana"));
    assert_eq!(run.reason, "trigger");

    catalog.run_started(&jobs[0], "w1", 1).await.unwrap();
    // Live progress: written while running, read back as written.
    let progress = RunProgress::new(
        &ProgressSnapshot {
            rows_read: 40_000,
            rows_rejected: 2,
            bytes_read: 4 << 20,
            fraction: Some(0.4),
        },
        std::time::Duration::from_secs(2),
    );
    assert_eq!(progress.rows_per_second, 20_000.0);
    assert_eq!(progress.eta_seconds, Some(3));
    catalog
        .run_progress(&jobs[0].run_id, &progress)
        .await
        .unwrap();
    let live = catalog.run(&jobs[0].run_id).await.unwrap().unwrap();
    assert_eq!(live.progress.as_ref(), Some(&progress));
    let next_at = Utc::now() + Duration::seconds(30);
    catalog
        .run_retrying(&jobs[0].run_id, 1, 5, next_at, "timeout")
        .await
        .unwrap();
    let retrying = catalog.run(&jobs[0].run_id).await.unwrap().unwrap();
    assert_eq!(
        (
            retrying.state.as_str(),
            retrying.attempts,
            retrying.max_attempts
        ),
        ("retrying", 1, Some(5))
    );
    assert_eq!(
        retrying.next_attempt_at.map(|t| t.timestamp()),
        Some(next_at.timestamp())
    );
    assert_eq!(
        retrying.worker, None,
        "waiting in the queue, not in a worker"
    );
    assert_eq!(
        catalog.queued_run(&jobs[0].dataset_id).await.unwrap(),
        None,
        "a retrying run is not waiting for its first attempt"
    );
    // A late progress write of an attempt that ended changes nothing.
    let mut late = progress.clone();
    late.rows_read = 99;
    catalog.run_progress(&jobs[0].run_id, &late).await.unwrap();
    assert_eq!(
        catalog
            .run(&jobs[0].run_id)
            .await
            .unwrap()
            .unwrap()
            .progress,
        Some(progress.clone())
    );
    catalog.run_started(&jobs[0], "w2", 2).await.unwrap();
    let running = catalog.run(&jobs[0].run_id).await.unwrap().unwrap();
    assert_eq!((running.state.as_str(), running.attempts), ("running", 2));
    assert_eq!(running.progress, None, "a new attempt starts from nothing");
    assert_eq!(running.worker.as_deref(), Some("w2"));
    assert_eq!(running.error, None, "a new attempt clears the last error");
    assert_eq!(
        running.scheduled_for.map(|t| t.timestamp()),
        jobs[0].scheduled_for.map(|t| t.timestamp())
    );
    catalog
        .run_finished(
            &jobs[0].run_id,
            2,
            &RunResult {
                state: "succeeded",
                rows_written: Some(1234),
                bytes_written: Some(99_000),
                manifest_url: Some("file:///m".into()),
                watermark_after: Some("{\"ts\":\"2026-11-23\"}".into()),
                ..RunResult::default()
            },
        )
        .await
        .unwrap();
    let done = catalog.run(&jobs[0].run_id).await.unwrap().unwrap();
    assert_eq!(done.state, "succeeded");
    assert_eq!(
        (done.rows_written, done.bytes_written),
        (Some(1234), Some(99_000))
    );
    assert!(done.finished_at.unwrap() >= done.started_at.unwrap());
    let successes = catalog.last_successes().await.unwrap();
    assert_eq!(successes.len(), 1);
    assert_eq!(successes[0].0, "orders_eu");
    let throughput = catalog.throughput(60).await.unwrap();
    assert_eq!(throughput.len(), 1, "{throughput:?}");
    assert_eq!((throughput[0].runs, throughput[0].rows_written), (1, 1234));
    assert_eq!(throughput[0].state, "succeeded");

    // A worker that takes a run the enqueuer never recorded still leaves a row.
    let orphan = ExtractionJob::new("invoices", RunReason::Retry);
    catalog.run_started(&orphan, "w1", 1).await.unwrap();
    assert_eq!(
        catalog.run(&orphan.run_id).await.unwrap().unwrap().state,
        "running"
    );

    // Search: a part of the id in any case, `_` meaning itself, and an enqueue-time window.
    let search = |text: &str| RunFilter {
        search: Some(text.into()),
        ..RunFilter::default()
    };
    let found = catalog.search_runs(&search("S_E")).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].dataset_id, "orders_eu");
    assert_eq!(
        catalog.search_runs(&search("orders")).await.unwrap().len(),
        2
    );
    assert_eq!(catalog.search_runs(&search("%")).await.unwrap().len(), 0);
    let window = RunFilter {
        since: Some(Utc::now() - Duration::hours(1)),
        until: Some(Utc::now() + Duration::hours(1)),
        state: Some("queued".into()),
        limit: 1,
        ..RunFilter::default()
    };
    assert_eq!(catalog.search_runs(&window).await.unwrap().len(), 1);
    let future = RunFilter {
        since: Some(Utc::now() + Duration::hours(1)),
        ..RunFilter::default()
    };
    assert!(catalog.search_runs(&future).await.unwrap().is_empty());
    let newest_first = catalog.runs(Some("invoices"), None, 10).await.unwrap();
    assert_eq!(newest_first.len(), 2);
    assert!(newest_first[0].enqueued_at >= newest_first[1].enqueued_at);

    // Operators' actions: kill once, delete only what ended, retries point to their successor.
    assert!(catalog.run_killed(&jobs[1].run_id, "carl").await.unwrap());
    assert!(!catalog.run_killed(&jobs[1].run_id, "carl").await.unwrap());
    let killed = catalog.run(&jobs[1].run_id).await.unwrap().unwrap();
    assert_eq!(killed.state, "killed");
    assert_eq!(killed.error.as_deref(), Some("killed by carl"));
    catalog
        .run_retried_as(&jobs[1].run_id, "next")
        .await
        .unwrap();
    assert_eq!(
        catalog
            .run(&jobs[1].run_id)
            .await
            .unwrap()
            .unwrap()
            .retried_as
            .as_deref(),
        Some("next")
    );
    assert!(
        !catalog.delete_run(&jobs[2].run_id).await.unwrap(),
        "still queued"
    );
    assert!(catalog.delete_run(&jobs[1].run_id).await.unwrap());
    assert!(catalog.run(&jobs[1].run_id).await.unwrap().is_none());

    // Tokens: only the hash is kept; an unknown token is nobody.
    let token = catalog.create_token("ana", "editor").await.unwrap();
    assert_eq!(
        catalog.token(&token).await.unwrap(),
        Some(("ana".to_owned(), "editor".to_owned()))
    );
    assert_eq!(catalog.token("carga_nope").await.unwrap(), None);

    // Audit: newest first, per dataset.
    for (action, dataset, result) in [
        ("put_dataset", Some("orders_eu"), "ok"),
        ("approve", Some("orders_eu"), "denied"),
        ("list_runs", None, "ok"),
    ] {
        catalog
            .audit(&AuditEntry {
                subject: "ana".into(),
                role: Some("editor".into()),
                action: action.into(),
                dataset_id: dataset.map(str::to_owned),
                source_ip: Some("127.0.0.1".into()),
                result,
                detail: None,
            })
            .await
            .unwrap();
    }
    let log = catalog.audit_log(Some("orders_eu"), 10).await.unwrap();
    let actions: Vec<(&str, &str)> = log
        .iter()
        .map(|r| (r.entry.action.as_str(), r.entry.result))
        .collect();
    assert_eq!(actions, [("approve", "denied"), ("put_dataset", "ok")]);
    assert_eq!(catalog.audit_log(None, 2).await.unwrap().len(), 2);

    assert!(catalog.delete_dataset("invoices").await.unwrap());
    assert!(!catalog.delete_dataset("invoices").await.unwrap());
}

#[tokio::test]
async fn the_sqlite_catalog_keeps_configuration_runs_tokens_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::connect(&format!(
        "sqlite://{}",
        dir.path().join("carga.db").display()
    ))
    .await
    .unwrap();
    assert!(catalog.sqlite_pool().is_some());
    exercise(&catalog).await;
}

#[tokio::test]
async fn the_postgres_catalog_keeps_configuration_runs_tokens_and_audit() {
    if !common::services_available(&[("PostgreSQL", "127.0.0.1:5432")]) {
        return;
    }
    let (name, url) = common::fresh_postgres_database("carga_cat").await;
    let catalog = Catalog::connect(&url).await.unwrap();
    exercise(&catalog).await;
    catalog.postgres_pool().unwrap().close().await;
    let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
}

/// The outbox: a run's end records its messages and their deliveries in one transaction, once
/// however often it is recorded; relays take pending rows under a lease, one relay each.
async fn outbox(catalog: &Catalog) {
    catalog.migrate().await.unwrap();
    let hook = |url: &str, dataset: Option<&str>, events: &[&str], enabled: bool| WebhookSpec {
        url: url.into(),
        dataset_id: dataset.map(str::to_owned),
        events: events.iter().map(|e| e.to_string()).collect(),
        enabled,
    };
    let all = catalog
        .put_webhook(
            "all",
            &hook("http://hooks.example/all", None, &["run_succeeded"], true),
            "ada",
        )
        .await
        .unwrap();
    assert_eq!(all.events, ["run_succeeded"]);
    for (id, spec) in [
        (
            "other",
            hook(
                "http://hooks.example/o",
                Some("other"),
                &["run_succeeded"],
                true,
            ),
        ),
        (
            "failures",
            hook("http://hooks.example/f", None, &["extraction_failed"], true),
        ),
        (
            "off",
            hook("http://hooks.example/off", None, &["run_succeeded"], false),
        ),
    ] {
        catalog.put_webhook(id, &spec, "ada").await.unwrap();
    }
    assert_eq!(catalog.webhooks().await.unwrap().len(), 4);

    let job = ExtractionJob::new("ventas", RunReason::Trigger);
    catalog
        .insert_queued_runs(std::slice::from_ref(&job))
        .await
        .unwrap();
    let messages = [
        OutboxMessage {
            dedupe_key: format!("{}:dataset_ready", job.run_id),
            event: None,
            routing_key: "transform.dataset_ready".into(),
            dataset_id: "ventas".into(),
            run_id: Some(job.run_id.clone()),
            payload: serde_json::json!({"event": "dataset_ready", "rows": 3}),
        },
        OutboxMessage {
            dedupe_key: format!("{}:run_succeeded", job.run_id),
            event: Some("run_succeeded"),
            routing_key: "notification.run_succeeded".into(),
            dataset_id: "ventas".into(),
            run_id: Some(job.run_id.clone()),
            payload: serde_json::json!({"event": "run_succeeded", "rows": 3}),
        },
    ];
    let result = RunResult {
        state: "succeeded",
        rows_written: Some(3),
        ..RunResult::default()
    };
    // Recorded twice (a retried end): kept once.
    for _ in 0..2 {
        catalog
            .run_finished_with(&job.run_id, 1, &result, &messages)
            .await
            .unwrap();
    }
    let run = catalog.run(&job.run_id).await.unwrap().unwrap();
    assert_eq!(
        (run.state.as_str(), run.rows_written),
        ("succeeded", Some(3))
    );
    assert_eq!(catalog.outbox_pending().await.unwrap(), 2);
    let log = catalog.deliveries(None, None, 10).await.unwrap();
    assert_eq!(
        log.len(),
        1,
        "only the enabled subscription to every dataset's successes: {log:?}"
    );
    assert_eq!(
        (log[0].webhook_id.as_str(), log[0].state.as_str()),
        ("all", "pending")
    );
    assert_eq!(log[0].event.as_deref(), Some("run_succeeded"));

    // One relay takes the pending messages, in order; another finds none while the lease holds,
    // and takes what is left once it ran out (the first relay died holding it).
    let lease = std::time::Duration::from_millis(300);
    let taken = catalog.claim_outbox("relay-a", lease, 10).await.unwrap();
    assert_eq!(taken.len(), 2);
    assert_eq!(taken[0].routing_key, "transform.dataset_ready");
    assert!(taken[0].id < taken[1].id);
    assert!(
        catalog
            .claim_outbox("relay-b", lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    catalog
        .outbox_sent(taken[0].id, BrokerState::Published)
        .await
        .unwrap();
    assert_eq!(catalog.outbox_pending().await.unwrap(), 1);
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let retaken = catalog.claim_outbox("relay-b", lease, 10).await.unwrap();
    assert_eq!(retaken.len(), 1, "{retaken:?}");
    assert_eq!(retaken[0].id, taken[1].id);
    catalog
        .outbox_sent(retaken[0].id, BrokerState::Skipped)
        .await
        .unwrap();
    assert_eq!(catalog.outbox_pending().await.unwrap(), 0);
    let lease = std::time::Duration::from_secs(60);

    // Deliveries: taken under a lease with what sending needs; a retry comes due again.
    let due = catalog.claim_deliveries(lease, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].url, "http://hooks.example/all");
    assert_eq!(due[0].event, "run_succeeded");
    assert_eq!(due[0].attempts, 0);
    assert!(
        catalog
            .claim_deliveries(lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    catalog
        .delivery_attempted(
            due[0].id,
            1,
            &DeliveryOutcome::Retry {
                status: Some(500),
                error: "HTTP 500".into(),
                next: Utc::now() - Duration::seconds(1),
            },
        )
        .await
        .unwrap();
    let again = catalog.claim_deliveries(lease, 10).await.unwrap();
    assert_eq!((again.len(), again[0].attempts), (1, 1));
    catalog
        .delivery_attempted(again[0].id, 2, &DeliveryOutcome::Delivered { status: 204 })
        .await
        .unwrap();
    let log = catalog
        .deliveries(Some("all"), Some("ventas"), 10)
        .await
        .unwrap();
    assert_eq!(
        (log[0].state.as_str(), log[0].attempts, log[0].last_status),
        ("delivered", 2, Some(204))
    );
    assert!(log[0].delivered_at.is_some());
    let counts = catalog.outbox_counts().await.unwrap();
    assert_eq!(counts.pending_messages, 0);
    assert_eq!(counts.deliveries, [("delivered".to_owned(), 1)]);
    assert!(
        catalog
            .deliveries(Some("other"), None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Settled rows are pruned after the retention.
    assert_eq!(
        catalog
            .prune_outbox(Utc::now() - Duration::days(1))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        catalog
            .prune_outbox(Utc::now() + Duration::days(1))
            .await
            .unwrap(),
        3
    );
    assert!(catalog.delete_webhook("all").await.unwrap());
    assert!(!catalog.delete_webhook("all").await.unwrap());
}

#[tokio::test]
async fn the_sqlite_outbox_records_messages_with_the_run_end_once_and_leases_them() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("carga.db").display());
    outbox(&Catalog::connect(&url).await.unwrap()).await;
}

#[tokio::test]
async fn the_postgres_outbox_records_messages_with_the_run_end_once_and_leases_them() {
    if !common::services_available(&[("PostgreSQL", "127.0.0.1:5432")]) {
        return;
    }
    let (_name, url) = common::fresh_postgres_database("carga_outbox").await;
    outbox(&Catalog::connect(&url).await.unwrap()).await;
}
