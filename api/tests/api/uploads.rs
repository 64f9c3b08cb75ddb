//! File uploads (`/upload/dataset`) against a real listening API, the PostgreSQL catalog and
//! RabbitMQ: a tus upload cut twice mid-request resumes from the offsets the server kept, is
//! validated and runs into the raw zone; what sits in `temp/` is never plaintext; a rejected
//! upload leaves nothing behind; an upload is its uploader's; messages say what happened.
//!
//! The file is `CARGA_UPLOAD_TEST_MIB` MiB (24 by default; the 2 GB run of the issue is
//! `benches/upload_resume.sh`, release build, with the server's peak RSS).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use base64::Engine as _;
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{Api, error_of, services_available};

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const TUS: (&str, &str) = ("tus-resumable", "1.0.0");

fn rabbit_available() -> bool {
    super::common::services_available(&[("RabbitMQ", "127.0.0.1:5672")])
}

/// The API of `api` on a loopback port, as clients reach it (cuts are real TCP closes).
async fn listen(api: &Api) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = api.state.clone();
    tokio::spawn(carga_api::serve(state, listener, std::future::pending()));
    addr
}

fn metadata(pairs: &[(&str, &str)]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    pairs
        .iter()
        .map(|(k, v)| format!("{k} {}", b64.encode(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// A CSV of about `bytes` bytes with a header and unique ids; its row count.
fn write_csv(path: &Path, bytes: u64) -> u64 {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    out.write_all(b"id,customer,amount,updated_at\n").unwrap();
    let (mut written, mut rows) = (30u64, 0u64);
    while written < bytes {
        let line = format!(
            "{rows},cliente-{:06},{}.{:02},2026-11-{:02}T10:00:00\n",
            rows % 999_983,
            rows % 10_000,
            rows % 100,
            1 + rows % 28
        );
        out.write_all(line.as_bytes()).unwrap();
        written += line.len() as u64;
        rows += 1;
    }
    out.flush().unwrap();
    rows
}

async fn read_range(path: &Path, from: u64, len: u64) -> Vec<u8> {
    let mut file = tokio::fs::File::open(path).await.unwrap();
    file.seek(std::io::SeekFrom::Start(from)).await.unwrap();
    let mut out = vec![0u8; len as usize];
    file.read_exact(&mut out).await.unwrap();
    out
}

/// Sends a PATCH announcing the rest of the file but closes the connection after `send` bytes:
/// a client whose network went away.
async fn patch_then_cut(
    addr: SocketAddr,
    token: &str,
    id: &str,
    offset: u64,
    rest: u64,
    bytes: &[u8],
) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PATCH /upload/dataset/{id} HTTP/1.1\r\nhost: carga\r\nauthorization: Bearer {token}\r\n\
         tus-resumable: 1.0.0\r\ncontent-type: application/offset+octet-stream\r\n\
         upload-offset: {offset}\r\ncontent-length: {rest}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for piece in bytes.chunks(256 * 1024) {
        stream.write_all(piece).await.unwrap();
    }
    stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(stream);
}

/// The offset the server reports, once it has stopped moving (the cut request has ended).
async fn settled_offset(client: &reqwest::Client, url: &str, token: &str, expected: u64) -> u64 {
    let mut last = u64::MAX;
    for _ in 0..200 {
        let response = client
            .head(url)
            .bearer_auth(token)
            .header(TUS.0, TUS.1)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let offset: u64 = response.headers()["upload-offset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        if offset == expected && offset == last {
            return offset;
        }
        last = offset;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

/// Every file under `dir`.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(files_under(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// A queue bound to the upload notifications, declared before anything is published.
async fn notifications() -> (lapin::Connection, lapin::Channel, String) {
    let properties = lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio::current());
    let connection = lapin::Connection::connect(AMQP_URL, properties)
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    carga_scheduler::notify::declare_topology(&channel)
        .await
        .unwrap();
    let name = format!("carga-test-uploads-{}", uuid::Uuid::now_v7().simple());
    channel
        .queue_declare(
            &name,
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    for key in [
        "notification.upload_success",
        "notification.validation_failed",
    ] {
        channel
            .queue_bind(
                &name,
                carga_scheduler::notify::EXCHANGE,
                key,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    (connection, channel, name)
}

/// The messages on `queue`, once the outbox's relay has published every one recorded.
async fn messages(api: &Api, channel: &lapin::Channel, queue: &str) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while api.catalog.outbox_pending().await.unwrap() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outbox relay published nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut out = Vec::new();
    while let Some(message) = channel
        .basic_get(queue, BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        out.push(serde_json::from_slice(&message.delivery.data).unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumable_upload_cut_twice_resumes_validates_and_runs() {
    if !services_available() || !rabbit_available() {
        return;
    }
    let api = Api::build(None, |_| {}, Some(AMQP_URL)).await;
    let (_connection, channel, queue) = notifications().await;
    let editor = api.catalog.create_token("eddie", "editor").await.unwrap();
    let other = api.catalog.create_token("olga", "editor").await.unwrap();
    let viewer = api.catalog.create_token("vera", "viewer").await.unwrap();
    let admin = api.catalog.create_token("ada", "admin").await.unwrap();
    let addr = listen(&api).await;
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();

    let mib: u64 = std::env::var("CARGA_UPLOAD_TEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("ventas.csv");
    let rows = write_csv(&csv, mib << 20);
    let length = std::fs::metadata(&csv).unwrap().len();

    // Discovery needs no token.
    let options = client
        .request(reqwest::Method::OPTIONS, format!("{base}/upload/dataset"))
        .send()
        .await
        .unwrap();
    assert_eq!(options.status(), 204);
    assert_eq!(options.headers()["tus-version"], "1.0.0");
    assert!(
        options.headers()["tus-extension"]
            .to_str()
            .unwrap()
            .contains("termination")
    );

    let create = |token: &str| {
        client
            .post(format!("{base}/upload/dataset"))
            .bearer_auth(token)
            .header(TUS.0, TUS.1)
            .header("upload-length", length.to_string())
            .header(
                "upload-metadata",
                metadata(&[("dataset", "ventas_subidas"), ("filename", "ventas.csv")]),
            )
            .send()
    };
    assert_eq!(create(&viewer).await.unwrap().status(), 403);
    let created = create(&editor).await.unwrap();
    assert_eq!(created.status(), 201);
    assert_eq!(created.headers()["tus-resumable"], "1.0.0");
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let id = location.rsplit('/').next().unwrap().to_owned();
    let url = format!("{base}{location}");

    // Someone else's upload does not exist for them; an admin sees it.
    let head = |token: &str| client.head(&url).bearer_auth(token.to_owned()).send();
    assert_eq!(head(&other).await.unwrap().status(), 404);
    assert_eq!(head(&admin).await.unwrap().status(), 200);

    // Two cuts: at about 30% and 60%, mid-frame and mid-part.
    let first = length * 3 / 10 + 7;
    let bytes = read_range(&csv, 0, first).await;
    patch_then_cut(addr, &editor, &id, 0, length, &bytes).await;
    let offset = settled_offset(&client, &url, &editor, first).await;
    assert_eq!(offset, first, "the server keeps every byte that arrived");

    let second = length * 6 / 10 + 13;
    let bytes = read_range(&csv, offset, second - offset).await;
    patch_then_cut(addr, &editor, &id, offset, length - offset, &bytes).await;
    let offset = settled_offset(&client, &url, &editor, second).await;
    assert_eq!(offset, second);

    // A resume from a wrong offset is refused with the right one in the message.
    let wrong = client
        .patch(&url)
        .bearer_auth(&editor)
        .header(TUS.0, TUS.1)
        .header("content-type", "application/offset+octet-stream")
        .header("upload-offset", "0")
        .body("id\n")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 409);

    // Nothing in the upload area is plaintext.
    let bucket = Path::new(&api.settings.bucket);
    let temp = files_under(&bucket.join("temp"));
    assert!(temp.len() >= 3, "two segments and a state: {temp:?}");
    for file in &temp {
        let stored = std::fs::read(file).unwrap();
        assert!(
            !stored.windows(8).any(|w| w == b"cliente-"),
            "{} holds plaintext",
            file.display()
        );
    }

    // The rest, streamed from the file.
    let rest = tokio::fs::File::open(&csv).await.unwrap();
    let mut rest = rest;
    rest.seek(std::io::SeekFrom::Start(offset)).await.unwrap();
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(rest));
    let done = client
        .patch(&url)
        .bearer_auth(&editor)
        .header(TUS.0, TUS.1)
        .header("content-type", "application/offset+octet-stream")
        .header("upload-offset", offset.to_string())
        .header("content-length", (length - offset).to_string())
        .body(body)
        .send()
        .await
        .unwrap();
    let status = done.status();
    let answer: Value = serde_json::from_slice(&done.bytes().await.unwrap()).unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["datasetId"], "ventas_subidas");
    assert_eq!(answer["status"], "initial-validation-passed", "{answer}");
    assert_eq!(answer["rows"], rows);
    let report_url = answer["reportUrl"].as_str().unwrap();
    assert!(Path::new(report_url).exists(), "{report_url}");
    let upload_location = answer["location"].as_str().unwrap().to_owned();
    assert_eq!(upload_location, format!("upload://{id}"));

    // Tests running at once share the exchange: only this upload's messages count here.
    let notes: Vec<Value> = messages(&api, &channel, &queue)
        .await
        .into_iter()
        .filter(|n| n["upload_id"] == id.as_str())
        .collect();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0]["event"], "upload_success");
    assert_eq!(notes[0]["upload_id"], id.as_str());
    assert_eq!(notes[0]["dataset_id"], "ventas_subidas");

    // A dataset runs from it; only its uploader (or an admin) may point a spec at it.
    let spec = format!(
        "id: ventas_subidas\nsource: {{format: csv, location: '{upload_location}'}}\ntrigger: callback\n"
    );
    let (status, body) = api
        .call(
            Method::PUT,
            "/datasets/ventas_subidas",
            Some(&other),
            Some(&spec),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(error_of(&body).contains("no upload"), "{body}");
    let (status, body) = api
        .call(
            Method::PUT,
            "/datasets/ventas_subidas",
            Some(&editor),
            Some(&spec),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let record = api
        .catalog
        .dataset("ventas_subidas")
        .await
        .unwrap()
        .unwrap();
    let engine = carga_jobs::Engine::new(api.settings.clone()).unwrap();
    let outcome = engine.run(&record.spec).await.unwrap();
    assert_eq!(outcome.manifest.rows, rows);

    // The name is taken now.
    let again = create(&editor).await.unwrap();
    assert_eq!(again.status(), 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_uploads_leave_nothing_in_temp_and_say_why() {
    if !services_available() || !rabbit_available() {
        return;
    }
    let api = Api::build(None, |s| s.uploads.max_bytes = 1 << 20, Some(AMQP_URL)).await;
    let (_connection, channel, queue) = notifications().await;
    let editor = api.catalog.create_token("eddie", "editor").await.unwrap();
    let addr = listen(&api).await;
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let temp = Path::new(&api.settings.bucket).join("temp");

    // One request (creation-with-upload): a CSV whose third line has a field too many.
    let upload = |name: &str, filename: &str, body: &'static [u8]| {
        client
            .post(format!("{base}/upload/dataset"))
            .bearer_auth(&editor)
            .header(TUS.0, TUS.1)
            .header("upload-length", body.len().to_string())
            .header("content-type", "application/offset+octet-stream")
            .header(
                "upload-metadata",
                metadata(&[("dataset", name), ("filename", filename)]),
            )
            .body(body)
            .send()
    };
    let response = upload("roto", "roto.csv", b"id,name\n1,ana\n2,luis,extra\n3,eva\n")
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let answer: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(answer["status"], "rejected");
    let reason = answer["reason"].as_str().unwrap();
    assert!(reason.contains("line 3"), "{reason}");
    assert!(files_under(&temp).is_empty(), "{:?}", files_under(&temp));
    // The report stays (sealed), outside temp/.
    assert!(Path::new(answer["reportUrl"].as_str().unwrap()).exists());

    // A workbook sent as CSV is refused at its first bytes.
    let response = upload(
        "libro",
        "libro.csv",
        b"PK\x03\x04\x14\x00\x06\x00rest of a zip",
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 422);
    let answer: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert!(
        answer["reason"].as_str().unwrap().contains("ZIP"),
        "{answer}"
    );
    assert!(files_under(&temp).is_empty());

    // Broken JSON is not accepted.
    let response = upload("malo", "malo.json", b"[{\"id\": 1}, {\"id\": 2,]")
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    assert!(files_under(&temp).is_empty());

    // Over the size limit: refused before a byte is stored.
    let response = client
        .post(format!("{base}/upload/dataset"))
        .bearer_auth(&editor)
        .header(TUS.0, TUS.1)
        .header("upload-length", (2u64 << 20).to_string())
        .header(
            "upload-metadata",
            metadata(&[("dataset", "grande"), ("filename", "grande.csv")]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert!(files_under(&temp).is_empty());

    let notes = messages(&api, &channel, &queue).await;
    let failed = notes
        .iter()
        .filter(|n| n["event"] == "validation_failed")
        .filter(|n| ["roto", "libro", "malo"].contains(&n["dataset_id"].as_str().unwrap_or("")))
        .count();
    assert_eq!(failed, 3, "{notes:?}");

    // Each refusal is in the audit log.
    let entries = api.catalog.audit_log(None, 100).await.unwrap();
    let rejected = entries
        .iter()
        .filter(|e| e.entry.action.starts_with("upload") && e.entry.result == "rejected")
        .count();
    assert!(rejected >= 4, "{entries:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_file_goes_in_one_multipart_request_and_termination_removes_an_upload() {
    if !services_available() {
        return;
    }
    let api = Api::new().await;
    let editor = api.catalog.create_token("eddie", "editor").await.unwrap();
    let addr = listen(&api).await;
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();

    // An empty line is a warning, not a rejection.
    let boundary = "carga-test-boundary";
    let form = format!(
        "--{boundary}\r\ncontent-disposition: form-data; name=\"dataset\"\r\n\r\nclientes\r\n\
         --{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"clientes.csv\"\r\n\
         content-type: text/csv\r\n\r\nid,name\n1,ana\n\n2,luis\n\r\n--{boundary}--\r\n"
    );
    let response = client
        .post(format!("{base}/upload/dataset"))
        .bearer_auth(&editor)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(form)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let answer: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "validated_with_warnings", "{answer}");
    let id = answer["uploadId"].as_str().unwrap().to_owned();
    let path = format!("/upload/dataset/{id}");
    let (status, shown) = api.call(Method::GET, &path, Some(&editor), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["status"], "validated_with_warnings");
    assert_eq!(shown["offset"], shown["length"]);

    // tus termination.
    let (status, _) = api.call(Method::DELETE, &path, Some(&editor), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api.call(Method::GET, &path, Some(&editor), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let temp = Path::new(&api.settings.bucket).join("temp");
    assert!(files_under(&temp).is_empty(), "{:?}", files_under(&temp));
}
