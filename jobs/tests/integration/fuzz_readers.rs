//! Property tests of the CSV and JSON readers on generated input: whatever the bytes, a run ends
//! (no hang, no panic) either committed or refused with a message naming the file, and a
//! committed CSV never holds more rows than the input has lines. Bounded: `CARGA_FUZZ_CASES`
//! cases per reader (default 150), which `.ci/run` sets.

use crate::common::Lab;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn cases() -> u32 {
    std::env::var("CARGA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150)
}

/// Bytes that look like CSV or JSON often enough to reach deep into the parsers.
fn input(alphabet: &'static [&'static [u8]]) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            6 => prop::sample::select(alphabet).prop_map(<[u8]>::to_vec),
            1 => any::<u8>().prop_map(|b| vec![b]),
        ],
        0..120,
    )
    .prop_map(|pieces| pieces.concat())
}

const CSV: &[&[u8]] = &[
    b"id",
    b"name",
    b",",
    b",",
    b"\n",
    b"\r\n",
    b"\"",
    b"\"\"",
    b"1",
    b"-2",
    b"3.5",
    b"x",
    b" ",
    b"true",
    b"2026-01-02",
    b"\xEF\xBB\xBF",
    b"\xFF\xFE",
    b"\xC3\xB1",
    b"\xF1",
    b";",
];
const JSON: &[&[u8]] = &[
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b":",
    b"\"a\"",
    b"\"b\"",
    b"1",
    b"-1.5e3",
    b"12345678901234567890",
    b"null",
    b"true",
    b"\"x\\\"y\"",
    b"\n",
    b" ",
    b"[1,2]",
    b"{\"c\":{}}",
    b"\xEF\xBB\xBF",
];

fn check(format: &str, file: &str, alphabet: &'static [&'static [u8]]) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&input(alphabet), |bytes| {
            let lab = Lab::new();
            lab.write(file, &bytes);
            let spec = lab.spec(&format!(
                "id: fuzz\nsource: {{format: {format}, location: {file}}}\ntrigger: callback\nallow_empty: true\n"
            ));
            let ran = runtime.block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(20), lab.engine().run(&spec)).await
            });
            let Ok(ran) = ran else {
                return Err(TestCaseError::fail(format!("the run did not end: {bytes:?}")));
            };
            match ran {
                Ok(outcome) => {
                    if format == "csv" {
                        let lines = bytes.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
                        prop_assert!(outcome.manifest.rows <= lines, "{} rows from {lines} lines", outcome.manifest.rows);
                    }
                }
                Err(failure) => {
                    let message = failure.error.to_string();
                    prop_assert!(!matches!(failure.error, carga_jobs::JobError::Internal(_)), "{message}");
                    prop_assert!(message.contains(file) || message.contains("fuzz"), "{message}");
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn csv_reader_ends_cleanly_on_any_input() {
    check("csv", "f.csv", CSV);
}

#[test]
fn json_reader_ends_cleanly_on_any_input() {
    check("json", "f.json", JSON);
}
