//! DataFusion inside Carga: SQL over the encrypted raw zone (only live parts, the history, the
//! current version of each key; read-only; nothing without the key), SQL transforms on ingest,
//! and the Parquet, Arrow IPC and Avro file sources.

use std::sync::Arc;

use crate::common::{Lab, column, rows_as_json};
use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use futures::TryStreamExt;
use serde_json::json;

async fn sql(lab: &Lab, query: &str) -> Result<Vec<serde_json::Value>, String> {
    let engine = lab.engine();
    let stream = engine.sql(query).await.map_err(|e| e.to_string())?;
    let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(|e| e.to_string())?;
    Ok(rows_as_json(&batches))
}

fn csv(lab: &Lab, id: &str, file: &str, text: &str, extra: &str) -> carga_config::DatasetSpec {
    lab.write(file, text);
    lab.spec(&format!(
        "id: {id}\nsource: {{format: csv, location: {file}}}\ntrigger: callback\n{extra}"
    ))
}

#[tokio::test]
async fn sql_reads_only_what_the_manifests_say_is_live() {
    let lab = Lab::new();
    // A complete dataset replaced twice: only the last snapshot is the table.
    for snapshot in ["id,v\n1,a\n2,b\n3,c\n", "id,v\n1,a2\n", "id,v\n7,z\n8,y\n"] {
        let spec = csv(&lab, "snap", "snap.csv", snapshot, "");
        lab.engine().run(&spec).await.unwrap();
    }
    // A failed run's parts are in the bucket but in no manifest.
    let bad = csv(
        &lab,
        "snap",
        "snap.csv",
        "id,v\n9,x\nnot-a-number,y\n",
        "schema: {id: int64}\n",
    );
    lab.engine().run(&bad).await.unwrap_err();
    let rows = sql(&lab, "SELECT id, v FROM snap ORDER BY id")
        .await
        .unwrap();
    assert_eq!(
        rows,
        [json!({"id": 7, "v": "z"}), json!({"id": 8, "v": "y"})]
    );
    let count = sql(&lab, "SELECT count(*) AS n FROM snap__history")
        .await
        .unwrap();
    assert_eq!(count[0]["n"], 6, "every committed row of every run");
    let runs = sql(
        &lab,
        "SELECT _carga_sequence AS s, count(*) AS n FROM snap__history GROUP BY _carga_sequence ORDER BY s",
    )
    .await
    .unwrap();
    assert_eq!(
        runs,
        [
            json!({"s": 1, "n": 3}),
            json!({"s": 2, "n": 1}),
            json!({"s": 3, "n": 2})
        ]
    );
}

#[tokio::test]
async fn current_holds_the_latest_version_of_each_key() {
    let lab = Lab::new();
    let delta = "mode: delta\ntimestamp_column: ts\nkey: [id]\n";
    let runs = [
        "id,ts,v\n1,2026-01-01 00:00:00,a\n2,2026-01-01 00:00:00,b\n",
        "id,ts,v\n1,2026-01-02 00:00:00,a2\n3,2026-01-02 00:00:00,c\n",
        "id,ts,v\n2,2026-01-03 00:00:00,b2\n1,2026-01-03 00:00:00,a3\n",
    ];
    for text in runs {
        let spec = csv(&lab, "orders", "o.csv", text, delta);
        lab.engine().run(&spec).await.unwrap();
    }
    let all = sql(&lab, "SELECT count(*) AS n FROM orders").await.unwrap();
    assert_eq!(all[0]["n"], 6, "the delta table holds every version");
    let current = sql(&lab, "SELECT id, v FROM orders__current ORDER BY id")
        .await
        .unwrap();
    assert_eq!(
        current,
        [
            json!({"id": 1, "v": "a3"}),
            json!({"id": 2, "v": "b2"}),
            json!({"id": 3, "v": "c"})
        ]
    );
}

#[tokio::test]
async fn sql_is_read_only_and_needs_the_key() {
    let lab = Lab::new();
    let spec = csv(&lab, "s", "s.csv", "id\n1\n", "");
    lab.engine().run(&spec).await.unwrap();
    for refused in [
        "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
        "COPY s TO '/tmp/out.csv'",
        "INSERT INTO s VALUES (2)",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let err = sql(&lab, refused).await.unwrap_err();
        assert!(
            err.contains("not supported")
                || err.contains("not allowed")
                || err.contains("disabled"),
            "{refused}: {err}"
        );
    }
    // Another key cannot read the parts.
    let mut other = lab.settings.clone();
    other.key_file = lab.dir.path().join("other-keys.json");
    carga_jobs::encryption::MasterKeyring::create_file(&other.key_file, "carga-master").unwrap();
    let engine = carga_jobs::Engine::new(other).unwrap();
    let result = async {
        let stream = engine.sql("SELECT * FROM s").await?;
        let batches: Vec<RecordBatch> = stream
            .try_collect()
            .await
            .map_err(|e| carga_jobs::query::query_error("sql", e))?;
        Ok::<_, carga_jobs::JobError>(batches)
    }
    .await;
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("decrypt") || err.contains("unwrap") || err.contains("key"),
        "{err}"
    );
}

#[tokio::test]
async fn a_transform_projects_filters_masks_casts_and_renames_on_ingest() {
    let lab = Lab::new();
    let transform = "transform: \"SELECT id, lower(email) AS email, sha256(phone) AS phone_hash, CAST(amount AS DOUBLE) AS amount_f FROM source WHERE country = 'MX'\"\nkey: [id]\n";
    let spec = csv(
        &lab,
        "clientes",
        "c.csv",
        "id,email,phone,amount,country\n1,Ana@X.MX,555-1,10,MX\n2,Bo@Y.US,555-2,20,US\n3,Eva@Z.MX,555-3,30,MX\n",
        transform,
    );
    let outcome = lab.engine().run(&spec).await.unwrap();
    assert_eq!(outcome.manifest.rows, 2);
    let fields: Vec<(&str, &DataType)> = outcome
        .manifest
        .schema
        .fields()
        .iter()
        .map(|f| (f.name().as_str(), f.data_type()))
        .collect();
    assert_eq!(
        fields,
        [
            ("id", &DataType::Int64),
            ("email", &DataType::Utf8),
            ("phone_hash", &DataType::Binary),
            ("amount_f", &DataType::Float64)
        ]
    );
    let rows = lab.rows("clientes").await;
    assert_eq!(
        column(&rows, "email"),
        [json!("ana@x.mx"), json!("eva@z.mx")]
    );
    assert!(rows[0].get("phone").is_none() && rows[0].get("country").is_none());
    assert_eq!(column(&rows, "amount_f"), [json!(10.0), json!(30.0)]);
    // A transform that does not plan is refused naming the dataset.
    let broken = csv(
        &lab,
        "rota",
        "r.csv",
        "id\n1\n",
        "transform: \"SELECT nope FROM source\"\n",
    );
    let err = lab.engine().run(&broken).await.unwrap_err().to_string();
    assert!(
        err.contains("dataset 'rota'") && err.contains("transform") && err.contains("nope"),
        "{err}"
    );
}

#[tokio::test]
async fn parquet_arrow_and_avro_files_are_sources() {
    let lab = Lab::new();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef,
            Arc::new(StringArray::from(vec![Some("a"), None, Some("ñ")])),
        ],
    )
    .unwrap();
    // Parquet.
    let mut bytes = Vec::new();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(&mut bytes, schema.clone(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    lab.write("in.parquet", &bytes);
    // Arrow IPC, file and stream formats.
    let mut file = Vec::new();
    let mut ipc = arrow::ipc::writer::FileWriter::try_new(&mut file, &schema).unwrap();
    ipc.write(&batch).unwrap();
    ipc.finish().unwrap();
    drop(ipc);
    lab.write("in.arrow", &file);
    let mut stream = Vec::new();
    let mut ipc = arrow::ipc::writer::StreamWriter::try_new(&mut stream, &schema).unwrap();
    ipc.write(&batch).unwrap();
    ipc.finish().unwrap();
    drop(ipc);
    lab.write("in.arrows", &stream);
    // Avro.
    let mut avro =
        arrow_avro::writer::AvroWriter::new(Vec::new(), schema.as_ref().clone()).unwrap();
    avro.write(&batch).unwrap();
    avro.finish().unwrap();
    lab.write("in.avro", avro.into_inner());

    for (id, format, file) in [
        ("pq", "parquet", "in.parquet"),
        ("ipc", "arrow", "in.arrow"),
        ("ipcs", "arrow", "in.arrows"),
        ("av", "avro", "in.avro"),
    ] {
        let spec = lab.spec(&format!(
            "id: {id}\nsource: {{format: {format}, location: {file}}}\ntrigger: callback\n"
        ));
        let outcome = lab
            .engine()
            .run(&spec)
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(outcome.manifest.rows, 3, "{id}");
        let rows = lab.rows(id).await;
        assert_eq!(column(&rows, "id"), [json!(1), json!(2), json!(3)], "{id}");
        assert_eq!(
            column(&rows, "name"),
            [json!("a"), serde_json::Value::Null, json!("ñ")],
            "{id}"
        );
    }
    // A file that is not what its format says is refused naming it.
    lab.write("fake.parquet", "id,name\n1,a\n");
    let spec = lab
        .spec("id: fake\nsource: {format: parquet, location: fake.parquet}\ntrigger: callback\n");
    let err = lab.engine().run(&spec).await.unwrap_err().to_string();
    assert!(
        err.contains("fake.parquet") && err.contains("not a readable Parquet file"),
        "{err}"
    );
}
