//! The conformance suite every source runs (object_store's `integration.rs` style): the same
//! logical table — `id` integer key, `name` text, `ts` timestamp — held by each source in its
//! own way, and the same checks on each: the schema and types, delta runs across ties at the
//! watermark (no row lost or repeated), a cursor pushed into the source when it says it can, an
//! empty source refused unless allowed, and bad input named. A source registered by an embedding
//! program (`MemoryTable` below, through the public `Source` trait) runs the suite too.

use std::sync::{Arc, Mutex};

use crate::common::{Lab, service_available};
use arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use carga_config::{DatasetSpec, SourceSpec};
use carga_jobs::access::AccessPolicy;
use carga_jobs::error::{JobError, Result};
use carga_jobs::secrets::ConnectionSecret;
use carga_jobs::sources::{
    ColumnInfo, Source, SourceAccess, SourceFactory, SourceOutput, SourceRegistry, TableDiscovery,
    TableInfo,
};
use carga_jobs::validation::ReadStats;
use serde_json::json;
use sqlx::{AssertSqlSafe, Connection, Executor};

/// One row of the logical table.
#[derive(Debug, Clone, Copy)]
struct Row {
    id: i64,
    /// Seconds after 2026-03-01 00:00:00.
    at: i64,
}

fn timestamp(at: i64) -> String {
    let base = chrono::NaiveDate::from_ymd_opt(2026, 3, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    (base + chrono::Duration::seconds(at))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// A source under test: it (re)writes the whole table and returns the delta spec that reads it,
/// or `None` when its server is not here (a skip, or a failure in CI).
#[derive(Clone, Copy, Debug)]
enum Fixture {
    Csv,
    Json,
    Parquet,
    Postgres,
    Mysql,
    Registered,
}

const ALL: [Fixture; 6] = [
    Fixture::Csv,
    Fixture::Json,
    Fixture::Parquet,
    Fixture::Postgres,
    Fixture::Mysql,
    Fixture::Registered,
];

const DELTA: &str = "mode: delta\ntimestamp_column: ts\nkey: [id]\ntrigger: callback\n";

struct Subject {
    lab: Lab,
    fixture: Fixture,
    id: String,
    memory: Arc<Mutex<Vec<Row>>>,
}

impl Subject {
    async fn new(fixture: Fixture, test: &str) -> Option<Self> {
        let mut lab = Lab::new();
        let available = match fixture {
            Fixture::Postgres => service_available("PostgreSQL", "127.0.0.1:5432"),
            Fixture::Mysql => service_available("MariaDB/MySQL", "127.0.0.1:3306"),
            _ => true,
        };
        if !available {
            return None;
        }
        lab.settings.secrets_file = lab.write(
            "secrets.json",
            json!({"pg": {"url": pg_url()}, "my": {"url": my_url()}}).to_string(),
        );
        Some(Self {
            lab,
            fixture,
            id: format!("{test}_{fixture:?}").to_lowercase(),
            memory: Arc::default(),
        })
    }

    fn table(&self) -> String {
        match self.fixture {
            Fixture::Postgres => format!("public.conf_{}", self.id),
            _ => format!("test.conf_{}", self.id),
        }
    }

    /// Makes the source hold exactly `rows`.
    async fn load(&self, rows: &[Row]) {
        match self.fixture {
            Fixture::Csv => {
                let mut text = String::from("id,name,ts\n");
                for row in rows {
                    text.push_str(&format!("{},n{},{}\n", row.id, row.id, timestamp(row.at)));
                }
                self.lab.write("table.csv", text);
            }
            Fixture::Json => {
                let lines: Vec<String> = rows
                    .iter()
                    .map(|r| {
                        json!({"id": r.id, "name": format!("n{}", r.id), "ts": timestamp(r.at)})
                            .to_string()
                    })
                    .collect();
                self.lab.write("table.json", lines.join("\n"));
            }
            Fixture::Parquet => {
                let batch = memory_batch(rows);
                let file =
                    std::fs::File::create(self.lab.dir.path().join("table.parquet")).unwrap();
                let mut writer =
                    parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
                writer.write(&batch).unwrap();
                writer.close().unwrap();
            }
            Fixture::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&pg_url()).await.unwrap();
                let table = self.table();
                let mut sql = format!(
                    "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int8 PRIMARY KEY, name text, ts timestamp);"
                );
                for row in rows {
                    sql.push_str(&format!(
                        "INSERT INTO {table} VALUES ({}, 'n{}', '{}');",
                        row.id,
                        row.id,
                        timestamp(row.at)
                    ));
                }
                conn.execute(AssertSqlSafe(sql)).await.unwrap();
            }
            Fixture::Mysql => {
                let mut conn = sqlx::MySqlConnection::connect(&my_url()).await.unwrap();
                let table = self.table();
                conn.execute(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
                    .await
                    .unwrap();
                conn.execute(AssertSqlSafe(format!(
                    "CREATE TABLE {table} (id BIGINT PRIMARY KEY, name VARCHAR(20), ts DATETIME(6))"
                )))
                .await
                .unwrap();
                for row in rows {
                    conn.execute(AssertSqlSafe(format!(
                        "INSERT INTO {table} VALUES ({}, 'n{}', '{}')",
                        row.id,
                        row.id,
                        timestamp(row.at)
                    )))
                    .await
                    .unwrap();
                }
            }
            Fixture::Registered => *self.memory.lock().unwrap() = rows.to_vec(),
        }
    }

    fn spec(&self, extra: &str) -> DatasetSpec {
        let id = &self.id;
        let source = match self.fixture {
            Fixture::Csv => "{format: csv, location: table.csv}".to_owned(),
            Fixture::Json => "{format: json, location: table.json}".to_owned(),
            Fixture::Parquet => "{format: parquet, location: table.parquet}".to_owned(),
            Fixture::Postgres => format!(
                "{{format: postgres, table: {}}}\nconnection_id: pg",
                self.table()
            ),
            Fixture::Mysql => format!(
                "{{format: mariadb, table: {}}}\nconnection_id: my",
                self.table()
            ),
            Fixture::Registered => "{format: memory, table: conformance}".to_owned(),
        };
        // Text files say nothing of types: the timestamp is declared, as a user would.
        let declared = match self.fixture {
            Fixture::Csv | Fixture::Json => "schema: {ts: timestamp}\n",
            _ => "",
        };
        self.lab.spec(&format!(
            "id: {id}\nsource: {source}\n{DELTA}{declared}{extra}"
        ))
    }

    fn engine(&self) -> carga_jobs::Engine {
        let mut sources = SourceRegistry::default();
        sources
            .register(
                "memory",
                Arc::new(MemoryFactory {
                    rows: self.memory.clone(),
                }),
            )
            .unwrap();
        self.lab.engine().with_sources(sources)
    }

    async fn run(&self, extra: &str) -> std::result::Result<carga_jobs::run::RunOutcome, String> {
        self.engine()
            .run(&self.spec(extra))
            .await
            .map_err(|failure| failure.error.to_string())
    }

    async fn committed_ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .lab
            .rows(&self.id)
            .await
            .iter()
            .map(|row| row["id"].as_i64().unwrap())
            .collect();
        ids.sort_unstable();
        ids
    }

    fn cursor_pushdown(&self) -> bool {
        let engine = self.engine();
        let source = engine
            .sources()
            .build(&self.spec(""), engine.policy())
            .unwrap();
        source.capabilities().cursor_pushdown
    }
}

fn pg_url() -> String {
    std::env::var("CARGA_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn my_url() -> String {
    std::env::var("CARGA_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

#[tokio::test]
async fn every_source_gives_the_tables_columns_and_types() {
    for fixture in ALL {
        let Some(subject) = Subject::new(fixture, "types").await else {
            continue;
        };
        subject
            .load(&[Row { id: 1, at: 0 }, Row { id: 2, at: 60 }])
            .await;
        let outcome = subject
            .run("")
            .await
            .unwrap_or_else(|e| panic!("{fixture:?}: {e}"));
        let schema = &outcome.manifest.schema;
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["id", "name", "ts"], "{fixture:?}");
        let types: Vec<&DataType> = schema.fields().iter().map(|f| f.data_type()).collect();
        assert_eq!(types[0], &DataType::Int64, "{fixture:?}");
        assert!(
            matches!(
                types[1],
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ),
            "{fixture:?}: {}",
            types[1]
        );
        assert!(
            matches!(types[2], DataType::Timestamp(TimeUnit::Microsecond, None)),
            "{fixture:?}: {}",
            types[2]
        );
        assert_eq!(outcome.manifest.rows, 2, "{fixture:?}");
        assert_eq!(
            outcome.manifest.source.format,
            subject.spec("").source.format_name(),
            "{fixture:?}"
        );
        let row = &subject.lab.rows(&subject.id).await[0];
        assert_eq!(row["name"], "n1", "{fixture:?}");
        assert_eq!(row["ts"], "2026-03-01T00:00:00", "{fixture:?}");
    }
}

#[tokio::test]
async fn delta_runs_take_ties_at_the_watermark_once_and_late_rows_once() {
    for fixture in ALL {
        let Some(subject) = Subject::new(fixture, "delta").await else {
            continue;
        };
        let mut rows = vec![
            Row { id: 1, at: 0 },
            Row { id: 2, at: 60 },
            Row { id: 3, at: 60 },
        ];
        subject.load(&rows).await;
        let first = subject
            .run("")
            .await
            .unwrap_or_else(|e| panic!("{fixture:?}: {e}"));
        assert_eq!(first.manifest.rows, 3, "{fixture:?}");

        // A row tied with the watermark's timestamp (a higher key), and a later one.
        rows.push(Row { id: 4, at: 60 });
        rows.push(Row { id: 5, at: 120 });
        subject.load(&rows).await;
        let second = subject
            .run("")
            .await
            .unwrap_or_else(|e| panic!("{fixture:?}: {e}"));
        assert_eq!(second.manifest.rows, 2, "{fixture:?}");
        assert_eq!(
            subject.committed_ids().await,
            [1, 2, 3, 4, 5],
            "{fixture:?}"
        );
        if subject.cursor_pushdown() {
            // The source filtered on its side: the tie and the new row, not the whole table.
            assert!(
                second.report.rows_read <= 3,
                "{fixture:?} says it pushes the cursor down but read {} rows",
                second.report.rows_read
            );
        } else {
            assert_eq!(second.report.rows_read, 5, "{fixture:?}");
        }

        // Nothing new: nothing written, nothing repeated, and the run is not refused as empty.
        let third = subject
            .run("")
            .await
            .unwrap_or_else(|e| panic!("{fixture:?}: {e}"));
        assert_eq!(third.manifest.rows, 0, "{fixture:?}");
        assert_eq!(
            subject.committed_ids().await,
            [1, 2, 3, 4, 5],
            "{fixture:?}"
        );
    }
}

#[tokio::test]
async fn an_empty_source_is_refused_unless_allowed() {
    for fixture in ALL {
        let Some(subject) = Subject::new(fixture, "empty").await else {
            continue;
        };
        subject.load(&[]).await;
        let refused = subject.run("").await;
        let message = refused
            .err()
            .unwrap_or_else(|| panic!("{fixture:?} accepted an empty source"));
        assert!(
            message.contains("no data rows") || message.contains("empty"),
            "{fixture:?}: {message}"
        );
        assert!(
            subject.lab.manifests(&subject.id).await.is_empty(),
            "{fixture:?}"
        );
        if matches!(fixture, Fixture::Json) {
            // An empty JSON file has no records to take columns from: refused even when
            // allowed (tested in file_sources), never committed as a table without columns.
            continue;
        }
        let allowed = subject
            .run("allow_empty: true\n")
            .await
            .unwrap_or_else(|e| panic!("{fixture:?}: {e}"));
        assert_eq!(allowed.manifest.rows, 0, "{fixture:?}");
    }
}

#[tokio::test]
async fn bad_values_are_named_by_source_and_row() {
    for fixture in [Fixture::Csv, Fixture::Json] {
        let Some(subject) = Subject::new(fixture, "bad").await else {
            continue;
        };
        subject
            .load(&[Row { id: 1, at: 0 }, Row { id: 2, at: 60 }])
            .await;
        let name = match fixture {
            Fixture::Csv => "table.csv",
            _ => "table.json",
        };
        let path = subject.lab.dir.path().join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("2026-03-01 00:01:00", "yesterday", 1)).unwrap();
        let message = subject.run("").await.err().unwrap();
        assert!(message.contains(name), "{fixture:?}: {message}");
        assert!(message.contains("ts"), "{fixture:?}: {message}");
        // The file's own numbering (CSV counts the header line) and the row's key.
        let row = match fixture {
            Fixture::Csv => "row 3",
            _ => "line 2",
        };
        assert!(message.contains(row), "{fixture:?}: {message}");
        assert!(message.contains("id=2"), "{fixture:?}: {message}");
    }
}

#[tokio::test]
async fn a_format_nobody_registered_is_refused_with_the_known_ones() {
    let lab = Lab::new();
    let spec = lab.spec("id: k\nsource: {format: kafka, topic: orders}\ntrigger: callback\n");
    let message = lab.engine().run(&spec).await.unwrap_err().error.to_string();
    assert!(
        message.contains("'kafka'") && message.contains("csv") && message.contains("postgres"),
        "{message}"
    );
    let mut sources = SourceRegistry::default();
    let taken = sources.register(
        "csv",
        Arc::new(MemoryFactory {
            rows: Arc::default(),
        }),
    );
    assert!(taken.is_err(), "a built-in format name was taken");
}

#[tokio::test]
async fn discovery_is_asked_of_the_source_registered_for_the_format() {
    let mut sources = SourceRegistry::default();
    sources
        .register(
            "memory",
            Arc::new(MemoryFactory {
                rows: Arc::default(),
            }),
        )
        .unwrap();
    let secret = ConnectionSecret::new("m", Default::default());
    let tables = sources
        .discover("memory", &secret, Some("s"))
        .await
        .unwrap();
    assert_eq!(tables.len(), 1);
    assert_eq!(
        (tables[0].schema.as_str(), tables[0].name.as_str()),
        ("s", "orders")
    );
    assert_eq!(tables[0].primary_key, ["id"]);
    assert_eq!(tables[0].columns.len(), 3);
    // A file source has no tables; a format nobody reads says which ones exist.
    let csv = sources
        .discover("csv", &secret, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(csv.contains("no tables to list"), "{csv}");
    let unknown = sources
        .discover("kafka", &secret, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        unknown.contains("'kafka'") && unknown.contains("memory"),
        "{unknown}"
    );
}

/// A source as an embedding program writes one: rows held in memory, its options checked.
struct MemoryFactory {
    rows: Arc<Mutex<Vec<Row>>>,
}

impl SourceFactory for MemoryFactory {
    fn build(&self, spec: &DatasetSpec, _policy: &AccessPolicy) -> Result<Arc<dyn Source>> {
        let SourceSpec::Plugin(plugin) = &spec.source else {
            unreachable!("registered formats are plugins");
        };
        if let Some(unknown) = plugin.options.keys().find(|k| *k != "table") {
            return Err(JobError::Refused {
                dataset: spec.id.clone(),
                message: format!("source.{unknown} is not an option of a memory source"),
            });
        }
        Ok(Arc::new(MemoryTable {
            rows: self.rows.lock().unwrap().clone(),
        }))
    }

    fn discovery(&self) -> Option<Arc<dyn TableDiscovery>> {
        Some(Arc::new(MemoryCatalog))
    }
}

/// The registered source's answer to `carga discover`: its one table.
struct MemoryCatalog;

#[async_trait::async_trait]
impl TableDiscovery for MemoryCatalog {
    async fn discover(
        &self,
        _secret: &ConnectionSecret,
        schema: Option<&str>,
    ) -> Result<Vec<TableInfo>> {
        Ok(vec![TableInfo {
            schema: schema.unwrap_or("memory").into(),
            name: "orders".into(),
            kind: "table".into(),
            estimated_rows: None,
            primary_key: vec!["id".into()],
            columns: memory_schema()
                .fields()
                .iter()
                .map(|f| ColumnInfo {
                    name: f.name().clone(),
                    declared: f.data_type().to_string(),
                    arrow: f.data_type().to_string(),
                })
                .collect(),
        }])
    }
}

struct MemoryTable {
    rows: Vec<Row>,
}

fn memory_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
    ]))
}

fn memory_batch(rows: &[Row]) -> RecordBatch {
    let base = 1_772_323_200_000_000i64; // 2026-03-01T00:00:00 in microseconds
    RecordBatch::try_new(
        memory_schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.id))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| format!("n{}", r.id)),
            )),
            Arc::new(TimestampMicrosecondArray::from_iter_values(
                rows.iter().map(|r| base + r.at * 1_000_000),
            )),
        ],
    )
    .unwrap()
}

#[async_trait::async_trait]
impl Source for MemoryTable {
    fn describe(&self) -> String {
        "memory table".into()
    }

    async fn read(
        self: Arc<Self>,
        mut output: SourceOutput,
        _access: SourceAccess,
    ) -> Result<ReadStats> {
        output.announce_schema(memory_schema());
        let mut stats = ReadStats::default();
        for rows in self.rows.chunks(output.batch_rows().max(1)) {
            stats.rows_read += rows.len() as u64;
            if !output.send_async(memory_batch(rows)).await {
                break;
            }
        }
        Ok(stats)
    }
}
