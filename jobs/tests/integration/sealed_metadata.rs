//! Manifests and validation reports beside the encrypted Parquet hold no plaintext data value:
//! the watermark's values are sealed in the manifest and the report is sealed whole. Carga opens
//! both with the key (the next delta run starts from the sealed watermark); without the key a
//! reader still finds the files, rows, bytes, checksums and schema.

use crate::common::Lab;

/// Values that occur only in the data: keys, timestamps, a rejected value.
const DATA_VALUES: &[&str] = &[
    "K-7f3a91",
    "K-2b8c44",
    "K-9d0e17",
    "ZZBADVALUE",
    "2031-07-19",
    "08:41:2",
    "19422168", // the timestamps as epoch seconds (or micros), leading digits
];

fn assert_no_data_value(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    for value in DATA_VALUES {
        assert!(!text.contains(value), "{what} holds '{value}': {text}");
    }
}

#[tokio::test]
async fn manifests_and_reports_hold_no_plaintext_data_value() {
    let lab = Lab::new();
    lab.write(
        "m.csv",
        "code,amount,updated_at\nK-7f3a91,10,2031-07-19T08:41:27\nK-2b8c44,ZZBADVALUE,2031-07-19T08:41:28\nK-9d0e17,30,2031-07-19T08:41:29\n",
    );
    let spec = lab.spec(
        "id: sealed\nsource: {format: csv, location: m.csv}\nmode: delta\ntimestamp_column: updated_at\n\
         key: [code]\ntrigger: callback\non_malformed_row: skip\nschema:\n  amount: int64\n",
    );
    let outcome = lab.engine().run(&spec).await.unwrap();
    assert_eq!(outcome.manifest.rows, 2);
    assert_eq!(outcome.report.rejected_rows, 1);

    // On disk: nothing of the data in the manifest or the report, byte for byte.
    let bucket = lab.dir.path().join("bucket");
    let manifests = bucket.join("raw/sealed/_manifests");
    let mut documents = 0;
    for entry in std::fs::read_dir(&manifests).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            assert_no_data_value(&path.display().to_string(), &std::fs::read(&path).unwrap());
            documents += 1;
        }
    }
    assert_eq!(documents, 2, "one manifest and one report");

    // Readable without a key: what a transformation engine needs to find the files.
    let manifest_path = bucket.join("raw/sealed/_manifests/00000000000000000001.manifest.json");
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    assert_eq!(stored["format_version"], 2);
    assert_eq!(stored["rows"], 2);
    assert!(stored["files"][0]["sha256"].is_string());
    assert!(stored["schema"]["fields"].is_array());
    assert_eq!(
        stored["watermark"]["to"]["columns"],
        serde_json::json!(["updated_at", "code"])
    );
    assert_eq!(stored["watermark"]["to"]["values"], serde_json::json!({}));
    assert!(
        stored["sealed"]["key_material"]
            .as_str()
            .unwrap()
            .contains("PKMT1")
    );
    let report_path = bucket.join(&outcome.manifest.validation_report);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    assert_eq!(report["status"], "passed");
    assert!(report.get("rejected_samples").is_none());

    // With the key: the watermark and the report are whole again.
    let opened = lab.document(&manifest_path);
    assert_eq!(opened["watermark"]["to"]["values"]["code"], "K-9d0e17");
    let opened = lab.document(&report_path);
    assert_eq!(opened["rejected_rows"], 1);
    assert!(opened.to_string().contains("ZZBADVALUE"), "{opened}");

    // The next delta run starts from the sealed watermark: only the later row.
    lab.write(
        "m.csv",
        "code,amount,updated_at\nK-7f3a91,10,2031-07-19T08:41:27\nK-9d0e17,30,2031-07-19T08:41:29\nK-5a6b70,40,2031-07-19T08:41:30\n",
    );
    let second = lab.engine().run(&spec).await.unwrap();
    assert_eq!(second.manifest.rows, 1);
    assert_eq!(lab.rows("sealed").await.len(), 3);

    // A sealed value moved into another manifest does not open there.
    let mut moved: serde_json::Value = serde_json::from_slice(
        &std::fs::read(bucket.join("raw/sealed/_manifests/00000000000000000002.manifest.json"))
            .unwrap(),
    )
    .unwrap();
    moved["sealed"] = stored["sealed"].clone();
    let moved = serde_json::to_vec(&moved).unwrap();
    let refused =
        carga_jobs::destination::raw_zone::open_document(&moved, Some(lab.engine().encryptor()))
            .unwrap_err()
            .to_string();
    assert!(refused.contains("does not open"), "{refused}");
}
