//! MongoDB source against a real MongoDB-compatible server on loopback (SecantusDB in CI, port
//! 27018; `CARGA_TEST_MONGODB_URL` points elsewhere): type mapping, inference policies, delta
//! across runs with equal timestamps and a late document, complete snapshots, schema drift.

use crate::common::{Lab, column, service_available};
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{Binary, Bson, DateTime, Decimal128, Document, doc, oid::ObjectId};
use serde_json::json;

const DATABASE: &str = "carga_test";

fn url() -> String {
    std::env::var("CARGA_TEST_MONGODB_URL")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27018/?directConnection=true".into())
}

/// A lab whose secrets file knows connection `mongo`, and an emptied collection.
async fn setup(collection: &str) -> Option<(Lab, mongodb::Collection<Document>)> {
    let address = url()
        .trim_start_matches("mongodb://")
        .split(['/', '?'])
        .next()
        .unwrap_or_default()
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .to_owned();
    if !service_available("MongoDB", &address) {
        return None;
    }
    let mut lab = Lab::new();
    lab.settings.secrets_file = lab.write(
        "secrets.json",
        json!({"mongo": {"url": url(), "database": DATABASE}}).to_string(),
    );
    let client = mongodb::Client::with_uri_str(url()).await.unwrap();
    let collection = client.database(DATABASE).collection::<Document>(collection);
    collection.drop().await.unwrap();
    Some((lab, collection))
}

fn spec(lab: &Lab, id: &str, collection: &str, extra: &str) -> carga_config::DatasetSpec {
    lab.spec(&format!(
        "id: {id}\nsource: {{format: mongodb, collection: {collection}}}\nconnection_id: mongo\ntrigger: callback\n{extra}"
    ))
}

fn at(text: &str) -> DateTime {
    DateTime::parse_rfc3339_str(text).unwrap()
}

#[tokio::test]
async fn every_mapped_type_round_trips() {
    let Some((lab, collection)) = setup("types").await else {
        return;
    };
    let id = ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").unwrap();
    collection
        .insert_many([
            doc! {
                "_id": id,
                "small": 7_i32,
                "big": 9_007_199_254_740_993_i64,
                "ratio": 0.25,
                "price": "19.90".parse::<Decimal128>().unwrap(),
                "name": "ñandú",
                "ok": true,
                "when": at("2026-02-28T13:14:15.123Z"),
                "uid": Binary { subtype: BinarySubtype::Uuid, bytes: (1..=16).collect() },
                "blob": Binary { subtype: BinarySubtype::Generic, bytes: vec![0, 255, 16] },
                "address": {"city": "Lima", "geo": {"lat": -12.05}},
                "tags": ["a", "b"],
                "pattern": Bson::RegularExpression(mongodb::bson::Regex { pattern: "^a".into(), options: "i".into() }),
            },
            doc! {"_id": ObjectId::new(), "small": Bson::Null, "big": 1_i32, "ratio": 2_i32, "price": 3_i32},
        ])
        .await
        .unwrap();
    let outcome = lab
        .engine()
        .run(&spec(&lab, "types", "types", ""))
        .await
        .unwrap();
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
            "_id:Utf8",
            "small:Int32",
            "big:Int64",
            "ratio:Float64",
            "price:Decimal128(38, 2)",
            "name:Utf8",
            "ok:Boolean",
            "when:Timestamp(ms, \"+00:00\")",
            "uid:Utf8",
            "blob:Binary",
            "address:Struct(\"city\": Utf8, \"geo\": Struct(\"lat\": Float64))",
            "tags:List(Utf8)",
            "pattern:Utf8",
        ]
    );
    let rows = lab.rows("types").await;
    let first = &rows[0];
    assert_eq!(first["_id"], json!("65a1b2c3d4e5f60718293a4b"));
    assert_eq!(first["small"], json!(7));
    assert_eq!(first["big"], json!(9_007_199_254_740_993_i64));
    assert_eq!(first["price"], json!(19.9));
    assert_eq!(first["name"], json!("ñandú"));
    assert_eq!(first["when"], json!("2026-02-28T13:14:15.123Z"));
    assert_eq!(first["uid"], json!("01020304-0506-0708-090a-0b0c0d0e0f10"));
    assert_eq!(first["blob"], json!("00ff10"));
    assert_eq!(
        first["address"],
        json!({"city": "Lima", "geo": {"lat": -12.05}})
    );
    assert_eq!(first["tags"], json!(["a", "b"]));
    assert_eq!(
        first["pattern"],
        json!(r#"{"$regularExpression":{"pattern":"^a","options":"i"}}"#)
    );
    assert_eq!(rows[1]["price"], json!(3.0));
    let batches = lab.batches("types").await;
    let price = batches[0]
        .column(4)
        .as_any()
        .downcast_ref::<arrow::array::Decimal128Array>()
        .unwrap();
    assert_eq!(price.value(0), 1990, "exact decimal, no float on the way");
}

#[tokio::test]
async fn mixed_types_and_nested_documents_follow_the_dataset_policy() {
    let Some((lab, collection)) = setup("mixed").await else {
        return;
    };
    collection
        .insert_many([
            doc! {"_id": 1, "code": "A7", "meta": {"x": 1}},
            doc! {"_id": 2, "code": 7, "meta": {"y": [1, 2]}},
        ])
        .await
        .unwrap();
    let as_text = lab.spec(
        "id: mixed\nsource:\n  format: mongodb\n  collection: mixed\n  mongodb: {nested: json}\nconnection_id: mongo\ntrigger: callback\n",
    );
    lab.engine().run(&as_text).await.unwrap();
    let rows = lab.rows("mixed").await;
    assert_eq!(column(&rows, "code"), [json!("A7"), json!("7")]);
    assert_eq!(
        column(&rows, "meta"),
        [json!(r#"{"x":1}"#), json!(r#"{"y":[1,2]}"#)]
    );

    let strict = lab.spec(
        "id: strict\nsource:\n  format: mongodb\n  collection: mixed\n  mongodb: {mixed_types: fail}\nconnection_id: mongo\ntrigger: callback\n",
    );
    let err = lab.engine().run(&strict).await.unwrap_err().to_string();
    assert!(
        err.contains("field 'code'") && err.contains("int32, string"),
        "{err}"
    );
    assert!(lab.manifests("strict").await.is_empty());
}

#[tokio::test]
async fn delta_across_runs_with_updates_equal_timestamps_and_a_late_document() {
    let Some((lab, collection)) = setup("orders").await else {
        return;
    };
    collection
        .insert_many([
            doc! {"_id": 1, "at": at("2026-03-01T10:00:00Z"), "state": "new"},
            doc! {"_id": 2, "at": at("2026-03-01T11:00:00Z"), "state": "new"},
            doc! {"_id": 3, "at": at("2026-03-01T11:00:00Z"), "state": "new"},
        ])
        .await
        .unwrap();
    let delta = spec(
        &lab,
        "orders",
        "orders",
        "mode: delta\ntimestamp_column: at\nkey: [_id]\nlookback: 1h\n",
    );
    assert_eq!(lab.engine().run(&delta).await.unwrap().manifest.rows, 3);

    // Same timestamp as the watermark, a newer one, and an update that moves a document forward.
    collection
        .insert_many([
            doc! {"_id": 4, "at": at("2026-03-01T11:00:00Z"), "state": "new"},
            doc! {"_id": 5, "at": at("2026-03-01T12:00:00Z"), "state": "new"},
        ])
        .await
        .unwrap();
    collection
        .update_one(
            doc! {"_id": 1},
            doc! {"$set": {"state": "paid", "at": at("2026-03-01T12:30:00Z")}},
        )
        .await
        .unwrap();
    assert_eq!(
        lab.engine().run(&delta).await.unwrap().manifest.rows,
        3,
        "4, 5 and the new version of 1"
    );
    // Written late with a timestamp inside the lookback window.
    collection
        .insert_one(doc! {"_id": 9, "at": at("2026-03-01T11:40:00Z"), "state": "late"})
        .await
        .unwrap();
    assert_eq!(
        lab.engine().run(&delta).await.unwrap().manifest.rows,
        1,
        "the late document, once"
    );
    assert_eq!(lab.engine().run(&delta).await.unwrap().manifest.rows, 0);

    let mut seen: Vec<(i64, String)> = lab
        .rows("orders")
        .await
        .iter()
        .map(|r| {
            (
                r["_id"].as_i64().unwrap(),
                r["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (1, "new".into()),
            (1, "paid".into()),
            (2, "new".into()),
            (3, "new".into()),
            (4, "new".into()),
            (5, "new".into()),
            (9, "late".into())
        ]
    );
}

#[tokio::test]
async fn object_ids_work_as_the_delta_key() {
    let Some((lab, collection)) = setup("events").await else {
        return;
    };
    let same = at("2026-04-01T00:00:00Z");
    let ids: Vec<ObjectId> = (0..5).map(|_| ObjectId::new()).collect();
    for id in &ids[..3] {
        collection
            .insert_one(doc! {"_id": id, "at": same})
            .await
            .unwrap();
    }
    let delta = spec(
        &lab,
        "events",
        "events",
        "mode: delta\ntimestamp_column: at\nkey: [_id]\n",
    );
    assert_eq!(lab.engine().run(&delta).await.unwrap().manifest.rows, 3);
    for id in &ids[3..] {
        collection
            .insert_one(doc! {"_id": id, "at": same})
            .await
            .unwrap();
    }
    assert_eq!(lab.engine().run(&delta).await.unwrap().manifest.rows, 2);
    let got: Vec<String> = column(&lab.rows("events").await, "_id")
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let want: Vec<String> = ids.iter().map(|i| i.to_hex()).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn complete_snapshots_bad_documents_and_schema_drift() {
    let Some((lab, collection)) = setup("catalog").await else {
        return;
    };
    collection
        .insert_many([doc! {"_id": 1, "qty": 5_i64}, doc! {"_id": 2, "qty": 6_i64}])
        .await
        .unwrap();
    let complete = spec(&lab, "catalog", "catalog", "new_columns: add\n");
    lab.engine().run(&complete).await.unwrap();
    let before = lab.manifests("catalog").await;

    // A string in a numeric field: the run fails naming the document and field; nothing moves.
    collection
        .insert_one(doc! {"_id": 3, "qty": "seven"})
        .await
        .unwrap();
    let err = lab.engine().run(&complete).await.unwrap_err().to_string();
    assert!(
        err.contains("_id 3") && err.contains("field 'qty'") && err.contains("seven"),
        "{err}"
    );
    assert_eq!(lab.manifests("catalog").await, before);

    // With skip, the bad document is counted and the rest is committed.
    let skipping = spec(
        &lab,
        "catalog",
        "catalog",
        "new_columns: add\non_malformed_row: skip\n",
    );
    let outcome = lab.engine().run(&skipping).await.unwrap();
    assert_eq!(outcome.manifest.rows, 2);
    assert_eq!(outcome.report.rejected_rows, 1);

    // Drift: a new field is added; a vanished one comes back as nulls.
    collection.delete_many(doc! {}).await.unwrap();
    collection
        .insert_one(doc! {"_id": 4, "qty": 1_i64, "color": "red"})
        .await
        .unwrap();
    lab.engine().run(&complete).await.unwrap();
    assert_eq!(
        lab.rows("catalog").await,
        [json!({"_id": 4, "qty": 1, "color": "red"})]
    );
    collection
        .replace_one(doc! {"_id": 4}, doc! {"_id": 4, "color": "blue"})
        .await
        .unwrap();
    let outcome = lab.engine().run(&complete).await.unwrap();
    let names: Vec<&String> = outcome
        .manifest
        .schema
        .fields()
        .iter()
        .map(|f| f.name())
        .collect();
    assert_eq!(names, ["_id", "qty", "color"]);
    assert_eq!(
        lab.rows("catalog").await,
        [json!({"_id": 4, "color": "blue"})]
    );

    // With `ignore`, a field that appears later is left out.
    collection
        .insert_one(doc! {"_id": 5, "qty": 2_i64, "size": "L"})
        .await
        .unwrap();
    let ignoring = spec(&lab, "catalog", "catalog", "new_columns: ignore\n");
    let outcome = lab.engine().run(&ignoring).await.unwrap();
    assert!(outcome.manifest.schema.field_with_name("size").is_err());
}

#[tokio::test]
async fn discovery_lists_collections_with_inferred_fields() {
    let Some((_lab, collection)) = setup("disc").await else {
        return;
    };
    collection
        .insert_one(doc! {"_id": 1, "name": "x", "at": at("2026-01-01T00:00:00Z")})
        .await
        .unwrap();
    let secret = carga_jobs::secrets::ConnectionSecret::new(
        "mongo",
        [("url".to_string(), json!(url()))].into(),
    );
    let tables = carga_jobs::sources::SourceRegistry::default()
        .discover("mongodb", &secret, Some(DATABASE))
        .await
        .unwrap();
    let disc = tables.iter().find(|t| t.name == "disc").unwrap();
    assert_eq!(disc.schema, DATABASE);
    assert_eq!(disc.primary_key, ["_id"]);
    let fields: Vec<(&str, &str)> = disc
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.arrow.as_str()))
        .collect();
    assert_eq!(
        fields,
        [
            ("_id", "Int32"),
            ("name", "Utf8"),
            ("at", "Timestamp(ms, \"+00:00\")")
        ]
    );
}
