//! The `carga` binary as a newcomer uses it: the README's first command on the bundled samples.

use std::path::Path;
use std::process::{Command, Output};

fn carga(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_carga"));
    command
        .current_dir(dir)
        .args(args)
        .env_remove("CARGA_SETTINGS")
        .env_remove("RUST_LOG");
    for (k, v) in envs {
        command.env(k, v);
    }
    command.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A copy of the bundled samples in a fresh folder, as on a new machine.
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples");
    std::fs::create_dir(dir.path().join("samples")).unwrap();
    for entry in std::fs::read_dir(samples).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            dir.path().join("samples").join(entry.file_name()),
        )
        .unwrap();
    }
    dir
}

#[test]
fn readme_first_command_runs_the_sample_and_says_where_the_output_went() {
    let dir = workspace();
    let out = carga(
        dir.path(),
        &["run", "--dataset", "samples/ventas.yaml"],
        &[],
    );
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("committed run") && stdout.contains("500 written"),
        "{stdout}"
    );
    let bucket = dir.path().join(".carga/bucket").canonicalize().unwrap();
    assert!(
        stdout.contains(&format!("{}/raw/ventas/ingest_date=", bucket.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains("manifest:") && stdout.contains("report:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("carga read --dataset samples/ventas.yaml"),
        "{stdout}"
    );
    assert!(dir.path().join(".carga/master-keys.json").exists());

    let read = carga(
        dir.path(),
        &["read", "--dataset", "samples/ventas.yaml", "--limit", "5"],
        &[],
    );
    let shown = text(&read.stdout);
    assert!(read.status.success(), "{}", text(&read.stderr));
    assert!(
        shown.contains("venta_id")
            && shown.contains("Guadalajara")
            && shown.contains("5 row(s) shown"),
        "{shown}"
    );

    // The next delta run finds nothing new, and says so.
    let again = carga(
        dir.path(),
        &["run", "--dataset", "samples/ventas.yaml"],
        &[],
    );
    assert!(
        text(&again.stdout).contains("0 written"),
        "{}",
        text(&again.stdout)
    );
}

#[test]
fn every_bundled_sample_runs() {
    let dir = workspace();
    for sample in ["ventas", "clientes", "productos"] {
        let spec = format!("samples/{sample}.yaml");
        let out = carga(dir.path(), &["run", "--dataset", &spec], &[]);
        assert!(
            out.status.success(),
            "{sample}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

#[test]
fn failures_exit_non_zero_with_the_reason() {
    let dir = workspace();
    std::fs::write(
        dir.path().join("samples/ventas.csv"),
        "venta_id,fecha\n1,2,3\n",
    )
    .unwrap();
    let out = carga(
        dir.path(),
        &["run", "--dataset", "samples/ventas.yaml"],
        &[],
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("dataset 'ventas' was not committed") && stderr.contains("line 2"),
        "{stderr}"
    );

    let check = carga(
        dir.path(),
        &["check", "--dataset", "samples/nope.yaml"],
        &[],
    );
    assert!(!check.status.success());
    assert!(text(&check.stderr).contains("nope.yaml"));
}

#[test]
fn json_logs_carry_the_run_id_and_never_the_key() {
    let dir = workspace();
    let out = carga(
        dir.path(),
        &["run", "--dataset", "samples/clientes.yaml"],
        &[("CARGA_LOG_FORMAT", "json"), ("RUST_LOG", "debug")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let run_lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["span"]["name"] == "run")
        .collect();
    assert!(!run_lines.is_empty(), "{stderr}");
    assert!(run_lines.iter().all(|v| {
        v["span"]["run_id"]
            .as_str()
            .is_some_and(|id| id.len() == 36)
    }));
    let keys: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(".carga/master-keys.json")).unwrap(),
    )
    .unwrap();
    let key = keys["carga-master"].as_str().unwrap();
    assert!(!stderr.contains(key) && !text(&out.stdout).contains(key));
}
