//! The Parquet we write opens in pyarrow with the master key (through pyarrow's own Parquet
//! encryption API and a small KmsClient), and not without it.

use std::process::Command;

use crate::common::{Lab, skip_unless};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/interop/read_with_pyarrow.py"
);

fn pyarrow_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import pyarrow.parquet.encryption, cryptography"])
        .status()
        .is_ok_and(|s| s.success());
    skip_unless(ok, "python3 with pyarrow and cryptography is not installed")
}

#[tokio::test]
async fn pyarrow_decrypts_our_files_and_sees_the_same_rows() {
    if !pyarrow_available() {
        return;
    }
    let lab = Lab::new();
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../samples/ventas.yaml");
    let spec = carga_config::DatasetSpec::from_file(std::path::Path::new(sample)).unwrap();
    let outcome = lab.engine().run(&spec).await.unwrap();
    let ours = lab.rows("ventas").await;

    let mut theirs = Vec::new();
    for file in &outcome.manifest.files {
        let path = lab.part_path(file);
        let output = Command::new("python3")
            .arg(SCRIPT)
            .arg(&lab.settings.key_file)
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "pyarrow failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        for line in String::from_utf8(output.stdout).unwrap().lines() {
            theirs.push(serde_json::from_str::<serde_json::Value>(line).unwrap());
        }
    }
    assert_eq!(theirs.len(), ours.len());
    assert_eq!(theirs.len(), 500);
    for (t, o) in theirs.iter().zip(&ours) {
        for column in [
            "venta_id",
            "cliente_id",
            "ciudad",
            "producto_id",
            "cantidad",
            "fecha",
        ] {
            assert_eq!(t[column], o[column], "column {column}");
        }
        // Decimal and timestamp keep their exact values (pyarrow prints them its own way).
        let total = t["total"].as_str().unwrap();
        assert_eq!(total.parse::<f64>().unwrap(), o["total"].as_f64().unwrap());
        assert!(
            total.contains('.') && total.split('.').nth(1).unwrap().len() == 2,
            "{total}"
        );
        assert_eq!(
            t["actualizado_en"].as_str().unwrap().replace(' ', "T"),
            o["actualizado_en"].as_str().unwrap()
        );
    }
}

#[tokio::test]
async fn without_the_key_the_file_is_unreadable() {
    if !pyarrow_available() {
        return;
    }
    let lab = Lab::new();
    lab.write("s.csv", "secreto\nvalor-confidencial\n");
    let spec = lab.spec("id: s\nsource: {format: csv, location: s.csv}\ntrigger: callback\n");
    let outcome = lab.engine().run(&spec).await.unwrap();
    let path = lab.part_path(&outcome.manifest.files[0]);

    // The plaintext is nowhere in the bytes.
    let bytes = std::fs::read(&path).unwrap();
    assert!(!bytes.windows(18).any(|w| w == b"valor-confidencial"));

    // pyarrow without decryption properties cannot open it.
    let plain = Command::new("python3")
        .args([
            "-c",
            "import sys, pyarrow.parquet as pq; pq.read_table(sys.argv[1])",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!plain.status.success());

    // pyarrow with a different master key cannot either.
    let other = lab.dir.path().join("other-keys.json");
    carga_jobs::encryption::MasterKeyring::create_file(&other, "carga-master").unwrap();
    let wrong = Command::new("python3")
        .arg(SCRIPT)
        .arg(&other)
        .arg(&path)
        .output()
        .unwrap();
    assert!(!wrong.status.success());

    // And neither can Carga with the wrong key.
    let mut settings = lab.settings.clone();
    settings.key_file = other;
    let engine = carga_jobs::Engine::new(settings).unwrap();
    let err = carga_jobs::read::collect_dataset(engine.bucket(), engine.encryptor(), "s")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("unwrapped") || err.to_string().contains("decrypt"),
        "{err}"
    );
}
