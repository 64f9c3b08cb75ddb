//! The `carga` binary as a newcomer uses it: the README's first command on the bundled samples.

use std::path::Path;
use std::process::{Command, Output};

mod common;

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

/// A folder with `big.csv` (`rows` rows of ~50 bytes) and its spec `big.yaml`.
fn big_dataset(rows: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("id,payload\n");
    for i in 0..rows {
        csv.push_str(&format!("{i},row-{i}-{}\n", "x".repeat(40)));
    }
    std::fs::write(dir.path().join("big.csv"), csv).unwrap();
    std::fs::write(
        dir.path().join("big.yaml"),
        "id: big\nsource: {format: csv, location: big.csv}\ntrigger: callback\n",
    )
    .unwrap();
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
    // 1: the run failed.
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("dataset 'ventas' was not committed") && stderr.contains("line 2"),
        "{stderr}"
    );

    // 2: a configuration error (a spec that does not exist, a bad setting, a bad flag).
    let check = carga(
        dir.path(),
        &["check", "--dataset", "samples/nope.yaml"],
        &[],
    );
    assert_eq!(check.status.code(), Some(2));
    assert!(text(&check.stderr).contains("nope.yaml"));
    let setting = carga(
        dir.path(),
        &["run", "--dataset", "samples/ventas.yaml"],
        &[("CARGA_COMPRESSION", "lz77")],
    );
    assert_eq!(setting.status.code(), Some(2), "{}", text(&setting.stderr));
    let flag = carga(dir.path(), &["run", "--datasett", "x"], &[]);
    assert_eq!(flag.status.code(), Some(2));
}

#[test]
fn version_completions_and_man_page_come_from_the_cli_itself() {
    let dir = workspace();
    let version = carga(dir.path(), &["--version"], &[]);
    assert!(
        text(&version.stdout).contains("(commit "),
        "{}",
        text(&version.stdout)
    );
    for shell in ["bash", "zsh", "fish"] {
        let completions = carga(dir.path(), &["completions", shell], &[]);
        assert!(completions.status.success());
        assert!(text(&completions.stdout).contains("keys"), "{shell}");
    }
    let man = carga(dir.path(), &["man"], &[]);
    assert!(man.status.success());
    let page = text(&man.stdout);
    assert!(
        page.contains(".TH") && page.contains("Exit codes"),
        "{page}"
    );
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

#[test]
fn a_run_killed_mid_write_commits_nothing_and_the_next_run_is_whole() {
    let dir = big_dataset(400_000);
    let manifests = dir.path().join(".carga/bucket/raw/big/_manifests");
    let count_manifests = || {
        std::fs::read_dir(&manifests)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".manifest.json"))
                    .count()
            })
            .unwrap_or(0)
    };

    let mut child = Command::new(env!("CARGO_BIN_EXE_carga"))
        .current_dir(dir.path())
        .args(["run", "--dataset", "big.yaml"])
        .env("CARGA_ROWS_PER_FILE", "20000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the run has written at least one part, then kill it without warning.
    let run_dir = dir.path().join(".carga/bucket/raw/big");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let wrote_a_part = || {
        common::files_under(&run_dir)
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "parquet"))
    };
    while !wrote_a_part()
        && std::time::Instant::now() < deadline
        && child.try_wait().unwrap().is_none()
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let finished_first = child.try_wait().unwrap().is_some();
    child.kill().ok();
    child.wait().unwrap();
    if !finished_first {
        assert_eq!(count_manifests(), 0, "a killed run must not commit");
    }

    let out = carga(dir.path(), &["run", "--dataset", "big.yaml"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let read = carga(
        dir.path(),
        &["read", "--dataset", "big", "--limit", "1000000"],
        &[],
    );
    assert!(
        text(&read.stdout).contains("(400000 row(s) shown"),
        "every row once, none from the killed run"
    );
}

#[test]
fn errors_are_said_once_and_plainly() {
    let dir = workspace();
    // Reading a dataset that never ran says so (not a missing key file).
    let out = carga(
        dir.path(),
        &["read", "--dataset", "samples/ventas.yaml"],
        &[],
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("dataset 'ventas' has no committed run yet"),
        "{stderr}"
    );
    assert!(!stderr.contains("master-keys"), "{stderr}");

    // `carga check` applies the scheduler's cron rules, in the user's own five fields.
    let spec = dir.path().join("samples/late.yaml");
    std::fs::write(
        &spec,
        "id: late\nsource: {format: csv, location: ventas.csv}\ncron: '0 25 * * *'\n",
    )
    .unwrap();
    let out = carga(
        dir.path(),
        &["check", "--dataset", "samples/late.yaml"],
        &[],
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cron '0 25 * * *' is not valid: the hour field is 25, but hours are 0-23"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("0 0 25"),
        "no expression the user never wrote: {stderr}"
    );

    // A failed run is one error line, each cause once.
    let missing = dir.path().join("samples/missing.yaml");
    std::fs::write(
        &missing,
        "id: missing\nsource: {format: csv, location: nowhere.csv}\ntrigger: callback\n",
    )
    .unwrap();
    let out = carga(
        dir.path(),
        &["run", "--dataset", "samples/missing.yaml"],
        &[],
    );
    let stderr = text(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert_eq!(errors[0].matches("No such file").count(), 1, "{stderr}");
    assert!(errors[0].contains("nowhere.csv"), "{stderr}");
}

#[test]
fn logs_to_a_pipe_are_plain_text_and_say_when_a_run_starts_and_commits() {
    let dir = workspace();
    let out = carga(
        dir.path(),
        &["run", "--dataset", "samples/ventas.yaml"],
        &[("RUST_LOG", "info")],
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("run started") && stderr.contains("run committed"),
        "{stderr}"
    );
    // stderr is a pipe here: no colour escape codes in what a log collector would store.
    assert!(!stderr.contains('\u{1b}'), "escape codes in {stderr:?}");
}

#[test]
fn a_run_through_a_pipe_prints_plain_progress_lines_while_it_reads() {
    let dir = big_dataset(300_000);
    // A line every 20 ms: a run of 300,000 rows takes longer than that even in release builds.
    let out = carga(
        dir.path(),
        &["run", "--dataset", "big.yaml"],
        &[("CARGA_PROGRESS_SECONDS", "0.02")],
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("big: ") && l.contains("rows read"))
        .collect();
    assert!(!lines.is_empty(), "no progress line:\n{stderr}");
    // The file's size is known: a percentage, and no escape codes (not a terminal).
    assert!(lines.iter().any(|l| l.contains('%')), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
    assert!(text(&out.stdout).contains("300000 written"));
}
