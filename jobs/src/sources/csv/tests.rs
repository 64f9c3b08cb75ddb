//! A file read in parallel chunks gives what one pass gives: the same batches in the same
//! order, the same line numbers, counts and rejected rows, and the same first error.

use std::io::{BufRead, Cursor};

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use carga_config::{CsvOptions, Encoding, MalformedRowPolicy};
use proptest::prelude::*;

use super::read_text;
use crate::sources::TypeHints;
use crate::sources::read_harness::{Read, ReadShape, assert_same, collect, rows};
use crate::sources::text_input::utf8_input;

/// One pass: a single thread and one chunk for the whole file.
const ONE_PASS: (usize, usize) = (1, 1 << 30);

/// Thread counts and chunk sizes that put cuts everywhere, at bad rows and quoted newlines too.
const PARALLEL: &[(usize, usize)] = &[(2, 1), (3, 17), (4, 64), (2, 301), (8, 1024)];

fn read(
    text: &[u8],
    opts: &CsvOptions,
    policy: MalformedRowPolicy,
    hints: &TypeHints,
    shape: (usize, usize),
) -> Read {
    let (bytes, opts) = (text.to_vec(), opts.clone());
    let how = ReadShape {
        location: "sample.csv",
        threads: shape.0,
        policy,
        hints,
    };
    collect(how, move |ctx| {
        let raw: Box<dyn BufRead + Send> = Box::new(Cursor::new(bytes));
        let (input, detected) = utf8_input(raw, opts.encoding).unwrap();
        read_text(input, detected, &opts, ctx, shape)
    })
}

fn assert_same_as_one_pass(
    text: &[u8],
    opts: &CsvOptions,
    policy: MalformedRowPolicy,
    hints: &TypeHints,
) {
    let expected = read(text, opts, policy, hints, ONE_PASS);
    for &shape in PARALLEL {
        assert_same(&read(text, opts, policy, hints, shape), &expected, shape);
    }
}

/// 400 rows with everything that makes cutting hard: quoted newlines (CRLF inside too),
/// `""` escapes, CRLF and LF endings, blank lines, empty rows, rows with too many fields,
/// amounts that are not numbers and a cell that is not UTF-8.
fn messy_file(bom: bool) -> Vec<u8> {
    let mut text: Vec<u8> = if bom {
        b"\xEF\xBB\xBF".to_vec()
    } else {
        Vec::new()
    };
    text.extend_from_slice(b"id,name,amount,day,note\r\n");
    for i in 1..=400u32 {
        let ending: &[u8] = if i % 3 == 0 { b"\r\n" } else { b"\n" };
        let row = match i {
            _ if i % 37 == 0 => b",,,,".to_vec(),
            _ if i % 29 == 0 => format!("{i},extra,1.5,2026-01-02,a,b").into_bytes(),
            _ if i % 23 == 0 => format!("{i},n{i},not a number,2026-01-02,x").into_bytes(),
            _ if i == 201 => [
                format!("{i},").as_bytes(),
                b"\xFF\xFE",
                b",2.5,2026-01-03,z",
            ]
            .concat(),
            _ if i % 7 == 0 => format!(
                "{i},\"Pérez, \"\"El\"\"\r\nJr\",{i}.25,2026-02-0{},\"two\nlines\"",
                i % 9 + 1
            )
            .into_bytes(),
            _ => format!("{i},n{i},{}.5,2026-03-1{},plain", i * 3, i % 10).into_bytes(),
        };
        text.extend_from_slice(&row);
        text.extend_from_slice(ending);
        if i % 41 == 0 {
            text.extend_from_slice(b"\n\r\n");
        }
    }
    text.extend_from_slice(b"\n\n");
    text
}

fn skip() -> MalformedRowPolicy {
    MalformedRowPolicy::Skip
}

fn small_sample() -> CsvOptions {
    CsvOptions {
        infer_rows: 10,
        ..CsvOptions::default()
    }
}

#[test]
fn a_messy_file_reads_the_same_in_parallel() {
    for bom in [false, true] {
        let text = messy_file(bom);
        assert_same_as_one_pass(&text, &small_sample(), skip(), &TypeHints::default());
    }
    let one = read(
        &messy_file(false),
        &small_sample(),
        skip(),
        &TypeHints::default(),
        (4, 64),
    );
    let stats = one.outcome.unwrap();
    // What the file holds, so the comparison above is not between two wrong readings.
    assert_eq!(stats.rows_read, 400);
    assert_eq!(stats.empty_rows, 10);
    assert_eq!(stats.rejected_by_reason["wrong number of fields"], 13);
    assert_eq!(stats.rejected_by_reason["invalid UTF-8"], 1);
    assert_eq!(stats.rejected_by_reason["type mismatch"], 17);
    assert_eq!(stats.blank_lines, 9 * 2 + 2);
    let rows_kept: usize = one.batches.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(rows_kept, 400 - 10 - 13 - 1 - 17);
    // Line numbers count the quoted newlines before each row: rows 7, 14 and 21 hold two each.
    let first_bad = &stats.rejected_samples[0];
    assert!(
        first_bad
            .reason
            .starts_with("row 30 (id=23): column 'amount'"),
        "{first_bad:?}"
    );
    let listed: Vec<u64> = stats.rejected_samples.iter().map(|r| r.row).collect();
    let mut sorted = listed.clone();
    sorted.sort_unstable();
    assert_eq!(
        listed, sorted,
        "rejected rows are listed in the file's order"
    );
}

#[test]
fn declared_types_read_the_same_in_parallel() {
    let mut hints = TypeHints::default();
    hints
        .explicit
        .insert("amount".into(), DataType::Decimal128(12, 2));
    hints.explicit.insert("day".into(), DataType::Date32);
    assert_same_as_one_pass(&messy_file(false), &small_sample(), skip(), &hints);
}

#[test]
fn latin1_reads_the_same_in_parallel() {
    let mut text = b"id,name\n".to_vec();
    for i in 0..200 {
        text.extend_from_slice(format!("{i},\"Mu").as_bytes());
        text.push(0xF1); // ñ in Latin-1
        text.extend_from_slice(b"oz\n\"\n");
    }
    let opts = CsvOptions {
        encoding: Encoding::Latin1,
        ..small_sample()
    };
    assert_same_as_one_pass(&text, &opts, skip(), &TypeHints::default());
    let read = read(&text, &opts, skip(), &TypeHints::default(), (3, 50));
    let rows = rows(&read.batches).unwrap();
    let names = rows
        .column(1)
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .unwrap();
    assert_eq!(names.value(0), "Muñoz\n");
}

#[test]
fn a_failing_run_names_the_same_first_bad_row() {
    let failing = MalformedRowPolicy::Fail;
    // A type mismatch (line 30) before a row with too many fields (line 38): the mismatch wins
    // in both readings, although the field count is seen first when rows are batched.
    let expected = read(
        &messy_file(false),
        &small_sample(),
        failing,
        &TypeHints::default(),
        ONE_PASS,
    );
    let message = expected.outcome.clone().unwrap_err();
    assert!(message.contains("row 30 holds 'not a number'"), "{message}");
    assert_same_as_one_pass(
        &messy_file(false),
        &small_sample(),
        failing,
        &TypeHints::default(),
    );
    // A declared type: the first cell that does not fit fails the run.
    let mut hints = TypeHints::default();
    hints.explicit.insert("amount".into(), DataType::Float64);
    assert_same_as_one_pass(&messy_file(false), &small_sample(), failing, &hints);
}

#[test]
fn an_inferred_type_that_a_later_chunk_breaks_asks_for_a_reread() {
    let mut text = b"id,n\n".to_vec();
    for i in 0..300 {
        text.extend_from_slice(
            format!(
                "{i},{}\n",
                if i == 250 {
                    "many".into()
                } else {
                    i.to_string()
                }
            )
            .as_bytes(),
        );
    }
    let read = read(
        &text,
        &small_sample(),
        MalformedRowPolicy::Fail,
        &TypeHints::default(),
        (4, 100),
    );
    let message = read.outcome.unwrap_err();
    assert!(message.contains("row 252 holds 'many'"), "{message}");
    assert_same_as_one_pass(
        &text,
        &small_sample(),
        MalformedRowPolicy::Fail,
        &TypeHints::default(),
    );
}

#[test]
fn a_file_of_only_a_header_or_nothing_or_blank_lines_first() {
    for text in [
        &b"id,name\n"[..],
        b"id,name",
        b"",
        b"\n\n",
        b"\n\r\n\nid,n\n1,2\n\n3,4",
    ] {
        assert_same_as_one_pass(text, &small_sample(), skip(), &TypeHints::default());
    }
}

fn cell() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"1".to_vec()),
        Just(b"-20".to_vec()),
        Just(b"3.5".to_vec()),
        Just(b"x".to_vec()),
        Just(Vec::new()),
        Just(b"\"a,b\"".to_vec()),
        Just(b"\"l1\nl2\"".to_vec()),
        Just(b"\"q\"\"q\"".to_vec()),
        Just(b"2026-01-02".to_vec()),
        Just("ñ".as_bytes().to_vec()),
        Just(b"\xFF".to_vec()),
    ]
}

fn row() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(cell(), 1..5),
        prop_oneof![Just(&b"\n"[..]), Just(&b"\r\n"[..]), Just(&b"\n\n"[..])],
    )
        .prop_map(|(cells, end)| [cells.join(&b","[..]), end.to_vec()].concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(64, 4)))]

    #[test]
    fn generated_files_read_the_same_in_parallel(
        rows in proptest::collection::vec(row(), 0..80),
        infer_rows in 1usize..20,
        failing in any::<bool>(),
    ) {
        let text = [b"a,b,c\n".to_vec(), rows.concat()].concat();
        let opts = CsvOptions { infer_rows, ..CsvOptions::default() };
        let policy = if failing { MalformedRowPolicy::Fail } else { skip() };
        assert_same_as_one_pass(&text, &opts, policy, &TypeHints::default());
    }
}
