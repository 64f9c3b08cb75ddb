//! Bad input gets a clear error naming the file and the row, never a panic, and commits nothing.

use crate::common::Lab;

fn csv_spec(extra: &str) -> String {
    format!("id: bad\nsource: {{format: csv, location: in.csv}}\ntrigger: callback\n{extra}")
}

async fn run_err(lab: &Lab, spec: &str) -> String {
    let err = lab.engine().run(&lab.spec(spec)).await.unwrap_err();
    assert!(
        lab.manifests("bad").await.is_empty(),
        "a failed run must not commit"
    );
    err.to_string()
}

#[tokio::test]
async fn ragged_rows_fail_with_the_line_or_are_skipped_and_listed() {
    let lab = Lab::new();
    lab.write("in.csv", "a,b,c\n1,2,3\n4,5\n6,7,8,9\n10,11,12\n");
    let err = run_err(&lab, &csv_spec("")).await;
    assert!(
        err.contains("in.csv")
            && err.contains("line 3")
            && err.contains("2 fields")
            && err.contains("header has 3"),
        "{err}"
    );

    let outcome = lab
        .engine()
        .run(&lab.spec(&csv_spec("on_malformed_row: skip\n")))
        .await
        .unwrap();
    assert_eq!(outcome.manifest.rows, 2);
    let report = outcome.report;
    assert_eq!(report.rejected_rows, 2);
    assert_eq!(report.rejected_by_reason["wrong number of fields"], 2);
    let rows: Vec<u64> = report.rejected_samples.iter().map(|r| r.row).collect();
    assert_eq!(rows, [3, 4]);
}

#[tokio::test]
async fn invalid_utf8_names_line_and_column() {
    let lab = Lab::new();
    lab.write("in.csv", b"id,name\n1,ok\n2,bad\xff\xfe\n".as_slice());
    let err = run_err(&lab, &csv_spec("")).await;
    assert!(
        err.contains("line 3") && err.contains("'name'") && err.contains("UTF-8"),
        "{err}"
    );
}

#[tokio::test]
async fn empty_file_and_header_only_are_refused_clearly() {
    let lab = Lab::new();
    lab.write("in.csv", "");
    let err = run_err(&lab, &csv_spec("")).await;
    assert!(
        err.contains("in.csv") && err.contains("file is empty"),
        "{err}"
    );

    lab.write("in.csv", "a,b\n");
    let err = run_err(&lab, &csv_spec("")).await;
    assert!(
        err.contains("no data rows") && err.contains("allow_empty"),
        "{err}"
    );

    // Declared as acceptable, a header-only file commits an empty run.
    let outcome = lab
        .engine()
        .run(&lab.spec(&csv_spec("allow_empty: true\n")))
        .await
        .unwrap();
    assert_eq!(outcome.manifest.rows, 0);
    assert!(outcome.manifest.files.is_empty());
}

#[tokio::test]
async fn a_ten_megabyte_single_line_is_an_error_not_a_crash() {
    let lab = Lab::new();
    lab.write("in.csv", "x".repeat(10 * 1024 * 1024));
    let err = run_err(&lab, &csv_spec("")).await;
    assert!(
        err.contains("header column 1") && err.contains("delimiter"),
        "{err}"
    );

    lab.write(
        "in.json",
        format!("{{\"a\": \"{}\"}}", "y".repeat(10 * 1024 * 1024)),
    );
    let spec = "id: bad\nsource: {format: json, location: in.json, json: {max_record_bytes: 1048576}}\ntrigger: callback\n";
    let err = run_err(&lab, spec).await;
    assert!(
        err.contains("in.json") && err.contains("record 1") && err.contains("max_record_bytes"),
        "{err}"
    );
}

#[tokio::test]
async fn values_that_do_not_fit_the_inferred_type_name_row_column_and_value() {
    let lab = Lab::new();
    let mut csv = String::from("id,qty\n");
    for i in 1..=50 {
        csv.push_str(&format!("{i},{i}\n"));
    }
    csv.push_str("51,muchos\n");
    lab.write("in.csv", &csv);
    let small_sample = "source: {format: csv, location: in.csv, csv: {infer_rows: 10}}";
    let spec = csv_spec("").replace("source: {format: csv, location: in.csv}", small_sample);
    // By default the file is read again with the column widened, and the report says why.
    let outcome = lab.engine().run(&lab.spec(&spec)).await.unwrap();
    assert_eq!(outcome.manifest.rows, 51);
    let warning = outcome.report.warnings.join("\n");
    assert!(
        warning.contains("row 52")
            && warning.contains("'qty'")
            && warning.contains("'muchos'")
            && warning.contains("int64"),
        "{warning}"
    );
    // A declared type is not widened: the value names itself.
    let declared = format!("{spec}schema: {{qty: int64}}\n");
    let lab = Lab::new();
    lab.write("in.csv", &csv);
    let err = run_err(&lab, &declared).await;
    assert!(
        err.contains("row 52")
            && err.contains("'qty'")
            && err.contains("'muchos'")
            && err.contains("int64"),
        "{err}"
    );

    let outcome = lab
        .engine()
        .run(&lab.spec(&format!("{spec}on_malformed_row: skip\n")))
        .await
        .unwrap();
    assert_eq!(outcome.manifest.rows, 50);
    let qty = outcome
        .report
        .columns
        .iter()
        .find(|c| c.name == "qty")
        .unwrap();
    assert_eq!(qty.type_mismatches, 1);
}

#[tokio::test]
async fn duplicate_and_overlong_header_names_are_refused() {
    let lab = Lab::new();
    lab.write("in.csv", "id,name,id\n1,a,2\n");
    let err = run_err(&lab, &csv_spec("")).await;
    assert!(
        err.contains("'id' twice") && err.contains("positions 1 and 3"),
        "{err}"
    );
}

#[tokio::test]
async fn malformed_json_names_the_record_and_line() {
    let lab = Lab::new();
    let spec = "id: bad\nsource: {format: json, location: in.json}\ntrigger: callback\n";
    lab.write("in.json", "{\"a\": 1}\n{\"a\": 2,, }\n{\"a\": 3}\n");
    let err = run_err(&lab, spec).await;
    assert!(
        err.contains("in.json")
            && err.contains("record 2 (line 2)")
            && err.contains("invalid JSON"),
        "{err}"
    );

    let skip_spec = format!("{spec}on_malformed_row: skip\n").replace("id: bad", "id: skipped");
    let skipped = lab.engine().run(&lab.spec(&skip_spec)).await.unwrap();
    assert_eq!(skipped.manifest.rows, 2);
    assert_eq!(skipped.report.rejected_samples[0].row, 2);

    for (content, expected) in [
        ("[{\"a\": 1}, {\"a\": ", "cut off"),
        ("[{\"a\": 1}", "not closed"),
        ("not json", "not a JSON object"),
        ("", "file is empty"),
        ("[1, 2, 3]", "not a JSON object"),
    ] {
        lab.write("in.json", content);
        let err = run_err(&lab, spec).await;
        assert!(
            err.contains("in.json") && err.contains(expected),
            "{content:?}: {err}"
        );
    }
}

#[tokio::test]
async fn json_values_of_the_wrong_type_after_the_sample_are_located() {
    let lab = Lab::new();
    let mut json = String::new();
    for i in 1..=20 {
        json.push_str(&format!("{{\"id\": {i}, \"n\": {i}}}\n"));
    }
    json.push_str("{\"id\": 21, \"n\": {\"nested\": true}}\n");
    lab.write("in.json", &json);
    let spec = "id: bad\nsource: {format: json, location: in.json, json: {infer_records: 5}}\ntrigger: callback\n";
    let err = run_err(&lab, spec).await;
    assert!(
        err.contains("record 21 (line 21)") && err.contains("does not fit"),
        "{err}"
    );
}

#[tokio::test]
async fn a_run_failing_late_removes_the_parts_it_wrote() {
    let lab = Lab::new();
    let mut csv = String::from("id,v\n");
    for i in 1..=2000 {
        csv.push_str(&format!("{i},{i}\n"));
    }
    csv.push_str("2001,1,extra\n");
    lab.write("in.csv", &csv);
    let err = run_err(&lab, &csv_spec("")).await;
    assert!(err.contains("line 2002"), "{err}");
    assert!(
        lab.parquet_files().is_empty(),
        "left behind: {:?}",
        lab.parquet_files()
    );
    // The failed run still leaves its validation report.
    assert!(err.contains("validation report:"), "{err}");
}

#[tokio::test]
async fn bad_specs_are_refused_before_reading() {
    let lab = Lab::new();
    lab.write("in.csv", "a\n1\n");
    let err = run_err(&lab, &csv_spec("schema: {a: blob}\n")).await;
    assert!(
        err.contains("'a'") && err.contains("unknown type 'blob'"),
        "{err}"
    );
    let err = run_err(&lab, &csv_spec("key: [nope]\n")).await;
    assert!(
        err.contains("'nope'") && err.contains("columns: a"),
        "{err}"
    );
    let missing = "id: bad\nsource: {format: csv, location: missing.csv}\ntrigger: callback\n";
    let err = run_err(&lab, missing).await;
    assert!(err.contains("missing.csv"), "{err}");
}
