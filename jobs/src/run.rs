//! One extraction run, end to end: source -> schema plan -> checks -> delta cursor -> encrypted
//! parts -> validation report -> manifest commit. Nothing is visible, and the watermark does not
//! move, until the manifest commits; a failed run removes its parts and still leaves its report.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use carga_config::{DatasetSpec, Mode, Settings};
use chrono::Utc;
use tracing::Instrument;

use crate::access::AccessPolicy;
use crate::chunks::ChunkFaults;
use crate::chunks::order::{ChunkDispatch, ChunkOrder, ChunkReport};
use crate::delta::{DeltaFilter, Watermark, effective_lookback};
use crate::destination::{Destination, RawZone, RunTarget};
use crate::encryption::Encryptor;
use crate::error::{JobError, Result};
use crate::manifest::{EncryptionInfo, FORMAT_VERSION, Manifest, ManifestSource, WatermarkRange};
use crate::pipeline::{Extracted, Streamed, new_cursor, stream};
use crate::redact::Redactor;
use crate::schema_drift::SchemaPlan;
use crate::secrets::{ConnectionSecret, LocalSecretsFile, SecretsProvider};
use crate::sink::PartFile;
use crate::sources::{self, Source, SourceAccess, SourceRegistry, TypeHints};
use crate::storage::Bucket;
use crate::typing::parse_type_name;
use crate::upload::UploadArea;
use crate::validation::{BatchChecks, ReadProgress, ValidationReport};

/// Columns a run may widen and read again for (a file with more surprises is better declared).
const MAX_WIDENED_COLUMNS: usize = 8;

/// What a run starts from (`Engine::start`).
pub(crate) struct RunStart {
    pub source: Arc<dyn Source>,
    pub previous: Option<Manifest>,
    pub hints: TypeHints,
    pub floor: Option<Watermark>,
    pub delivered: Vec<RecordBatch>,
    pub access: SourceAccess,
}

/// What a committed run produced.
#[derive(Debug)]
pub struct RunOutcome {
    pub manifest: Manifest,
    pub report: ValidationReport,
    /// Printable addresses (file path or `s3://` URL).
    pub manifest_url: String,
    pub report_url: String,
    pub data_url: String,
}

/// A run that did not commit: the error, and where its validation report went (if it could be written).
#[derive(Debug, thiserror::Error)]
#[error("{error}{}", report_url.as_ref().map(|u| format!(" (validation report: {u})")).unwrap_or_default())]
pub struct RunFailure {
    pub error: JobError,
    pub report_url: Option<String>,
}

/// Runs datasets against one bucket with one master key.
pub struct Engine {
    settings: Settings,
    bucket: Bucket,
    encryptor: Encryptor,
    secrets: Arc<dyn SecretsProvider>,
    policy: AccessPolicy,
    destination: Arc<dyn Destination>,
    sources: SourceRegistry,
    chunk_faults: ChunkFaults,
}

impl Engine {
    pub fn new(settings: Settings) -> Result<Self> {
        let bucket = Bucket::open(&settings)?;
        let encryptor = Encryptor::from_settings(&settings)?;
        let secrets: Arc<dyn SecretsProvider> =
            Arc::new(LocalSecretsFile::new(settings.secrets_file.clone()));
        // Only what the settings open: an embedding program widens it with `with_access`.
        let mut policy = AccessPolicy::from_settings(&settings, &[], false, &[]);
        policy.uploads = Some(UploadArea::new(bucket.clone(), encryptor.clone()));
        let destination: Arc<dyn Destination> = Arc::new(RawZone::new(
            bucket.clone(),
            encryptor.clone(),
            settings.clone(),
        ));
        Ok(Self {
            settings,
            bucket,
            encryptor,
            secrets,
            policy,
            destination,
            sources: SourceRegistry::default(),
            chunk_faults: ChunkFaults::default(),
        })
    }

    /// Makes chunk `index` of partitioned reads fail `attempts` times after its first batch.
    pub fn inject_chunk_faults(self, index: usize, attempts: u32) -> Self {
        self.chunk_faults
            .lock()
            .expect("fault table")
            .insert(index, attempts);
        self
    }

    /// An engine whose credentials come from the provider the settings name (AWS needs async setup).
    pub async fn from_settings(settings: Settings) -> Result<Self> {
        let secrets = crate::secrets::provider(&settings).await;
        Ok(Self::new(settings)?.with_secrets(secrets))
    }

    /// Replaces where connection credentials come from.
    pub fn with_secrets(mut self, secrets: Arc<dyn SecretsProvider>) -> Self {
        self.secrets = secrets;
        self
    }

    /// Replaces what this engine's specs may reach (data roots, networks); uploads are always
    /// this engine's own.
    pub fn with_access(mut self, mut policy: AccessPolicy) -> Self {
        policy.uploads = self.policy.uploads.take();
        self.policy = policy;
        self
    }

    /// The files uploaded to this engine's bucket.
    pub fn uploads(&self) -> &UploadArea {
        self.policy
            .uploads
            .as_ref()
            .expect("an engine always has its upload area")
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn policy(&self) -> &AccessPolicy {
        &self.policy
    }

    /// Where runs write and commit (the raw zone unless replaced).
    pub fn destination(&self) -> &Arc<dyn Destination> {
        &self.destination
    }

    /// Replaces where runs write and commit.
    pub fn with_destination(mut self, destination: Arc<dyn Destination>) -> Self {
        self.destination = destination;
        self
    }

    /// Replaces the sources this engine reads (the built-in ones plus what the registry adds).
    pub fn with_sources(mut self, sources: SourceRegistry) -> Self {
        self.sources = sources;
        self
    }

    pub fn sources(&self) -> &SourceRegistry {
        &self.sources
    }

    pub fn secrets(&self) -> &Arc<dyn SecretsProvider> {
        &self.secrets
    }

    pub fn bucket(&self) -> &Bucket {
        &self.bucket
    }

    pub fn encryptor(&self) -> &Encryptor {
        &self.encryptor
    }

    /// A query session over every committed dataset of the bucket (see `query::raw_zone`), with
    /// this engine's key for the encrypted parts.
    pub async fn query_session(
        &self,
    ) -> Result<(
        datafusion::prelude::SessionContext,
        Vec<crate::query::raw_zone::QueryableDataset>,
    )> {
        let ctx = crate::query::session(Some(&self.encryptor), self.settings.query_memory_mib)?;
        let datasets = crate::query::raw_zone::register(&ctx, &self.bucket).await?;
        Ok((ctx, datasets))
    }

    /// Runs a read-only SQL query over the committed raw zone; its result as a stream. DDL, DML
    /// (`COPY`, `INSERT`, `CREATE`) and `SET` are refused.
    pub async fn sql(
        &self,
        sql: &str,
    ) -> Result<datafusion::physical_plan::SendableRecordBatchStream> {
        let (ctx, _) = self.query_session().await?;
        let options = datafusion::execution::context::SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let frame = ctx
            .sql_with_options(sql, options)
            .await
            .map_err(|e| crate::query::query_error("sql", e))?;
        frame
            .execute_stream()
            .await
            .map_err(|e| crate::query::query_error("sql", e))
    }

    /// Reads the first rows of the dataset's source without writing anything ("test connection").
    pub async fn preview(
        &self,
        spec: &DatasetSpec,
        rows: usize,
    ) -> Result<crate::preview::Preview> {
        crate::preview::preview_with(
            &self.sources,
            spec,
            &self.policy,
            self.secrets.as_ref(),
            rows,
        )
        .await
    }

    /// The outcome of run `run_id` of this dataset if it already committed: a job handed back
    /// after its commit (a worker killed before it recorded the end, a backend fault) is then
    /// done, not run again.
    pub async fn committed(&self, spec: &DatasetSpec, run_id: &str) -> Result<Option<RunOutcome>> {
        let Some(committed) = self.destination.committed(&spec.id, run_id).await? else {
            return Ok(None);
        };
        let target = RunTarget {
            dataset: spec.id.clone(),
            run_id: run_id.to_owned(),
            ingest_date: committed.manifest.ingest_date.clone(),
        };
        Ok(Some(RunOutcome {
            manifest_url: committed.manifest_url,
            report_url: committed.report_url,
            data_url: self.destination.data_url(&target),
            report: committed.report,
            manifest: committed.manifest,
        }))
    }

    pub async fn run(&self, spec: &DatasetSpec) -> std::result::Result<RunOutcome, RunFailure> {
        self.run_as(spec, &uuid::Uuid::now_v7().to_string()).await
    }

    /// Runs with a given run id: the queue's job id, so the run can be followed from the API to
    /// the bucket. A retried attempt reuses it.
    pub async fn run_as(
        &self,
        spec: &DatasetSpec,
        run_id: &str,
    ) -> std::result::Result<RunOutcome, RunFailure> {
        self.run_observed(spec, run_id, None, Arc::new(ReadProgress::default()))
            .await
    }

    /// Runs with a given run id and hands `report` how far the read has got, with the time
    /// since the start, every `every` until the run ends (the worker writes it to the catalog
    /// for the dashboard; `carga run` draws it). A slow `report` delays the next one, never the
    /// run. With `dispatch`, a partitioned dataset that asks for it (`partitions.across_workers`)
    /// has its chunks read by the queue's workers while this run coordinates them.
    pub async fn run_watched<F, Fut>(
        &self,
        spec: &DatasetSpec,
        run_id: &str,
        dispatch: Option<Arc<dyn ChunkDispatch>>,
        every: std::time::Duration,
        mut report: F,
    ) -> std::result::Result<RunOutcome, RunFailure>
    where
        F: FnMut(crate::validation::ProgressSnapshot, std::time::Duration) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let progress = Arc::new(ReadProgress::default());
        let started = std::time::Instant::now();
        let run = self.run_observed(spec, run_id, dispatch, progress.clone());
        tokio::pin!(run);
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                outcome = &mut run => return outcome,
                _ = ticks.tick() => report(progress.snapshot(), started.elapsed()).await,
            }
        }
    }

    /// Runs with a given run id and says how far the read has got in `progress` as it goes.
    pub async fn run_observed(
        &self,
        spec: &DatasetSpec,
        run_id: &str,
        dispatch: Option<Arc<dyn ChunkDispatch>>,
        progress: Arc<ReadProgress>,
    ) -> std::result::Result<RunOutcome, RunFailure> {
        let run_id = run_id.to_owned();
        let span = tracing::info_span!("run", dataset = %spec.id, run_id = %run_id);
        async {
            tracing::info!(source = %spec.source.describe(), mode = ?spec.mode, "run started");
            let started_at = Utc::now();
            let target = RunTarget {
                dataset: spec.id.clone(),
                run_id: run_id.clone(),
                ingest_date: started_at.date_naive().to_string(),
            };
            let secret = match &spec.connection_id {
                Some(id) if spec.source.needs_connection() => {
                    self.secrets.connection(id).await.map(Some)
                }
                _ => Ok(None),
            };
            // Whatever a source echoed, no form of the secret is stored, logged or returned.
            let redactor = match &secret {
                Ok(Some(secret)) => secret.redactor(),
                _ => Redactor::none(),
            };
            let executed = match secret {
                Ok(secret) => {
                    self.execute(
                        spec,
                        &target,
                        started_at,
                        secret,
                        dispatch,
                        progress.clone(),
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            match executed.map_err(|e| e.redacted(&redactor)) {
                Ok(outcome) => {
                    tracing::info!(
                        rows = outcome.manifest.rows,
                        bytes = outcome.manifest.bytes,
                        sequence = outcome.manifest.sequence,
                        "run committed"
                    );
                    Ok(outcome)
                }
                Err(error) => {
                    // Said once by whoever ran it (the command's error line, the worker's "job
                    // failed"); here only for the run's own trace.
                    tracing::info!(%error, "run failed; nothing committed");
                    let report = ValidationReport::failed_early(
                        &spec.id,
                        &run_id,
                        &spec.source.describe(),
                        error.to_string(),
                        &progress,
                    );
                    let report_url = self
                        .destination
                        .write_report(&target, &report)
                        .await
                        .ok()
                        .map(|written| written.url);
                    Err(RunFailure { error, report_url })
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Reads the whole source through the schema plan and the checks, as a complete run
    /// would, and writes nothing: the report of an upload's initial validation. Input the
    /// checks refuse gives a failed report; `Err` is for what is not the input's fault (the
    /// store, the key).
    pub async fn validate(&self, spec: &DatasetSpec, run_id: &str) -> Result<ValidationReport> {
        let progress = Arc::new(ReadProgress::default());
        let checked = async {
            spec.validate()?;
            let source = self.sources.build(spec, &self.policy)?;
            let hints = TypeHints {
                explicit: explicit_types(spec)?,
                ..TypeHints::default()
            };
            let access = SourceAccess {
                secret: None,
                floor: None,
                lookback: None,
                chunk: None,
                progress: progress.clone(),
                pushed_filter: None,
                schema_only: false,
            };
            self.extract_single(spec, &source, hints, access, None, None, &[])
                .await
        }
        .await;
        match checked {
            Ok(extracted) => {
                let mut report = extracted.checks.into_report(
                    &spec.id,
                    run_id,
                    &spec.source.describe(),
                    extracted.stats,
                    0,
                );
                report.schema_changes = extracted.plan.changes.clone();
                Ok(report)
            }
            Err(e) if e.is_validation() => Ok(ValidationReport::failed_early(
                &spec.id,
                run_id,
                &spec.source.describe(),
                e.to_string(),
                &progress,
            )),
            Err(e) => Err(e),
        }
    }

    async fn execute(
        &self,
        spec: &DatasetSpec,
        target: &RunTarget,
        started_at: chrono::DateTime<Utc>,
        secret: Option<ConnectionSecret>,
        dispatch: Option<Arc<dyn ChunkDispatch>>,
        progress: Arc<ReadProgress>,
    ) -> Result<RunOutcome> {
        let run_id = target.run_id.as_str();
        let RunStart {
            source,
            previous,
            hints,
            floor,
            delivered,
            access,
        } = self.start(spec, secret, progress).await?;
        let floor = floor.as_ref();
        let previous_schema = previous.as_ref().map(|m| &m.schema);
        let Extracted {
            plan,
            checks,
            cursor,
            rows: rows_written,
            stats,
            files,
        } = {
            match source.partitions(&access).await? {
                Some(partitions) if partitions.across_workers && dispatch.is_some() => {
                    crate::chunks::spread::extract(
                        crate::chunks::spread::SpreadRun {
                            settings: &self.settings,
                            destination: &self.destination,
                            dispatch: dispatch.expect("checked"),
                        },
                        spec,
                        &source,
                        partitions,
                        hints,
                        access,
                        previous.as_ref(),
                        target,
                        &delivered,
                    )
                    .await?
                }
                Some(partitions) => {
                    crate::chunks::extract(
                        crate::chunks::ChunkRun {
                            settings: &self.settings,
                            destination: &self.destination,
                            faults: &self.chunk_faults,
                        },
                        spec,
                        &source,
                        partitions,
                        hints,
                        access,
                        previous_schema,
                        target,
                        &delivered,
                    )
                    .await?
                }
                None => {
                    self.extract_single(
                        spec,
                        &source,
                        hints,
                        access,
                        previous_schema,
                        Some(target),
                        &delivered,
                    )
                    .await?
                }
            }
        };

        let mut report = checks.into_report(
            &spec.id,
            run_id,
            &spec.source.describe(),
            stats,
            rows_written,
        );
        report.schema_changes = plan.changes.clone();
        if cursor.as_ref().is_some_and(DeltaFilter::window_narrowed) {
            report.warnings.push(
                "the lookback window held more tuples than its memory budget: the oldest were let go and the next run re-reads a narrower window (see the watermark's lookback_seconds)".into(),
            );
        }
        let report_written = match self.destination.write_report(target, &report).await {
            Ok(written) => written,
            Err(e) => {
                self.destination.discard(&files).await;
                return Err(e);
            }
        };
        let mut highest = match &cursor {
            Some(cursor) => cursor.highest(floor)?,
            None => None,
        };
        // The window's delivered tuples go beside the manifest (encrypted), not inside it.
        let mut side_files = Vec::new();
        if let (Some(cursor), Some(watermark)) = (&cursor, highest.as_mut()) {
            match self.write_window(cursor, target).await {
                Ok(written) => {
                    side_files.clone_from(&written);
                    watermark.recent_files = written;
                }
                Err(e) => {
                    self.destination.discard(&files).await;
                    return Err(e);
                }
            }
        }
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            dataset: spec.id.clone(),
            // The state this run started from decides its number; if another run took it
            // meanwhile, the conditional put in `commit` refuses this one.
            sequence: previous.as_ref().map_or(1, |m| m.sequence + 1),
            run_id: run_id.to_owned(),
            mode: spec.mode,
            started_at,
            committed_at: Utc::now(),
            ingest_date: target.ingest_date.clone(),
            source: ManifestSource {
                format: spec.source.format_name().to_owned(),
                location: spec.source.describe(),
            },
            rows: rows_written,
            bytes: files.iter().map(|f| f.bytes).sum(),
            files,
            schema: plan.output.as_ref().clone(),
            watermark: cursor.as_ref().map(|_| WatermarkRange {
                // Where the run started; its window is the previous manifest's business.
                from: floor.map(Watermark::position),
                to: highest,
            }),
            validation_report: report_written.path.clone(),
            validation_report_sha256: Some(report_written.sha256.clone()),
            encryption: EncryptionInfo {
                algorithm: "AES_GCM_V1".into(),
                master_key_id: self.encryptor.master_key_id(),
                key_material: "PKMT1 in each file's footer key metadata".into(),
            },
            // The destination seals the watermark's values when it commits.
            sealed: None,
        };
        let committed = match self.destination.commit(&manifest).await {
            Ok(committed) => committed,
            Err(e) => {
                self.destination.discard(&manifest.files).await;
                self.destination.discard(&side_files).await;
                return Err(e);
            }
        };
        Ok(RunOutcome {
            manifest_url: committed.url,
            data_url: self.destination.data_url(target),
            report_url: report_written.url,
            report,
            manifest,
        })
    }

    /// What a run starts from, the same for the coordinator and for each chunk read on another
    /// worker: the spec checked, the source built, the last commit (the schema and watermark
    /// it pins), the lookback window's delivered tuples, and how the source is read (with the
    /// transform's filters the source can evaluate).
    async fn start(
        &self,
        spec: &DatasetSpec,
        secret: Option<ConnectionSecret>,
        progress: Arc<ReadProgress>,
    ) -> Result<RunStart> {
        spec.validate()?;
        if !spec.source.tables().is_empty() {
            return Err(JobError::Refused {
                dataset: spec.id.clone(),
                message: "the spec lists several tables: run each of `DatasetSpec::per_table()`"
                    .into(),
            });
        }
        let source = self.sources.build(spec, &self.policy)?;
        let previous = self.destination.latest(&spec.id).await?;
        let hints = TypeHints {
            explicit: explicit_types(spec)?,
            previous: previous.as_ref().map(|m| Arc::new(m.schema.clone())),
            ..TypeHints::default()
        };
        let floor = match spec.mode {
            Mode::Delta => previous
                .as_ref()
                .and_then(Manifest::next_watermark)
                .cloned(),
            Mode::Complete => None,
        };
        let delivered = self.delivered_window(floor.as_ref(), spec).await?;
        let access = SourceAccess {
            secret,
            floor: floor.clone(),
            lookback: effective_lookback(floor.as_ref(), spec.lookback_seconds()),
            chunk: None,
            progress,
            pushed_filter: None,
            schema_only: false,
        };
        let access = self.with_pushdown(spec, &source, &hints, access).await?;
        Ok(RunStart {
            source,
            previous,
            hints,
            floor,
            delivered,
            access,
        })
    }

    /// Reads one chunk of a run another worker coordinates (`ChunkOrder`, from a chunk job),
    /// writes its parts into the run's folder and reports what it wrote in the run's notes.
    /// `take` tells this take of the job from earlier ones (their files are left to the
    /// coordinator's sweep).
    pub async fn run_chunk(
        &self,
        spec: &DatasetSpec,
        order: &ChunkOrder,
        take: usize,
        worker: &str,
    ) -> Result<ChunkReport> {
        let secret = match &spec.connection_id {
            Some(id) if spec.source.needs_connection() => Some(self.secrets.connection(id).await?),
            _ => None,
        };
        let redactor = secret
            .as_ref()
            .map_or_else(Redactor::none, ConnectionSecret::redactor);
        let span = tracing::info_span!("chunk", dataset = %spec.id, run_id = %order.run_id, chunk = order.chunk.index);
        async {
            let start = self
                .start(spec, secret, Arc::new(ReadProgress::default()))
                .await?;
            crate::chunks::spread::read_chunk(
                crate::chunks::spread::ChunkReader {
                    settings: &self.settings,
                    destination: &self.destination,
                    worker,
                    take,
                },
                spec,
                order,
                start,
            )
            .await
        }
        .instrument(span)
        .await
        .map_err(|e| e.redacted(&redactor))
    }

    /// Records that a chunk gave up, for its coordinator (best effort: a coordinator that finds
    /// no note notices the job left the queue).
    pub async fn chunk_gave_up(&self, order: &ChunkOrder, error: &JobError) {
        crate::chunks::spread::report_gave_up(self.destination.as_ref(), order, error).await;
    }

    /// One reader, one sink: the whole source streamed in one pass.
    #[allow(clippy::too_many_arguments)]
    async fn extract_single(
        &self,
        spec: &DatasetSpec,
        source: &Arc<dyn Source>,
        hints: TypeHints,
        access: SourceAccess,
        previous_schema: Option<&arrow::datatypes::Schema>,
        // `None` reads and checks every row but writes nothing (`validate`).
        target: Option<&RunTarget>,
        delivered: &[RecordBatch],
    ) -> Result<Extracted> {
        let floor = access.floor.clone();
        let mut hints = hints;
        let mut warnings = Vec::new();
        // A column inferred too narrowly from the sample (an int column with text at row
        // 30,000) makes the file be read again with the column widened: a valid file is never
        // unreadable because of where its first odd value sits.
        loop {
            let reader = sources::open_transformed(
                source,
                spec,
                sources::ReadShape::of(&self.settings),
                hints.clone(),
                access.clone(),
                self.settings.query_memory_mib,
            )
            .await?;
            let plan = Arc::new(SchemaPlan::new(
                &spec.id,
                &reader.schema,
                previous_schema,
                spec.new_columns,
                spec.missing_columns,
            )?);
            let checks =
                BatchChecks::new(&plan.output, &spec.key, spec.timestamp_column.as_deref())?;
            let cursor = new_cursor(spec, &plan, floor.as_ref(), delivered)?;
            let sink = match target {
                Some(target) => {
                    self.destination
                        .parts(target, plan.output.clone(), "part-", false)?
                }
                None => Box::new(crate::destination::Discard),
            };
            // Until the parts are complete, any failure removes what this run uploaded.
            let streamed = match stream(reader, &plan, checks, cursor, sink, None).await {
                Ok(streamed) => streamed,
                Err(JobError::Reread {
                    column,
                    data_type,
                    message,
                }) if hints.widened.len() < MAX_WIDENED_COLUMNS => {
                    warnings.push(format!(
                        "{message}: the file was read again with '{column}' as {}",
                        crate::typing::describe(&data_type)
                    ));
                    tracing::info!(%column, "a column inferred too narrowly; reading the file again");
                    hints.widened.insert(column, data_type);
                    access.progress.restart();
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Streamed {
                rows,
                mut stats,
                checks,
                cursor,
                files,
            } = streamed;
            stats.warnings.extend(warnings);
            return Extracted {
                plan,
                checks,
                cursor,
                rows,
                stats,
                files,
            }
            .checked(spec, self.destination.as_ref(), floor.is_some())
            .await;
        }
    }

    /// `access` with the filters of the spec's transform that its source can evaluate
    /// (`Capabilities::filter_dialect`, `query::transform`): the source is described first
    /// (schema only), then the transform is planned against it.
    pub(crate) async fn with_pushdown(
        &self,
        spec: &DatasetSpec,
        source: &Arc<dyn Source>,
        hints: &TypeHints,
        access: SourceAccess,
    ) -> Result<SourceAccess> {
        use crate::query::transform::{pushable_filter, refused};
        let Some(dialect) = source.capabilities().filter_dialect else {
            return Ok(access);
        };
        let Some(sql) = &spec.transform else {
            return Ok(access);
        };
        let probe = SourceAccess {
            schema_only: true,
            chunk: None,
            ..access.clone()
        };
        let described = sources::open(
            source,
            spec,
            sources::ReadShape::first_rows(1),
            hints.clone(),
            probe,
        )
        .await?;
        let schema = described.schema.clone();
        described.finish().await?;
        let pushed_filter = pushable_filter(sql, schema, dialect, self.settings.query_memory_mib)
            .await
            .map_err(|e| refused(&spec.id, e))?;
        if let Some(filter) = &pushed_filter {
            tracing::info!(%filter, "transform filters evaluated by the source");
        }
        Ok(SourceAccess {
            pushed_filter,
            ..access
        })
    }

    /// The tuples the previous run delivered inside its lookback window, read back from its side
    /// files (bounded by the window's memory budget when they were written).
    async fn delivered_window(
        &self,
        floor: Option<&crate::delta::Watermark>,
        spec: &DatasetSpec,
    ) -> Result<Vec<RecordBatch>> {
        let Some(floor) = floor.filter(|_| spec.lookback_seconds().is_some()) else {
            return Ok(Vec::new());
        };
        self.destination.read_files(&floor.recent_files).await
    }

    /// Writes the run's lookback window (`DeltaFilter::recent_tuples`) beside its commit
    /// (the raw zone: `_manifests/<run-id>.lookback-00000.parquet`, encrypted).
    async fn write_window(
        &self,
        cursor: &DeltaFilter,
        target: &RunTarget,
    ) -> Result<Vec<PartFile>> {
        let tuples = match cursor.recent_tuples()? {
            Some(tuples) if tuples.num_rows() > 0 => tuples,
            _ => return Ok(Vec::new()),
        };
        let mut writer = self
            .destination
            .side_file(target, tuples.schema(), "lookback")?;
        if let Err(e) = writer.write(&tuples).await {
            writer.abort().await;
            return Err(e);
        }
        writer.finish().await
    }
}

fn explicit_types(spec: &DatasetSpec) -> Result<BTreeMap<String, arrow::datatypes::DataType>> {
    spec.schema
        .iter()
        .map(|(column, name)| {
            parse_type_name(name).map(|t| (column.clone(), t)).ok_or_else(|| JobError::Refused {
                dataset: spec.id.clone(),
                message: format!(
                    "schema: column '{column}' has unknown type '{name}' (use string, int64, int32, float64, bool, date, timestamp, timestamptz or decimal(p,s))"
                ),
            })
        })
        .collect()
}
