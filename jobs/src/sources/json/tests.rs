//! A JSON file decoded in parallel parts gives what one pass gives: the same rows in the same
//! order, the same record and line numbers, counts and rejected records, and the same first error.

use std::io::Cursor;

use arrow::datatypes::DataType;
use carga_config::{JsonOptions, MalformedRowPolicy, MixedTypesPolicy};
use proptest::prelude::*;

use super::read_text;
use crate::sources::TypeHints;
use crate::sources::read_harness::{Read, ReadShape, assert_same, collect, rows};

/// One pass: a single thread and one part for the whole file, decoded as one batch.
const ONE_PASS: (usize, usize, usize) = (1, usize::MAX, usize::MAX);

/// Threads, records and bytes per part that cut everywhere: a part per record, at bad records
/// too.
const PARALLEL: &[(usize, usize, usize)] = &[
    (2, 7, 1),
    (3, 7, 40),
    (4, 3, 200),
    (2, 50, 1000),
    (8, 7, 5000),
];

fn read(
    text: &[u8],
    opts: &JsonOptions,
    policy: MalformedRowPolicy,
    hints: &TypeHints,
    shape: (usize, usize, usize),
) -> Read {
    let (bytes, opts) = (text.to_vec(), opts.clone());
    let how = ReadShape {
        location: "sample.json",
        threads: shape.0,
        policy,
        hints,
    };
    collect(how, move |ctx| {
        read_text(Cursor::new(bytes), &opts, ctx, shape)
    })
}

fn assert_same_as_one_pass(
    text: &[u8],
    opts: &JsonOptions,
    policy: MalformedRowPolicy,
    hints: &TypeHints,
) -> Read {
    let expected = read(text, opts, policy, hints, ONE_PASS);
    for &shape in PARALLEL {
        assert_same(&read(text, opts, policy, hints, shape), &expected, shape);
    }
    expected
}

fn options(infer_records: usize) -> JsonOptions {
    JsonOptions {
        infer_records,
        ..JsonOptions::default()
    }
}

/// 300 records with what makes splitting and decoding hard: strings holding brackets, quotes,
/// escaped newlines and `}` right before a line end, records over several lines, blank lines,
/// CRLF, nested objects, records that are not JSON and records that do not fit the schema.
fn messy_lines() -> Vec<u8> {
    let mut text = Vec::new();
    for i in 1..=300u32 {
        let ending: &[u8] = if i % 3 == 0 { b"\r\n" } else { b"\n" };
        let record = match i {
            _ if i % 41 == 0 => format!("{{\"id\": {i}, \"amount\": 1.5,, \"note\": \"x\"}}"),
            _ if i % 31 == 0 => {
                format!("{{\"id\": {i}, \"amount\": \"not a number\", \"note\": \"y\"}}")
            }
            _ if i % 17 == 0 => format!(
                "{{\"id\": {i},\n  \"amount\": {i}.25,\n  \"note\": \"over\\nlines }}]\\\"\",\n  \"tags\": {{\"k\": [1, 2]}}}}"
            ),
            _ if i % 11 == 0 => format!("\n{{\"id\": {i}, \"amount\": null, \"note\": \"{{[\"}}"),
            _ => format!(
                "{{\"id\": {i}, \"amount\": {}.5, \"note\": \"n{i}\", \"tags\": {{\"k\": [{i}]}}}}",
                i * 3
            ),
        };
        text.extend_from_slice(record.as_bytes());
        text.extend_from_slice(ending);
    }
    text
}

#[test]
fn parallel_parts_match_one_pass_with_bad_records_everywhere() {
    let text = messy_lines();
    let skipped = assert_same_as_one_pass(
        &text,
        &options(20),
        MalformedRowPolicy::Skip,
        &TypeHints::default(),
    );
    let stats = skipped.outcome.unwrap();
    assert_eq!(stats.rows_read, 300);
    // Not JSON: every 41st; does not fit (a float column): every 31st.
    assert_eq!(stats.rejected_rows, 7 + 9);
    assert_eq!(stats.rejected_by_reason["invalid JSON"], 7);
    assert_eq!(stats.rejected_by_reason["type mismatch"], 9);
    let listed: Vec<u64> = stats.rejected_samples.iter().map(|r| r.row).collect();
    let mut expected: Vec<u64> = (1..=300).filter(|i| i % 41 == 0 || i % 31 == 0).collect();
    expected.truncate(listed.len());
    assert_eq!(listed, expected, "rejected records in the file's order");
    let mismatch = stats.rejected_samples.iter().find(|r| r.row == 31).unwrap();
    // Record 31 starts on line 31 + the blank lines before records 11 and 22 + record 17's 3
    // inner line breaks.
    assert!(mismatch.reason.contains("line 36"), "{}", mismatch.reason);
    assert!(mismatch.reason.contains("id=31"), "{}", mismatch.reason);
    assert_eq!(rows(&skipped.batches).unwrap().num_rows(), 300 - 16);

    let failed = assert_same_as_one_pass(
        &text,
        &options(20),
        MalformedRowPolicy::Fail,
        &TypeHints::default(),
    );
    let error = failed.outcome.unwrap_err();
    assert!(error.contains("record 31 (line 36"), "{error}");
}

#[test]
fn the_first_bad_record_fails_the_run_whatever_made_it_bad() {
    // Record 5 does not fit (decoded later), record 6 is not JSON (checked first): 5 is named.
    let mut text = String::new();
    for i in 1..=12 {
        text += &match i {
            5 => "{\"id\": 5, \"amount\": \"five\"}\n".to_owned(),
            6 => "{\"id\": 6, \"amount\": }\n".to_owned(),
            _ => format!("{{\"id\": {i}, \"amount\": {i}.5}}\n"),
        };
    }
    let hints = TypeHints {
        explicit: [("amount".to_owned(), DataType::Float64)]
            .into_iter()
            .collect(),
        ..TypeHints::default()
    };
    for infer in [1, 100] {
        let read = assert_same_as_one_pass(
            text.as_bytes(),
            &options(infer),
            MalformedRowPolicy::Fail,
            &hints,
        );
        let error = read.outcome.unwrap_err();
        assert!(
            error.contains("record 5 (line 5, id=5)"),
            "{infer}: {error}"
        );
    }
}

#[test]
fn a_broken_layout_is_reported_after_the_records_before_it() {
    let mut text = String::new();
    for i in 1..=30 {
        text += &format!("{{\"id\": {i}}}\n");
    }
    text += "{\"id\": 31},\n{\"id\": 32}\n";
    let read = assert_same_as_one_pass(
        text.as_bytes(),
        &options(5),
        MalformedRowPolicy::Skip,
        &TypeHints::default(),
    );
    let error = read.outcome.unwrap_err();
    assert!(error.contains("line 31"), "{error}");
    assert!(error.contains("between records 31 and 32"), "{error}");
}

#[test]
fn arrays_mixed_nesting_and_declared_types_match_one_pass() {
    let mut text = String::from("[\n");
    for i in 1..=120 {
        let payload = if i % 4 == 0 {
            "\"flat\"".to_owned()
        } else {
            format!("{{\"n\": {i}}}")
        };
        let big = if i % 9 == 0 {
            "123456789012345678901234567890".to_owned()
        } else {
            i.to_string()
        };
        let sep = if i < 120 { "," } else { "" };
        text += &format!(
            "  {{\"id\": {i}, \"payload\": {payload}, \"big\": {big}, \"day\": \"2026-01-{:02}\"}}{sep}\n",
            i % 28 + 1
        );
    }
    text += "]\n";
    let opts = JsonOptions {
        mixed_types: MixedTypesPolicy::String,
        ..options(50)
    };
    let hints = TypeHints {
        explicit: [("day".to_owned(), DataType::Date32)].into_iter().collect(),
        ..TypeHints::default()
    };
    let read = assert_same_as_one_pass(text.as_bytes(), &opts, MalformedRowPolicy::Fail, &hints);
    let stats = read.outcome.unwrap();
    assert_eq!(stats.rows_read, 120);
    let batch = rows(&read.batches).unwrap();
    assert_eq!(batch.num_rows(), 120);
    let schema = batch.schema();
    assert_eq!(
        schema.field_with_name("payload").unwrap().data_type(),
        &DataType::Utf8
    );
    assert_eq!(
        schema.field_with_name("big").unwrap().data_type(),
        &DataType::Decimal128(38, 0)
    );
    assert_eq!(
        schema.field_with_name("day").unwrap().data_type(),
        &DataType::Date32
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(24, 10)))]

    /// Any mix of good, broken and misfit records, blank lines and line endings: parallel parts
    /// give the rows, the report and the first error of one pass.
    #[test]
    fn parallel_parts_match_one_pass(
        records in proptest::collection::vec((0u8..10, 0u32..1000, any::<bool>()), 1..120),
        infer in 1usize..30,
        skip in any::<bool>(),
    ) {
        let mut text = Vec::new();
        for (i, (kind, value, crlf)) in records.iter().enumerate() {
            let id = i + 1;
            let record = match kind {
                0 => format!("{{\"id\": {id}, \"v\": {value},}}"),
                1 => format!("{{\"id\": {id}, \"v\": \"t{value}\"}}"),
                2 => String::new(),
                3 => format!("{{\"id\": {id},\n \"v\": {value}, \"s\": \"}}\\\"{{\"}}"),
                _ => format!("{{\"id\": {id}, \"v\": {value}, \"s\": \"s{value}\"}}"),
            };
            text.extend_from_slice(record.as_bytes());
            text.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
        }
        let policy = if skip { MalformedRowPolicy::Skip } else { MalformedRowPolicy::Fail };
        let expected = read(&text, &options(infer), policy, &TypeHints::default(), ONE_PASS);
        for &shape in PARALLEL {
            let got = read(&text, &options(infer), policy, &TypeHints::default(), shape);
            prop_assert_eq!(&got.outcome, &expected.outcome, "{:?}", shape);
            if expected.outcome.is_ok() {
                prop_assert_eq!(rows(&got.batches), rows(&expected.batches), "{:?}", shape);
            }
        }
    }
}
