//! Master keys: in AWS KMS (moto on loopback) with double wrapping, so a run makes one KMS call
//! whatever its number of files; read back by Carga and by pyarrow (a KmsClient that calls KMS);
//! and rotated — to a new KMS key, from the key file to KMS, and within the key file — with old
//! and new files readable after each.

use std::path::{Path, PathBuf};
use std::process::Command;

use carga_jobs::encryption::{Encryptor, MasterKeyring};
use serde_json::Value;

use crate::common::{Lab, aws_test_credentials, moto_endpoint, service_available, skip_unless};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/interop/read_with_pyarrow.py"
);

fn ventas(id: &str) -> carga_config::DatasetSpec {
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../samples/ventas.yaml");
    let mut spec = carga_config::DatasetSpec::from_file(Path::new(sample)).unwrap();
    spec.id = id.to_owned();
    spec
}

/// The rows pyarrow reads from `files`, with `key_file` ("-" for none) and KMS at moto.
fn pyarrow_rows(key_file: &str, files: &[PathBuf]) -> Vec<Value> {
    let output = Command::new("python3")
        .arg(SCRIPT)
        .arg(key_file)
        .args(files)
        .env("CARGA_KMS_ENDPOINT", moto_endpoint())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "pyarrow failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn pyarrow_available(with_boto3: bool) -> bool {
    let import = if with_boto3 {
        "import pyarrow.parquet.encryption, cryptography, boto3"
    } else {
        "import pyarrow.parquet.encryption, cryptography"
    };
    let ok = Command::new("python3")
        .args(["-c", import])
        .status()
        .is_ok_and(|s| s.success());
    skip_unless(
        ok,
        "python3 with pyarrow, cryptography (and boto3) is not installed",
    )
}

async fn parts(lab: &Lab, dataset: &str) -> Vec<PathBuf> {
    let manifests = lab.manifests(dataset).await;
    let last = manifests.last().expect("a committed manifest");
    last.files.iter().map(|f| lab.part_path(f)).collect()
}

async fn create_kms_key(client: &aws_sdk_kms::Client) -> String {
    client
        .create_key()
        .description("carga test master key")
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .key_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_master_keys_wrap_once_per_run_and_rotate() {
    let address = moto_endpoint().trim_start_matches("http://").to_owned();
    if !service_available("moto server (KMS)", &address) || !pyarrow_available(true) {
        return;
    }
    aws_test_credentials();
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(moto_endpoint())
        .region(aws_config::Region::new("us-east-1"))
        .load()
        .await;
    let kms = aws_sdk_kms::Client::new(&config);
    let (first_key, second_key) = (create_kms_key(&kms).await, create_kms_key(&kms).await);

    let mut lab = Lab::new();
    lab.settings.rows_per_file = 100;
    // Files written with the local key file before the move to KMS.
    lab.engine().run(&ventas("before_kms")).await.unwrap();
    lab.settings.master_key_id = format!("kms://{first_key}");
    lab.settings.kms_endpoint = Some(moto_endpoint());
    lab.settings.s3.region = Some("us-east-1".into());

    // The key tools cache the key-encryption key: 20 files, one KMS call.
    let encryptor = Encryptor::from_settings(&lab.settings).unwrap();
    for _ in 0..20 {
        encryptor.file_encryption().unwrap();
    }
    assert_eq!(encryptor.kms_calls_made(), 1);

    // A run of five parts: one KMS call, the manifest names the KMS key.
    let engine = lab.engine();
    let outcome = engine.run(&ventas("ventas")).await.unwrap();
    assert_eq!(outcome.manifest.files.len(), 5);
    assert_eq!(engine.encryptor().kms_calls_made(), 1);
    assert_eq!(
        outcome.manifest.encryption.master_key_id,
        format!("kms://{first_key}")
    );
    let ours = lab.rows("ventas").await;
    assert_eq!(ours.len(), 500);
    // pyarrow, with a KmsClient that calls KMS and no key file, reads the same rows.
    let theirs = pyarrow_rows("-", &parts(&lab, "ventas").await);
    assert_eq!(theirs.len(), 500);
    let ids = |rows: &[Value]| {
        let mut ids: Vec<i64> = rows
            .iter()
            .map(|r| r["venta_id"].as_i64().unwrap())
            .collect();
        ids.sort_unstable();
        ids
    };
    assert_eq!(ids(&theirs), ids(&ours));

    // Rotation to another KMS key: new files use it; the old KMS files and the files from the
    // key file all read with the new settings.
    lab.settings.master_key_id = format!("kms://{second_key}");
    let outcome = lab.engine().run(&ventas("after_rotation")).await.unwrap();
    assert_eq!(
        outcome.manifest.encryption.master_key_id,
        format!("kms://{second_key}")
    );
    for dataset in ["before_kms", "ventas", "after_rotation"] {
        assert_eq!(lab.rows(dataset).await.len(), 500, "{dataset}");
    }
    let mut files = parts(&lab, "after_rotation").await;
    files.extend(parts(&lab, "ventas").await);
    files.extend(parts(&lab, "before_kms").await);
    let key_file = lab.settings.key_file.display().to_string();
    assert_eq!(pyarrow_rows(&key_file, &files).len(), 1500);

    // KMS out of reach: reading fails naming the key, never silently.
    let mut unreachable = lab.settings.clone();
    unreachable.kms_endpoint = Some("http://127.0.0.1:9".into());
    let engine = carga_jobs::Engine::new(unreachable).unwrap();
    let failed =
        carga_jobs::read::collect_dataset(engine.bucket(), engine.encryptor(), "after_rotation")
            .await
            .unwrap_err()
            .to_string();
    assert!(failed.contains(&second_key), "{failed}");
}

#[tokio::test]
async fn rotating_the_key_file_keeps_old_files_readable() {
    if !pyarrow_available(false) {
        return;
    }
    let lab = Lab::new();
    let old = lab.engine().run(&ventas("old")).await.unwrap();
    assert_eq!(old.manifest.encryption.master_key_id, "carga-master");

    MasterKeyring::rotate_file(&lab.settings.key_file, "carga-master-2").unwrap();
    let refused = MasterKeyring::rotate_file(&lab.settings.key_file, "carga-master-2")
        .err()
        .unwrap()
        .to_string();
    assert!(refused.contains("already holds"), "{refused}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&lab.settings.key_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "key file mode {mode:o}");
    }

    // The key file's current key wins over the settings' default id.
    let new = lab.engine().run(&ventas("new")).await.unwrap();
    assert_eq!(new.manifest.encryption.master_key_id, "carga-master-2");
    assert_eq!(lab.rows("old").await.len(), 500);
    assert_eq!(lab.rows("new").await.len(), 500);
    let mut files = parts(&lab, "old").await;
    files.extend(parts(&lab, "new").await);
    let key_file = lab.settings.key_file.display().to_string();
    assert_eq!(pyarrow_rows(&key_file, &files).len(), 1000);
}
