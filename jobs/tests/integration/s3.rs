//! The same runs against S3 (moto_server on loopback): sources read from S3 and from an HTTP URL,
//! parts uploaded (multipart for large ones), manifests committed with a conditional put.
//!
//! One test function on purpose: it sets the AWS credential variables before any thread starts.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use crate::common::{rows_as_json, service_available};
use carga_config::{DatasetSpec, Settings};
use carga_jobs::manifest::ManifestLog;
use carga_jobs::{Engine, JobError, read};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

fn endpoint() -> String {
    std::env::var("CARGA_TEST_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5000".into())
}

/// A bare HTTP request to moto (which does not check auth): bucket creation and public objects,
/// which object_store does not do.
fn raw_request(method: &str, path: &str, headers: &str, body: &[u8]) {
    let host = endpoint().trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&host).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "{method} {path}: {response}"
    );
}

fn create_bucket(name: &str) {
    raw_request("PUT", &format!("/{name}"), "", b"");
}

/// An object anyone may GET by URL, as a public HTTPS download would be.
fn put_public(bucket: &str, key: &str, body: &[u8]) {
    let headers = "Content-Type: application/octet-stream\r\nx-amz-acl: public-read\r\n";
    raw_request("PUT", &format!("/{bucket}/{key}"), headers, body);
}

fn raw_store(bucket: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_endpoint(endpoint())
            .with_allow_http(true)
            .build()
            .unwrap(),
    )
}

#[test]
fn runs_against_s3() {
    let address = endpoint().trim_start_matches("http://").to_owned();
    if !service_available("moto S3 server", &address) {
        return;
    }
    // SAFETY: this binary's only test sets these before it starts any other thread.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_DEFAULT_REGION", "us-east-1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(scenarios());
}

async fn scenarios() {
    let bucket = format!("carga-test-{}", uuid::Uuid::new_v4().simple());
    create_bucket(&bucket);
    let store = raw_store(&bucket);
    let keys = tempfile::tempdir().unwrap();
    let mut settings = Settings {
        bucket: format!("s3://{bucket}/lake"),
        key_file: keys.path().join("keys.json"),
        batch_rows: 256,
        rows_per_file: 1000,
        ..Settings::default()
    };
    settings.s3.endpoint = Some(endpoint());
    settings.s3.allow_http = true;
    // moto serves objects by URL on loopback too.
    settings.sources.allow_private_networks = Some(true);
    let engine = Engine::new(settings.clone()).unwrap();

    // CSV streamed from S3, written to S3 in several parts.
    let mut csv = String::from("id,nombre,monto\n");
    for i in 0..2500 {
        csv.push_str(&format!("{i},cliente {i},{}.5\n", i * 2));
    }
    store
        .put(
            &Path::from("incoming/ventas.csv"),
            PutPayload::from(csv.clone()),
        )
        .await
        .unwrap();
    let spec = DatasetSpec::from_yaml(&format!(
        "id: ventas\nsource: {{format: csv, location: 's3://{bucket}/incoming/ventas.csv'}}\ntrigger: callback\n"
    ))
    .unwrap();
    let outcome = engine.run(&spec).await.unwrap();
    assert_eq!(outcome.manifest.rows, 2500);
    assert_eq!(outcome.manifest.files.len(), 3);
    assert!(
        outcome
            .manifest_url
            .starts_with(&format!("s3://{bucket}/lake/raw/ventas/_manifests/")),
        "{}",
        outcome.manifest_url
    );
    let listed = store
        .head(&Path::from(outcome.manifest.files[0].path.as_str()))
        .await
        .unwrap();
    assert_eq!(listed.size, outcome.manifest.files[0].bytes);
    let rows = rows_as_json(
        &read::collect_dataset(engine.bucket(), engine.encryptor(), "ventas")
            .await
            .unwrap(),
    );
    assert_eq!(rows.len(), 2500);
    assert_eq!(
        rows[2499],
        serde_json::json!({"id": 2499, "nombre": "cliente 2499", "monto": 4998.5})
    );

    // The same file over plain HTTP (moto serves objects by URL), as JSON.
    let mut ndjson = String::new();
    for i in 0..10 {
        ndjson.push_str(&format!(
            "{{\"id\": {i}, \"tags\": [\"t{i}\"], \"geo\": {{\"lat\": {i}.5}}}}\n"
        ));
    }
    put_public(&bucket, "incoming/clientes.json", ndjson.as_bytes());
    let spec = DatasetSpec::from_yaml(&format!(
        "id: clientes\nsource: {{format: json, location: '{}/{bucket}/incoming/clientes.json'}}\ntrigger: callback\n",
        endpoint()
    ))
    .unwrap();
    assert_eq!(engine.run(&spec).await.unwrap().manifest.rows, 10);

    // Excel needs random access: streamed from S3 to a temporary file first.
    let xlsx = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../samples/productos.xlsx"
    ))
    .unwrap();
    store
        .put(
            &Path::from("incoming/productos.xlsx"),
            PutPayload::from(xlsx),
        )
        .await
        .unwrap();
    let spec = DatasetSpec::from_yaml(&format!(
        "id: productos\nsource: {{format: excel, location: 's3://{bucket}/incoming/productos.xlsx', excel: {{header_row: 2}}}}\ntrigger: callback\n"
    ))
    .unwrap();
    assert_eq!(engine.run(&spec).await.unwrap().manifest.rows, 10);

    // A part over the multipart threshold (10 MiB): incompressible text, one file.
    let mut big = String::from("id,blob\n");
    for i in 0..200_000u64 {
        let noise: String = (0..8)
            .map(|k| format!("{:016x}", splitmix(i * 8 + k)))
            .collect();
        big.push_str(&format!("{i},{noise}\n"));
    }
    store
        .put(&Path::from("incoming/big.csv"), PutPayload::from(big))
        .await
        .unwrap();
    let big_engine = Engine::new(Settings {
        rows_per_file: 1_000_000,
        batch_rows: 8192,
        ..settings.clone()
    })
    .unwrap();
    let spec = DatasetSpec::from_yaml(&format!(
        "id: big\nsource: {{format: csv, location: 's3://{bucket}/incoming/big.csv'}}\ntrigger: callback\n"
    ))
    .unwrap();
    let outcome = big_engine.run(&spec).await.unwrap();
    assert_eq!(outcome.manifest.files.len(), 1);
    assert!(
        outcome.manifest.bytes > 10 * 1024 * 1024,
        "{} bytes",
        outcome.manifest.bytes
    );
    let rows: usize = read::collect_dataset(big_engine.bucket(), big_engine.encryptor(), "big")
        .await
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows, 200_000);

    // The conditional put refuses a second commit of the same manifest sequence on S3.
    let log = ManifestLog::new(engine.bucket(), "ventas");
    let latest = log.latest().await.unwrap().unwrap();
    assert!(matches!(
        log.commit(&latest).await,
        Err(JobError::Conflict { .. })
    ));
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E3779B97F4A7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D049BB133111EB);
    x ^ (x >> 31)
}
