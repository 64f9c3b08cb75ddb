//! CSV, JSON and Excel files through the whole run to encrypted Parquet, read back equal.

use crate::common::{Lab, column};
use serde_json::json;

const VENTAS_SPEC: &str = "
id: ventas
source: {format: csv, location: ventas.csv}
trigger: callback
key: [id]
timestamp_column: ts
";

fn ventas_csv(rows: usize) -> String {
    let mut csv = String::from("id,ciudad,monto,fecha,ts,nota\n");
    for i in 1..=rows {
        csv.push_str(&format!(
            "{i},Mérida,{}.25,2026-01-{:02},2026-01-01 10:{:02}:{:02}.123456,\"dice \"\"hola\"\", y, adiós\"\n",
            i * 10,
            i % 28 + 1,
            (i / 60) % 60,
            i % 60
        ));
    }
    csv
}

#[tokio::test]
async fn csv_round_trips_types_and_values_across_several_parts() {
    let lab = Lab::new();
    lab.write("ventas.csv", ventas_csv(1200));
    let outcome = lab.engine().run(&lab.spec(VENTAS_SPEC)).await.unwrap();
    assert_eq!(outcome.manifest.rows, 1200);
    assert_eq!(outcome.manifest.files.len(), 3, "500 rows per file");
    assert_eq!(
        outcome.manifest.files.iter().map(|f| f.rows).sum::<u64>(),
        1200
    );
    assert!(
        outcome
            .manifest
            .files
            .iter()
            .all(|f| f.sha256.len() == 64 && f.bytes > 0)
    );

    let types: Vec<String> = outcome
        .manifest
        .schema
        .fields()
        .iter()
        .map(|f| f.data_type().to_string())
        .collect();
    assert_eq!(
        types,
        [
            "Int64",
            "Utf8",
            "Float64",
            "Date32",
            "Timestamp(µs)",
            "Utf8"
        ]
    );

    let rows = lab.rows("ventas").await;
    assert_eq!(rows.len(), 1200);
    assert_eq!(
        rows[0],
        json!({"id": 1, "ciudad": "Mérida", "monto": 10.25, "fecha": "2026-01-02",
               "ts": "2026-01-01T10:00:01.123456", "nota": "dice \"hola\", y, adiós"})
    );
    assert_eq!(column(&rows, "id").last().unwrap(), &json!(1200));
}

#[tokio::test]
async fn parts_checksums_match_the_bytes_on_disk() {
    use sha2::Digest;
    let lab = Lab::new();
    lab.write("ventas.csv", ventas_csv(50));
    let outcome = lab.engine().run(&lab.spec(VENTAS_SPEC)).await.unwrap();
    for file in &outcome.manifest.files {
        let bytes = std::fs::read(lab.part_path(file)).unwrap();
        assert_eq!(bytes.len() as u64, file.bytes);
        assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), file.sha256);
        assert_eq!(&bytes[..4], b"PARE", "encrypted footer magic");
    }
}

#[tokio::test]
async fn csv_options_delimiter_quote_nulls_and_explicit_types() {
    let lab = Lab::new();
    lab.write(
        "semi.csv",
        "codigo;precio;activo\n'007';'12.50';true\n'010';NA;false\n",
    );
    let spec = lab.spec(
        "id: semi
source: {format: csv, location: semi.csv, csv: {delimiter: ';', quote: \"'\", null_values: [NA]}}
trigger: callback
schema: {precio: 'decimal(10,2)'}
",
    );
    let outcome = lab.engine().run(&spec).await.unwrap();
    let precio = outcome.manifest.schema.field_with_name("precio").unwrap();
    assert_eq!(
        precio.data_type(),
        &arrow::datatypes::DataType::Decimal128(10, 2)
    );
    let rows = lab.rows("semi").await;
    assert_eq!(
        rows,
        vec![
            json!({"codigo": "007", "precio": 12.5, "activo": true}),
            json!({"codigo": "010", "activo": false}),
        ]
    );
}

#[tokio::test]
async fn latin1_files_are_read_when_declared_and_named_when_not() {
    let lab = Lab::new();
    let mut bytes = b"ciudad,n\n".to_vec();
    bytes.extend_from_slice(b"M\xe9rida,1\nLe\xf3n,2\n");
    lab.write("latin.csv", &bytes);
    let declared = lab.spec("id: latin\nsource: {format: csv, location: latin.csv, csv: {encoding: latin-1}}\ntrigger: callback\n");
    lab.engine().run(&declared).await.unwrap();
    assert_eq!(
        column(&lab.rows("latin").await, "ciudad"),
        [json!("Mérida"), json!("León")]
    );

    let undeclared =
        lab.spec("id: latin2\nsource: {format: csv, location: latin.csv}\ntrigger: callback\n");
    let err = lab.engine().run(&undeclared).await.unwrap_err().to_string();
    assert!(
        err.contains("latin.csv") && err.contains("line 2") && err.contains("latin-1"),
        "{err}"
    );
}

#[tokio::test]
async fn json_array_and_ndjson_give_the_same_rows_with_nested_structs() {
    let lab = Lab::new();
    let records = [
        json!({"id": 1, "nombre": "Ana", "direccion": {"ciudad": "Puebla", "cp": "72000"}, "tags": ["a"]}),
        json!({"id": 2, "nombre": "Luis", "direccion": {"ciudad": "León", "cp": null}, "tags": []}),
        json!({"id": 3, "nombre": null, "direccion": null, "tags": ["b", "c"], "extra": 1.5}),
    ];
    lab.write(
        "array.json",
        serde_json::to_string_pretty(&records.to_vec()).unwrap(),
    );
    lab.write(
        "lines.json",
        records
            .iter()
            .map(|r| r.to_string() + "\n")
            .collect::<String>(),
    );
    for (id, file) in [("array", "array.json"), ("lines", "lines.json")] {
        let spec = lab.spec(&format!(
            "id: {id}\nsource: {{format: json, location: {file}}}\ntrigger: callback\n"
        ));
        lab.engine().run(&spec).await.unwrap();
    }
    let array = lab.rows("array").await;
    assert_eq!(array, lab.rows("lines").await);
    assert_eq!(
        array[0]["direccion"],
        json!({"ciudad": "Puebla", "cp": "72000"})
    );
    assert_eq!(array[1]["direccion"], json!({"ciudad": "León"}));
    assert_eq!(array[2]["tags"], json!(["b", "c"]));
    assert_eq!(array[2]["extra"], json!(1.5));
    let manifest = &lab.manifests("array").await[0];
    assert!(matches!(
        manifest
            .schema
            .field_with_name("direccion")
            .unwrap()
            .data_type(),
        arrow::datatypes::DataType::Struct(_)
    ));
}

#[tokio::test]
async fn excel_sheet_header_row_dates_and_types() {
    let lab = Lab::new();
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../samples/productos.xlsx");
    let spec = lab.spec(&format!(
        "id: productos\nsource: {{format: excel, location: {fixture}, excel: {{sheet: Productos, header_row: 2}}}}\ntrigger: callback\n"
    ));
    let outcome = lab.engine().run(&spec).await.unwrap();
    assert_eq!(outcome.manifest.rows, 10);
    let types: Vec<String> = outcome
        .manifest
        .schema
        .fields()
        .iter()
        .map(|f| format!("{}:{}", f.name(), f.data_type()))
        .collect();
    assert_eq!(
        types,
        [
            "producto_id:Int64",
            "nombre:Utf8",
            "categoria:Utf8",
            "precio:Float64",
            "activo:Boolean",
            "alta:Date32"
        ]
    );
    let rows = lab.rows("productos").await;
    assert_eq!(
        rows[1],
        json!({"producto_id": 2, "nombre": "Audífonos Inalámbricos", "categoria": "Electrónicos", "precio": 1299.5, "activo": true, "alta": "2024-02-10"})
    );
    assert_eq!(rows[3]["activo"], json!(false));
}

#[tokio::test]
async fn excel_errors_name_the_sheet_and_cell() {
    let lab = Lab::new();
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/errores.xlsx");
    let missing = lab.spec(&format!("id: x\nsource: {{format: excel, location: {fixture}, excel: {{sheet: Nope}}}}\ntrigger: callback\n"));
    let err = lab.engine().run(&missing).await.unwrap_err().to_string();
    assert!(
        err.contains("'Nope' not found") && err.contains("Datos"),
        "{err}"
    );

    // Error cells are nulls by default (messy_inputs.rs); here they are refused.
    let fail = lab.spec(&format!(
        "id: x\nsource: {{format: excel, location: {fixture}, excel: {{error_cells: fail}}}}\ntrigger: callback\n"
    ));
    let err = lab.engine().run(&fail).await.unwrap_err().to_string();
    assert!(
        err.contains("row 3") && err.contains("'ratio'") && err.contains("#DIV/0!"),
        "{err}"
    );

    let skip = lab.spec(&format!("id: x\nsource: {{format: excel, location: {fixture}, excel: {{error_cells: fail}}}}\ntrigger: callback\non_malformed_row: skip\n"));
    let outcome = lab.engine().run(&skip).await.unwrap();
    assert_eq!(outcome.manifest.rows, 2);
    assert_eq!(outcome.report.rejected_rows, 1);
    assert_eq!(outcome.report.rejected_samples[0].row, 3);
}

#[tokio::test]
async fn validation_report_covers_headers_empties_duplicates_and_timestamps() {
    let lab = Lab::new();
    lab.write(
        "r.csv",
        "id, nombre ,,ts\n1,a,x,2026-01-01 00:00:00\n,,,\n1,b,y,\n2,c,z,2026-01-02 00:00:00\n",
    );
    let spec = lab.spec("id: r\nsource: {format: csv, location: r.csv}\ntrigger: callback\nkey: [id]\ntimestamp_column: ts\n");
    let outcome = lab.engine().run(&spec).await.unwrap();
    let report = &outcome.report;
    assert_eq!(
        report.header_problems.len(),
        2,
        "{:?}",
        report.header_problems
    );
    assert!(
        report
            .header_problems
            .iter()
            .any(|p| p.contains("column_3"))
    );
    assert_eq!(report.empty_rows, 1);
    assert_eq!(report.rows_read, 4);
    assert_eq!(report.rows_written, 3);
    assert_eq!(report.duplicate_keys.as_ref().unwrap().duplicate_rows, 1);
    let ts = report.timestamp.as_ref().unwrap();
    assert_eq!(
        (ts.rows_without_timestamp, ts.every_row_has_timestamp),
        (1, false)
    );
    // The report is stored beside the manifest and referenced by it.
    let stored = lab.document(
        lab.dir
            .path()
            .join("bucket")
            .join(&outcome.manifest.validation_report),
    );
    let stored: carga_jobs::validation::ValidationReport = serde_json::from_value(stored).unwrap();
    assert_eq!(&stored, report);
}

#[tokio::test]
async fn legacy_xls_and_opendocument_sheets_read_alike() {
    let lab = Lab::new();
    let mut seen = Vec::new();
    for (id, file) in [("xls", "precios.xls"), ("ods", "precios.ods")] {
        let fixture = format!("{}/tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
        let spec = lab.spec(&format!(
            "id: {id}\nsource: {{format: excel, location: {fixture}}}\ntrigger: callback\n"
        ));
        let outcome = lab.engine().run(&spec).await.unwrap();
        let types: Vec<String> = outcome
            .manifest
            .schema
            .fields()
            .iter()
            .map(|f| f.data_type().to_string())
            .collect();
        assert_eq!(types, ["Utf8", "Float64", "Date32"], "{file}");
        seen.push(lab.rows(id).await);
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(
        seen[0][0],
        json!({"sku": "A-01", "precio": 10.5, "vigente_desde": "2025-01-02"})
    );
    assert_eq!(seen[0][1]["precio"], json!(7.0));
}

#[tokio::test]
async fn compression_setting_reaches_the_parquet_column_chunks() {
    use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
    use parquet::basic::Compression;
    for (setting, expected) in [
        (carga_config::Compression::Zstd, "ZSTD"),
        (carga_config::Compression::Snappy, "SNAPPY"),
    ] {
        let mut lab = Lab::new();
        lab.settings.compression = setting;
        lab.write("ventas.csv", ventas_csv(10));
        let outcome = lab.engine().run(&lab.spec(VENTAS_SPEC)).await.unwrap();
        let file = std::fs::File::open(lab.part_path(&outcome.manifest.files[0])).unwrap();
        let options = ArrowReaderOptions::new()
            .with_file_decryption_properties(lab.engine().encryptor().file_decryption().unwrap());
        let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(file, options).unwrap();
        let codec = builder.metadata().row_group(0).column(0).compression();
        assert!(matches!(codec, Compression::ZSTD(_) | Compression::SNAPPY));
        assert!(format!("{codec:?}").starts_with(expected), "{codec:?}");
    }
}

#[tokio::test]
async fn timestamps_with_offsets_become_utc_instants() {
    let lab = Lab::new();
    lab.write(
        "tz.csv",
        "id,at\n1,2026-01-01T10:00:00+02:00\n2,2026-01-01T10:00:00Z\n",
    );
    let spec = lab.spec("id: tz\nsource: {format: csv, location: tz.csv}\ntrigger: callback\nkey: [id]\ntimestamp_column: at\n");
    let outcome = lab.engine().run(&spec).await.unwrap();
    let at = outcome.manifest.schema.field_with_name("at").unwrap();
    assert_eq!(at.data_type().to_string(), "Timestamp(µs, \"+00:00\")");
    assert_eq!(
        column(&lab.rows("tz").await, "at"),
        [json!("2026-01-01T08:00:00Z"), json!("2026-01-01T10:00:00Z")]
    );
    let to = outcome.manifest.watermark.unwrap().to.unwrap();
    assert_eq!(to.values["at"], "2026-01-01T10:00:00Z");
}
