//! A corpus of messy inputs, each written here (or, for Excel, in `tests/data/messy/`) with the
//! exact outcome it must have: committed rows and values, or an error naming the file and the
//! line. Broken input is never accepted silently and no value is altered.

use crate::common::{Lab, column};
use carga_config::DatasetSpec;
use serde_json::{Value, json};

const EXCEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/messy");

/// Runs a one-file dataset; the committed rows, or the run's error text.
async fn run(
    lab: &Lab,
    id: &str,
    file: &str,
    bytes: &[u8],
    extra: &str,
) -> Result<Vec<Value>, String> {
    let format = match file.rsplit('.').next() {
        Some("json") => "json",
        Some("xlsx") => "excel",
        _ => "csv",
    };
    lab.write(file, bytes);
    let spec = lab.spec(&format!(
        "id: {id}\nsource: {{format: {format}, location: {file}{extra}}}\ntrigger: callback\n"
    ));
    run_spec(lab, &spec).await
}

async fn run_spec(lab: &Lab, spec: &DatasetSpec) -> Result<Vec<Value>, String> {
    match lab.engine().run(spec).await {
        Ok(_) => Ok(lab.rows(&spec.id).await),
        Err(failure) => Err(failure.error.to_string()),
    }
}

fn report(lab: &Lab, id: &str) -> Value {
    let dir = lab
        .dir
        .path()
        .join("bucket/raw")
        .join(id)
        .join("_manifests");
    let path = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".validation.json"))
        .max()
        .expect("a report");
    lab.document(path)
}

/// A column's values as Arrow displays them (every digit of a decimal).
fn shown(batches: &[arrow::array::RecordBatch], name: &str) -> Vec<String> {
    let options = arrow::util::display::FormatOptions::default();
    batches
        .iter()
        .flat_map(|b| {
            let column = b.column_by_name(name).unwrap();
            let formatter =
                arrow::util::display::ArrayFormatter::try_new(column, &options).unwrap();
            (0..b.num_rows())
                .map(move |i| formatter.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn expect_error(result: Result<Vec<Value>, String>, parts: &[&str]) -> String {
    let message = result.expect_err("the input must be refused");
    for part in parts {
        assert!(message.contains(part), "'{part}' missing from: {message}");
    }
    message
}

// ---- JSON ----------------------------------------------------------------------------------

#[tokio::test]
async fn broken_json_arrays_are_refused_with_the_line() {
    let lab = Lab::new();
    let cases = [
        ("[{\"a\":1},,{\"a\":2}]", "two ',' in a row after record 1"),
        ("[{\"a\":1} {\"a\":2}]", "a ',' is missing between record 1"),
        ("[,{\"a\":1}]", "starts with ','"),
        ("[{\"a\":1},]", "a ',' after the last record (1)"),
        ("[,]", "starts with ','"),
        ("[\n{\"a\":1},\n\n,{\"a\":2}]", "line 4"),
    ];
    for (i, (text, expected)) in cases.into_iter().enumerate() {
        let id = format!("broken{i}");
        let err = expect_error(
            run(&lab, &id, "b.json", text.as_bytes(), "").await,
            &[expected, "b.json", "line "],
        );
        assert!(lab.manifests(&id).await.is_empty(), "{err}");
    }
}

#[tokio::test]
async fn mixed_json_types_are_kept_as_their_text() {
    let lab = Lab::new();
    let rows = run(&lab, "mix", "m.json", br#"[{"a":1},{"a":"x"},{"a":2}]"#, "")
        .await
        .unwrap();
    assert_eq!(column(&rows, "a"), [json!("1"), json!("x"), json!("2")]);
    let rows = run(
        &lab,
        "mixb",
        "mb.json",
        br#"[{"a":true},{"a":"no"},{"a":1.50}]"#,
        "",
    )
    .await
    .unwrap();
    assert_eq!(
        column(&rows, "a"),
        [json!("true"), json!("no"), json!("1.50")]
    );
    // A nested value in one record, a scalar in another: JSON text, said in the report.
    let text = br#"[{"a":[1,2],"id":1},{"a":"x","id":2},{"a":{"k":null},"id":3}]"#;
    let rows = run(&lab, "nest", "n.json", text, "").await.unwrap();
    assert_eq!(
        column(&rows, "a"),
        [json!("[1,2]"), json!("x"), json!("{\"k\":null}")]
    );
    let warnings = report(&lab, "nest")["warnings"].to_string();
    assert!(warnings.contains("JSON text"), "{warnings}");
    // ... or refused when the dataset says so, naming the field and what it held.
    expect_error(
        run(
            &lab,
            "nestf",
            "nf.json",
            text,
            ", json: {mixed_types: fail}",
        )
        .await,
        &["field 'a'", "array", "object", "string"],
    );
    // Under `skip`, no row is lost to a mix either.
    lab.write("ms.json", br#"[{"a":1},{"a":"x"},{"a":2}]"#);
    let spec = lab.spec("id: mixs\nsource: {format: json, location: ms.json}\ntrigger: callback\non_malformed_row: skip\n");
    assert_eq!(run_spec(&lab, &spec).await.unwrap().len(), 3);
}

#[tokio::test]
async fn integers_beyond_int64_stay_exact() {
    let lab = Lab::new();
    let text = br#"[{"n":12345678901234567890,"id":1},{"n":-1,"id":2},{"n":99999999999999999999999999999999999999,"id":3}]"#;
    run(&lab, "big", "big.json", text, "").await.unwrap();
    let schema = &lab.manifests("big").await[0].schema;
    assert_eq!(
        schema.field_with_name("n").unwrap().data_type(),
        &arrow::datatypes::DataType::Decimal128(38, 0)
    );
    assert_eq!(
        shown(&lab.batches("big").await, "n"),
        [
            "12345678901234567890",
            "-1",
            "99999999999999999999999999999999999999"
        ]
    );
    // Beyond 38 digits, or beside a fraction: the exact text.
    let text = br#"[{"n":123456789012345678901234567890123456789012},{"n":1.5}]"#;
    let rows = run(&lab, "huge", "huge.json", text, "").await.unwrap();
    assert_eq!(
        column(&rows, "n"),
        [
            json!("123456789012345678901234567890123456789012"),
            json!("1.5")
        ]
    );
}

#[tokio::test]
async fn empty_records_and_byte_order_marks() {
    let lab = Lab::new();
    for (i, text) in ["{}", "[{}]", "[{},{}]"].into_iter().enumerate() {
        expect_error(
            run(&lab, &format!("empty{i}"), "e.json", text.as_bytes(), "").await,
            &["e.json", "no fields"],
        );
    }
    let rows = run(
        &lab,
        "bom",
        "bom.json",
        b"\xEF\xBB\xBF[{\"a\":\"\xC3\xB1\"}]",
        "",
    )
    .await
    .unwrap();
    assert_eq!(column(&rows, "a"), [json!("ñ")]);
    let utf16: Vec<u8> = [0xFF, 0xFE]
        .into_iter()
        .chain(
            "{\"a\":\"año\"}\n{\"a\":\"b\"}\n"
                .encode_utf16()
                .flat_map(u16::to_le_bytes),
        )
        .collect();
    let rows = run(&lab, "u16j", "u16.json", &utf16, "").await.unwrap();
    assert_eq!(column(&rows, "a"), [json!("año"), json!("b")]);
}

// ---- CSV -----------------------------------------------------------------------------------

fn crlf(text: &str) -> String {
    text.replace('\n', "\r\n")
}

#[tokio::test]
async fn crlf_and_lf_twins_give_the_same_line_numbers() {
    let lab = Lab::new();
    let ragged = "id,v\n1,a\n2,b\n\n3,c,extra\n4,d\n";
    for (twin, text) in [("lf", ragged.to_owned()), ("crlf", crlf(ragged))] {
        expect_error(
            run(
                &lab,
                &format!("rag{twin}"),
                &format!("r{twin}.csv"),
                text.as_bytes(),
                "",
            )
            .await,
            &["line 5: has 3 fields", &format!("r{twin}.csv")],
        );
    }
    // A declared type refuses a value at line 10002 (10,000 rows, one blank line, a header).
    let mut text = String::from("id,n\n");
    for i in 1..=9_999 {
        text.push_str(&format!("{i},{i}\n"));
    }
    text.push_str("\n10000,hello\n");
    for (twin, text) in [("lf", text.clone()), ("crlf", crlf(&text))] {
        lab.write(&format!("l{twin}.csv"), text.as_bytes());
        let spec = lab.spec(&format!(
            "id: late{twin}\nsource: {{format: csv, location: l{twin}.csv}}\ntrigger: callback\nschema: {{n: int64}}\nkey: [id]\n"
        ));
        expect_error(
            run_spec(&lab, &spec).await,
            &[
                "row 10002 (id=10000): column 'n': 'hello' is not a valid int64",
                &format!("l{twin}.csv"),
            ],
        );
    }
}

#[tokio::test]
async fn byte_order_marks_and_utf16_are_read() {
    let lab = Lab::new();
    let rows = run(
        &lab,
        "bom",
        "bom.csv",
        b"\xEF\xBB\xBFid,name\n1,Mu\xC3\xB1oz\n",
        "",
    )
    .await
    .unwrap();
    assert_eq!(column(&rows, "name"), [json!("Muñoz")]);
    for (order, bom, bytes) in [
        (
            "le",
            [0xFF, 0xFE],
            "id,name\r\n1,Muñoz\r\n2,Peña\r\n"
                .encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect::<Vec<u8>>(),
        ),
        (
            "be",
            [0xFE, 0xFF],
            "id,name\r\n1,Muñoz\r\n2,Peña\r\n"
                .encode_utf16()
                .flat_map(u16::to_be_bytes)
                .collect::<Vec<u8>>(),
        ),
    ] {
        let text: Vec<u8> = bom.into_iter().chain(bytes).collect();
        let id = format!("utf16{order}");
        let rows = run(&lab, &id, &format!("{id}.csv"), &text, "")
            .await
            .unwrap();
        assert_eq!(column(&rows, "name"), [json!("Muñoz"), json!("Peña")]);
        assert!(
            report(&lab, &id)["header_problems"][0]
                .as_str()
                .unwrap()
                .contains("UTF-16")
        );
    }
    // Latin-1 without a mark still gets the Latin-1 hint.
    expect_error(
        run(&lab, "latin", "latin.csv", b"id,name\n1,Mu\xF1oz\n", "").await,
        &[
            "line 2: column 'name' is not valid UTF-8 (if the file is Latin-1, set csv.encoding: latin-1)",
        ],
    );
}

#[tokio::test]
async fn blank_lines_are_skipped_and_counted() {
    let lab = Lab::new();
    let rows = run(&lab, "blank", "blank.csv", b"id,v\n1,a\n\n\n2,b\n\n", "")
        .await
        .unwrap();
    assert_eq!(column(&rows, "id"), [json!(1), json!(2)]);
    assert_eq!(report(&lab, "blank")["blank_lines"], 3);
    let rows = run(
        &lab,
        "blankcr",
        "blankcr.csv",
        crlf("id,v\n1,a\n\n2,b\n").as_bytes(),
        "",
    )
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(report(&lab, "blankcr")["blank_lines"], 1);
    // A row of empty fields is a row (empty), not a blank line.
    let rows = run(&lab, "commas", "commas.csv", b"id,v\n1,a\n,\n", "")
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(report(&lab, "commas")["empty_rows"], 1);
    expect_error(
        run(&lab, "onlyblank", "ob.csv", b"id,v\n\n\n\n", "").await,
        &["no data rows", "3 blank lines"],
    );
}

#[tokio::test]
async fn a_late_odd_value_widens_the_inferred_column_instead_of_failing() {
    let lab = Lab::new();
    let mut text = String::from("id,n,f\n");
    for i in 1..=12_000 {
        text.push_str(&format!("{i},{i},{i}\n"));
    }
    text.push_str("12001,hello,1.5\n");
    let rows = run(&lab, "widen", "w.csv", text.as_bytes(), "")
        .await
        .unwrap();
    assert_eq!(rows.len(), 12_001);
    assert_eq!(rows[12_000]["n"], "hello");
    assert_eq!(rows[0]["n"], "1", "every value kept as written");
    assert_eq!(rows[12_000]["f"], 1.5);
    let schema = &lab.manifests("widen").await[0].schema;
    assert_eq!(
        schema.field_with_name("n").unwrap().data_type(),
        &arrow::datatypes::DataType::Utf8
    );
    assert_eq!(
        schema.field_with_name("f").unwrap().data_type(),
        &arrow::datatypes::DataType::Float64
    );
    let warnings = report(&lab, "widen")["warnings"].to_string();
    assert!(warnings.contains("column 'n' was inferred as int64 from the first 10000 rows, but row 12002 holds 'hello'"), "{warnings}");
    // Under `skip`, the row is rejected with the reason and a `schema:` hint.
    lab.write("ws.csv", &text);
    let spec = lab.spec("id: widens\nsource: {format: csv, location: ws.csv}\ntrigger: callback\non_malformed_row: skip\n");
    let rows = run_spec(&lab, &spec).await.unwrap();
    assert_eq!(rows.len(), 12_000);
    let skipped = report(&lab, "widens");
    assert_eq!(skipped["rejected_rows"], 1);
    assert!(
        skipped["rejected_samples"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("declare it in the spec's `schema:`"),
        "{skipped}"
    );
}

#[tokio::test]
async fn a_renamed_header_fails_the_snapshot_instead_of_nulling_it() {
    let lab = Lab::new();
    let yaml = |extra: &str| {
        format!("id: ventas\nsource: {{format: csv, location: v.csv}}\ntrigger: callback\n{extra}")
    };
    lab.write("v.csv", "id,ciudad,cantidad\n1,Lima,3\n");
    run_spec(&lab, &lab.spec(&yaml(""))).await.unwrap();
    lab.write("v.csv", "id,city,qty\n1,Lima,3\n");
    expect_error(
        run_spec(&lab, &lab.spec(&yaml(""))).await,
        &[
            "'ciudad', 'cantidad'",
            "city, qty: renamed?",
            "missing_columns: null",
        ],
    );
    assert_eq!(
        lab.manifests("ventas").await.len(),
        1,
        "the snapshot was not replaced"
    );
    let rows = run_spec(&lab, &lab.spec(&yaml("missing_columns: null\n")))
        .await
        .unwrap();
    assert_eq!(rows[0]["id"], 1);
    assert!(rows[0].get("ciudad").is_none(), "written as null");
}

// ---- Excel ---------------------------------------------------------------------------------

fn excel(lab: &Lab, id: &str, file: &str, extra: &str) -> DatasetSpec {
    lab.spec(&format!(
        "id: {id}\nsource: {{format: excel, location: '{EXCEL}/{file}'{extra}}}\ntrigger: callback\n"
    ))
}

#[tokio::test]
async fn excel_error_cells_offset_headers_and_extra_cells() {
    let lab = Lab::new();
    // #DIV/0! is a null, counted; or the run fails naming the cell.
    let rows = run_spec(&lab, &excel(&lab, "err", "error-cell.xlsx", ""))
        .await
        .unwrap();
    assert_eq!(
        column(&rows, "ratio"),
        [json!(0.5), Value::Null, json!(0.25)]
    );
    assert!(
        report(&lab, "err")["warnings"]
            .to_string()
            .contains("1 cell(s) held an Excel error")
    );
    expect_error(
        run_spec(
            &lab,
            &excel(
                &lab,
                "errf",
                "error-cell.xlsx",
                ", excel: {error_cells: fail}",
            ),
        )
        .await,
        &[
            "row 3: column 'ratio' holds the Excel error #DIV/0!",
            "error-cell.xlsx",
        ],
    );
    // The header is found where it is (C3).
    let rows = run_spec(&lab, &excel(&lab, "off", "offset-header.xlsx", ""))
        .await
        .unwrap();
    assert_eq!(column(&rows, "temperature"), [json!(21.5), json!(19.0)]);
    expect_error(
        run_spec(
            &lab,
            &excel(
                &lab,
                "offrow",
                "offset-header.xlsx",
                ", excel: {header_row: 1}",
            ),
        )
        .await,
        &["header row 1 is empty"],
    );
    // Cells beyond the header's columns: left out and counted, or the run fails.
    let rows = run_spec(&lab, &excel(&lab, "extra", "extra-cells.xlsx", ""))
        .await
        .unwrap();
    assert_eq!(column(&rows, "name"), [json!("a"), json!("b"), json!("c")]);
    let warnings = report(&lab, "extra")["warnings"].to_string();
    assert!(
        warnings.contains("2 cell(s) beyond the header's columns were left out, the first at D2"),
        "{warnings}"
    );
    expect_error(
        run_spec(
            &lab,
            &excel(
                &lab,
                "extraf",
                "extra-cells.xlsx",
                ", excel: {extra_cells: fail}",
            ),
        )
        .await,
        &["cell D2 has a value outside the header's columns"],
    );
}

// ---- Reports -------------------------------------------------------------------------------

#[tokio::test]
async fn reports_carry_version_time_checksum_and_partial_counts() {
    let lab = Lab::new();
    run(&lab, "ok", "ok.csv", b"id,v\n1,a\n2,b\n", "")
        .await
        .unwrap();
    let manifest = &lab.manifests("ok").await[0];
    let report_path = lab
        .dir
        .path()
        .join("bucket")
        .join(&manifest.validation_report);
    let bytes = std::fs::read(&report_path).unwrap();
    use sha2::Digest;
    assert_eq!(
        manifest.validation_report_sha256.as_deref(),
        Some(hex::encode(sha2::Sha256::digest(&bytes)).as_str())
    );
    let written: Value = lab.document(&report_path);
    assert_eq!(written["format_version"], 2);
    assert!(written["generated_at"].is_string());
    // A run that fails at row 3 says it read that far.
    let mut text = String::from("id,n\n");
    for i in 1..=200 {
        text.push_str(&format!("{i},{i}\n"));
    }
    text.push_str("201,oops\n");
    lab.write("bad.csv", &text);
    let spec = lab.spec("id: bad\nsource: {format: csv, location: bad.csv}\ntrigger: callback\nschema: {n: int64}\n");
    run_spec(&lab, &spec).await.unwrap_err();
    let failed = report(&lab, "bad");
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["rows_read"], 201, "{failed}");
}
